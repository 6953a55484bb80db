"""Per-client limits (``limits.per_client``): open connections and a request rate per client
address prefix, in one bounded table.

The Linux Virtual Server's DoS defences and HAProxy's stick-table rules (``tcp-request connection
reject if { src_conn_cur ge N }``, ``http-request deny deny_status 429 if { src_http_req_rate ge R
}``) in a pure form: addresses and a clock go in, yes/no and "retry in s seconds" come out. The
proxy (proxy/frontend.py) and passthrough (passthrough/connection.py) act on the answers.

- **Keys** are the client address masked as source persistence masks it (``netmask`` for IPv4,
  ``netmask6`` for IPv6; balance/persistence.source_key), so one /64 of an IPv6 subscriber is one
  client. Addresses in ``trusted`` networks get no key: they are never limited. Nothing is
  trusted by default, not even loopback.
- **Connections**: ``connect`` counts a connection in, ``disconnect`` out; a client at its
  limit is refused (the proxy closes the new connection before reading a byte).
- **Rate**: a token bucket per client (``requests_per_second`` refill, ``burst`` size: HAProxy's
  and nginx's limit_req ``burst`` mean the same); ``request`` returns 0.0 to pass, else the
  seconds until a token is there, for the 429's Retry-After.
- **Bounded**: at most ``max_entries`` clients, least recently seen dropped first (an LRU), so
  a flood of spoofed or rotating addresses costs a fixed amount of memory. An entry with open
  connections is skipped a few times before it goes (its count would be lost, and with it the
  limit on that client); only a table smaller than the number of open clients drops one.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from socket import AF_INET, AF_INET6, inet_pton
from typing import Any, Final

from ..balance.persistence import source_key
from ..spec import PerClientSpec

#: How many entries with open connections an eviction passes over (moving them to the recent
#: end) before it drops one anyway. A small constant keeps an insertion O(1).
PIN_TRIES: Final = 8


class Entry:
    """One client (address prefix): open connections, its token bucket, and what it was refused."""

    __slots__ = ("conns", "tokens", "stamp", "requests", "refused", "limited")

    def __init__(self, tokens: float, now: float) -> None:
        self.conns = 0
        self.tokens = tokens  # a new client starts with a full bucket
        self.stamp = now  # when tokens was last brought up to date
        self.requests = 0  # requests seen (passed or limited)
        self.refused = 0  # connections refused at the limit
        self.limited = 0  # requests answered 429

    def tokens_at(self, now: float, rate: float, burst: float) -> float:
        return min(burst, self.tokens + (now - self.stamp) * rate)


class ClientTable:
    __slots__ = ("spec", "max_conns", "rate", "burst", "netmask", "netmask6", "max_entries", "clock",
                 "_d", "_trusted", "evicted", "refused", "limited")

    def __init__(self, spec: PerClientSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._d: OrderedDict[str, Entry] = OrderedDict()
        self.evicted = 0  # entries dropped because the table was full
        self.refused = 0  # connections refused, all clients
        self.limited = 0  # requests limited, all clients
        self.configure(spec)

    def configure(self, spec: PerClientSpec) -> None:
        """Take new limits (a reload); the counts and buckets of known clients stay."""
        self.spec = spec
        self.max_conns = spec.connections
        self.rate = spec.requests_per_second
        # burst 0: one second's worth, at least one request (nginx's limit_req without burst
        # allows none beyond the rate; a whole second is kinder to a page's parallel fetches).
        self.burst = float(spec.burst or max(1, math.ceil(spec.requests_per_second)))
        self.netmask = spec.netmask
        self.netmask6 = spec.netmask6
        self.max_entries = max(1, spec.max_entries)
        self._trusted = [_network(n) for n in spec.trusted]
        self._trim()

    # ---- the questions the proxy asks ---------------------------------------------------------------
    def key(self, ip: str) -> str | None:
        """The table key for a client address; None when it is exempt (trusted) or not an IP
        address (a Unix socket peer): such connections are not counted."""
        if self._trusted and _is_in(ip, self._trusted):
            return None
        return source_key(ip, self.netmask, self.netmask6)

    def connect(self, key: str) -> bool:
        """A new connection from ``key``: counted in and True, or False (over the limit: the
        caller closes it; it is not counted)."""
        e = self._entry(key)
        if self.max_conns and e.conns >= self.max_conns:
            e.refused += 1
            self.refused += 1
            return False
        e.conns += 1
        return True

    def disconnect(self, key: str) -> None:
        e = self._d.get(key)  # (an entry evicted meanwhile took its count with it)
        if e is not None and e.conns > 0:
            e.conns -= 1

    def request(self, key: str) -> float:
        """A request from ``key``: 0.0 to pass (a token is taken), else the seconds until the
        bucket holds a token again (the request is refused: 429 with Retry-After)."""
        e = self._entry(key)
        e.requests += 1
        rate = self.rate
        if not rate:
            return 0.0
        now = self.clock()
        tokens = e.tokens + (now - e.stamp) * rate
        if tokens > self.burst:
            tokens = self.burst
        e.stamp = now
        if tokens >= 1.0:
            e.tokens = tokens - 1.0
            return 0.0
        e.tokens = tokens
        e.limited += 1
        self.limited += 1
        return (1.0 - tokens) / rate

    # ---- the table ----------------------------------------------------------------------------------
    def _entry(self, key: str) -> Entry:
        d = self._d
        e = d.get(key)
        if e is not None:
            d.move_to_end(key)
            return e
        if len(d) >= self.max_entries:
            self._evict(len(d) - self.max_entries + 1)
        e = d[key] = Entry(self.burst, self.clock())
        return e

    def _evict(self, n: int) -> None:
        d = self._d
        passed = 0
        while n > 0 and d:
            key, e = d.popitem(last=False)
            if e.conns > 0 and passed < PIN_TRIES:
                d[key] = e  # in use: to the recent end, try the next one
                passed += 1
                continue
            self.evicted += 1
            n -= 1

    def _trim(self) -> None:
        if len(self._d) > self.max_entries:
            self._evict(len(self._d) - self.max_entries)

    def get(self, key: str) -> Entry | None:
        """The entry for ``key``, without refreshing it (for snapshots and explain)."""
        return self._d.get(key)

    def top(self, n: int = 10) -> list[tuple[str, Entry]]:
        """The ``n`` busiest clients: most open connections, then most refused, then most requests."""
        return heapq.nlargest(n, self._d.items(),
                              key=lambda kv: (kv[1].conns, kv[1].refused + kv[1].limited, kv[1].requests))

    def snapshot(self, n: int = 10) -> dict[str, Any]:
        now = self.clock()
        return {
            "clients": len(self._d), "max_entries": self.max_entries, "evicted": self.evicted,
            "refused_connections": self.refused, "limited_requests": self.limited,
            "top": [{"client": k, "connections": e.conns, "requests": e.requests, "refused": e.refused,
                     "limited": e.limited, "tokens": round(e.tokens_at(now, self.rate, self.burst), 2)
                     if self.rate else None}
                    for k, e in self.top(n)],
        }

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"<ClientTable {len(self._d)}/{self.max_entries} refused={self.refused} limited={self.limited}>"


def describe(table: ClientTable | None, spec: PerClientSpec | None, addr: str) -> list[str]:
    """What the per-client limits say about ``addr`` now, one fact a line (``explain --client``).
    ``table`` may be None (no live switch to ask): then only the key and the limits are told."""
    if spec is None:
        return ["per-client limits: off (limits.per_client)"]
    probe = table if table is not None and table.spec == spec else ClientTable(spec)
    limits = []
    if spec.connections:
        limits.append(f"{spec.connections} connections")
    if spec.requests_per_second:
        limits.append(f"{spec.requests_per_second:g} requests/s (burst {probe.burst:g})")
    key = probe.key(addr)
    if key is None:
        why = "in a trusted network" if source_key(addr) is not None else "not an IP address"
        return [f"per-client limits: {addr} is {why}: not limited"]
    lines = [f"per-client limits: {', '.join(limits)} per {key} (netmask {spec.netmask}/{spec.netmask6})"]
    if table is None:
        return lines
    e = table.get(key)
    if e is None:
        lines.append(f"{key}: not in the table (not seen, or evicted): not limited now")
        return lines
    state = [f"{e.conns} connections open", f"{e.requests} requests"]
    if e.refused or e.limited:
        state.append(f"{e.refused} connections refused, {e.limited} requests limited")
    lines.append(f"{key}: " + ", ".join(state))
    now = table.clock()
    if spec.connections and e.conns >= spec.connections:
        lines.append(f"{key}: at its connection limit: new connections are closed")
    if table.rate:
        tokens = e.tokens_at(now, table.rate, table.burst)
        if tokens < 1.0:
            lines.append(f"{key}: over its request rate: 429 for the next "
                         f"{(1.0 - tokens) / table.rate:.2f} s")
        else:
            lines.append(f"{key}: {int(tokens)} requests may pass at once now")
    return lines


# ---- trusted networks ------------------------------------------------------------------------------

_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def _network(text: str) -> tuple[int, int, int]:
    """(address bits, prefix as an int, mask) for "10.0.0.0/8" or "2001:db8::/32"."""
    addr, _, plen = text.partition("/")
    bits, value = _packed(addr)
    if bits == 0:
        raise ValueError(f"not a network: {text!r}")
    prefix = int(plen) if plen else bits
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    return bits, value & mask, mask


def _packed(ip: str) -> tuple[int, int]:
    """(32 or 128, the address as an int); an IPv4-mapped IPv6 address counts as IPv4 (as
    source_key does); (0, 0) for what is not an address."""
    try:
        if ":" in ip:
            packed = inet_pton(AF_INET6, ip.partition("%")[0])
            if packed[:12] != _V4_MAPPED:
                return 128, int.from_bytes(packed, "big")
            return 32, int.from_bytes(packed[12:], "big")
        return 32, int.from_bytes(inet_pton(AF_INET, ip), "big")
    except OSError:
        return 0, 0


def _is_in(ip: str, nets: list[tuple[int, int, int]]) -> bool:
    bits, value = _packed(ip)
    return any(b == bits and value & mask == net for b, net, mask in nets)
