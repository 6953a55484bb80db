"""The registry of schedulers, keyed by ipvsadm's names (and LARD's, chash's, maglev's).

The interface, the typed options and the shared helpers are in base.py. Adding an algorithm: one
module in this package with a ``Scheduler`` subclass decorated by ``@register``; every module
here except base.py is imported below, so registering is all it takes.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..backends import Server
from .base import KEY_OPTIONS, Option, Scheduler, key_hash, least_loaded

__all__ = ["SCHEDULERS", "Scheduler", "Option", "KEY_OPTIONS", "register", "create", "key_hash",
           "least_loaded"]

SCHEDULERS: dict[str, type[Scheduler]] = {}


def register(cls: type[Scheduler]) -> type[Scheduler]:
    if not cls.name or cls.name in SCHEDULERS:
        raise ValueError(f"scheduler name missing or taken: {cls.name!r}")
    SCHEDULERS[cls.name] = cls
    return cls


def create(name: str, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
           clock: Callable[[], float] = time.monotonic) -> Scheduler:
    """A scheduler by name; ValueError for an unknown name or bad options."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(sorted(SCHEDULERS))}") from None
    return cls(servers, options, clock)


def _load_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_all()
