"""l7switch: a content-based Layer-7 HTTP switch (KTCPVS ideas on uvloop + httptools).

The public surface is deliberately small: load a rule file into a frozen ``spec.Config``.
The sub-packages are the layers, lowest first: ``spec``/``errors``/``units`` (leaves), ``http``
(sans-IO messages and rules), ``balance`` and ``net`` (choosing servers; moving bytes),
``config`` (rule files), ``proxy`` and ``passthrough`` (connections), ``runtime`` (the process),
``cli`` and ``devtools``. Imports point down only; tests/pure/test_layers.py checks it.
"""

from __future__ import annotations

from .config import load_config, parse_config
from .errors import ConfigError
from .version import __version__

__all__ = ["__version__", "load_config", "parse_config", "ConfigError"]
