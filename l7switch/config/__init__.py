"""Reading rule files: YAML nodes in, a checked, frozen ``spec.Config`` out, or every problem at
its line. load.py walks the file; listen.py, matches.py and persist.py read their sections;
yamlnodes.py holds the node helpers."""

from __future__ import annotations

from .load import load_config, parse_config

__all__ = ["load_config", "parse_config"]
