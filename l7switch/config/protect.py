"""Reading the self-protection keys of ``limits``: the connection cap, per-client limits and the
minimum request-body rate, and how much of a body is read before a server is connected::

    limits:
      max_connections: 10000          # or auto (the default): derived from the fd limit at start
      min_body_rate: 500B/s           # 0 or off: no minimum
      buffer_body: 64KiB              # read before connecting; 0 or off: connect at the head
      per_client:
        connections: 100              # open connections per client address (prefix)
        requests_per_second: 50       # token bucket; over it: 429 with Retry-After
        burst: 100                    # bucket size (default: one second's worth)
        netmask: 32                   # key prefix for IPv4 / IPv6, as source persistence
        netmask6: 64
        max_entries: 100000           # the table is an LRU of this many clients
        trusted: [10.0.0.0/8]         # exempt networks; none by default, not even loopback

Like the other sections, every problem is recorded with its position and nothing raises.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from ..net.flow import HIGH_WATER
from ..spec import PerClientSpec
from ..units import parse_size
from .persist import netmask_reader
from .yamlnodes import OFF_WORDS, Issues, integer, is_null, is_off, mapping, read_fields, size, text, text_list

#: Sentinels a reader returns for a value that is fine but is not the field's final value
#: (None means "failed, already reported").
AUTO: Any = object()
OFF: Any = object()

_RATE = re.compile(r"\s*([0-9][0-9_]*)\s*([a-z]*)\s*(?:/\s*s)?\s*", re.IGNORECASE)
_PER_SECOND = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:/\s*s)?\s*")


def max_connections(node: Node, path: str, issues: Issues) -> Any:
    """An integer >= 1, or ``auto`` (AUTO): derived from the fd limit when the switch starts."""
    if is_null(node) or (isinstance(node, ScalarNode) and node.value.strip().lower() == "auto"):
        return AUTO
    return integer(node, path, issues, minimum=1)


def min_body_rate(node: Node, path: str, issues: Issues) -> int | None:
    """Bytes per second: ``500``, ``500B/s``, ``1KiB/s``; ``0`` or ``off``: no minimum."""
    value = text(node, path, issues, "a rate such as '500B/s'")
    if value is None:
        return None
    if value.strip().lower() in OFF_WORDS:
        return 0
    m = _RATE.fullmatch(value)
    try:
        if m is None:
            raise ValueError
        return parse_size(m.group(1) + m.group(2))
    except ValueError:
        issues.add(node, f"{path}: expected bytes per second such as '500B/s' or '1KiB/s' "
                   f"(0 or off: no minimum), found {value!r}")
        return None


def buffer_body(node: Node, path: str, issues: Issues) -> int | None:
    """A size up to 64 KiB (net/flow.HIGH_WATER: held bytes beyond it pause reading anyway);
    ``0`` or ``off``: requests connect at their head, as before."""
    if is_off(node):
        return 0
    value = size(node, path, issues, minimum=0)
    if value is not None and value > HIGH_WATER:
        issues.add(node, f"{path}: at most 64KiB (reading the client pauses there while no server "
                   f"is connected), found {node.value!r}")
        return None
    return value


def _rate(node: Node, path: str, issues: Issues) -> float | None:
    value = text(node, path, issues, "requests per second")
    if value is None:
        return None
    m = _PER_SECOND.fullmatch(value)
    if m is None or float(m.group(1)) <= 0:
        issues.add(node, f"{path}: expected requests per second greater than 0 such as 50 or "
                   f"'0.5/s', found {value!r}")
        return None
    return float(m.group(1))


def _networks(node: Node, path: str, issues: Issues) -> tuple[str, ...] | None:
    items = text_list(node, path, issues, "a network such as 10.0.0.0/8")
    if items is None:
        return None
    out: list[str] = []
    for value, item in items:
        try:
            out.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            issues.add(item, f"{path}: {value!r} is not a network; expected an address or a "
                       "prefix such as 10.0.0.0/8 or 2001:db8::/32")
            return None
    return tuple(out)


PER_CLIENT_READERS = {
    "connections": integer,
    "requests_per_second": _rate,
    "burst": lambda n, p, i: integer(n, p, i, minimum=1),
    "netmask": netmask_reader(32),
    "netmask6": netmask_reader(128),
    "max_entries": lambda n, p, i: integer(n, p, i, minimum=1),
    "trusted": _networks,
}


def per_client(node: Node, path: str, issues: Issues) -> Any:
    """A PerClientSpec, OFF (``per_client: off``), or None after reporting what is wrong."""
    if is_null(node) or is_off(node):
        return OFF
    if not isinstance(node, MappingNode):
        issues.add(node, f"{path}: expected a mapping such as {{connections: 100, "
                   "requests_per_second: 50}, or off")
        return None
    m = mapping(node, path, issues, PER_CLIENT_READERS)
    if m is None:
        return None
    values = read_fields(m, PER_CLIENT_READERS, path, issues)
    if values is None:
        return None
    spec = PerClientSpec(**values)
    if not spec.connections and not spec.requests_per_second:
        issues.add(node, f"{path}: sets no limit; give connections and/or requests_per_second "
                   "(or write per_client: off)")
        return None
    if "burst" in m and not spec.requests_per_second:
        issues.add(m["burst"][0], f"{path}.burst: a burst needs requests_per_second")
        return None
    return spec
