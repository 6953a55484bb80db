"""l7switch: a content-based Layer-7 HTTP switch (KTCPVS ideas on uvloop + httptools).

The public surface is deliberately small: load a rule file into a frozen ``Config``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import load_config, parse_config  # noqa: E402
from .errors import ConfigError  # noqa: E402

__all__ = ["__version__", "load_config", "parse_config", "ConfigError"]
