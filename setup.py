"""The optional compiled build: the modules every request runs through, compiled with mypyc.

``pip install .`` on a machine with a C compiler builds them as C extensions (the type-checked
Python is the source; no separate code); without one, or with ``L7SWITCH_PURE=1``, it installs
the same package as pure Python and says so in one line. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The request path: parse, route, pick, relay, count. mypyc compiles each into a native module;
#: the rest (config, checks, runtime, CLI) stays Python: it runs once, not per request.
HOT = [
    "l7switch/stats.py",
    "l7switch/http/message.py", "l7switch/http/fields.py", "l7switch/http/framing.py",
    "l7switch/http/rules.py", "l7switch/http/keys.py",
    "l7switch/net/flow.py", "l7switch/net/clock.py",
    "l7switch/balance/servers.py", "l7switch/balance/pool.py", "l7switch/balance/dispatch.py",
    "l7switch/balance/persistence.py", "l7switch/balance/queue.py", "l7switch/balance/store.py",
    "l7switch/guard/clients.py",
    "l7switch/balance/schedulers/base.py", "l7switch/balance/schedulers/_locality.py",
    "l7switch/balance/schedulers/rr.py", "l7switch/balance/schedulers/wrr.py",
    "l7switch/balance/schedulers/lc.py", "l7switch/balance/schedulers/wlc.py",
    "l7switch/balance/schedulers/lblc.py", "l7switch/balance/schedulers/lblcr.py",
    "l7switch/balance/schedulers/lard.py", "l7switch/balance/schedulers/sh.py",
    "l7switch/balance/schedulers/dh.py", "l7switch/balance/schedulers/chash.py",
    "l7switch/balance/schedulers/maglev.py",
    "l7switch/proxy/body.py", "l7switch/proxy/pace.py", "l7switch/proxy/upstream.py",
    "l7switch/proxy/exchange.py", "l7switch/proxy/frontend.py", "l7switch/proxy/state.py",
    "l7switch/proxy/ports.py",
    "l7switch/proxy/accesslog.py", "l7switch/net/logfile.py",
]


class OptionalBuildExt(build_ext):
    """A failed compile (no C compiler, no headers) leaves the pure-Python package, with one line."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # setuptools raises several kinds (CompileError, PlatformError...)
            # All or nothing: a compiled module without the shared library mypyc puts beside
            # it would fail at import, so whatever was built goes.
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            print(f"l7switch: not compiled ({exc.__class__.__name__}: {str(exc)[:160]}); "
                  "installing pure Python", file=sys.stderr)


def extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("L7SWITCH_PURE") == "1":
        print("l7switch: L7SWITCH_PURE=1: installing pure Python", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("l7switch: mypyc is not available: installing pure Python", file=sys.stderr)
        return []
    return mypycify(HOT, opt_level="3")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
