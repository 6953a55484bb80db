"""The release, in one place (a leaf: the CLI and the package root both read it), and which
build is running: the mypyc-compiled one (setup.py) or pure Python."""

import importlib.util

__version__ = "0.1.0"


def build() -> str:
    """"compiled" when the request path's modules are C extensions (``pip install .`` with a C
    compiler), else "pure Python" (no compiler, ``L7SWITCH_PURE=1``, or the working tree)."""
    spec = importlib.util.find_spec("l7switch.stats")
    origin = spec.origin if spec is not None else None
    return "pure Python" if origin is None or origin.endswith(".py") else "compiled (mypyc)"
