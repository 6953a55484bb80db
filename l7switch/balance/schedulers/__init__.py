"""The schedulers, one module per algorithm, registered by ipvsadm's names (and LARD's, chash's,
maglev's).

The interface, the typed options, the registry and the shared helpers are in base.py. Adding an
algorithm: one module in this package with a ``Scheduler`` subclass and ``register(ThatClass)``
after it (a call, not a decorator: mypyc compiles a decorated class as a plain Python one, which
may not derive from the compiled base); every module here except base.py is loaded below, so
registering is all it takes.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import KEY_OPTIONS, SCHEDULERS, Option, Scheduler, create, key_hash, least_loaded, register

__all__ = ["SCHEDULERS", "Scheduler", "Option", "KEY_OPTIONS", "register", "create", "key_hash",
           "least_loaded"]


def _load_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_all()
