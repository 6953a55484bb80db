"""Durations and sizes written as text ("5s", "250ms", "64KiB"), shared by the rule-file checker
and the scheduler options. Pure functions, no YAML: schedulers import them too."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER_RE = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"  # ASCII digits only: \d would take other scripts
_DURATION_PART = re.compile(rf"({_NUMBER_RE})(ms|s|m|h)")
_NUMBER = re.compile(_NUMBER_RE)


def parse_duration(value: str) -> float:
    """Seconds from "5s", "250ms", "2m", "1h", "1m30s" or a plain number of seconds."""
    s = value.strip().lower()
    if _NUMBER.fullmatch(s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"expected a duration such as '5s', '250ms', '2m', '1h' or seconds, found {value!r}")
    return total


# k and KiB alike are 1024, as in nginx and HAProxy sizes.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_SIZE = re.compile(r"([0-9]+)\s*([a-z]*)")


def parse_size(value: str) -> int:
    """Bytes from an integer or "64KiB", "1MiB", "1k", "10m"."""
    m = _SIZE.fullmatch(value.strip().lower().replace("_", ""))
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 65536, '64KiB', '1MiB' or '1k', found {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
