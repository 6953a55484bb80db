"""Traffic counters: what the monitor, ``/metrics`` and ``ctl`` show of requests that ended.

One ``Traffic`` per server and per listener, bumped once per finished request by the exchange:
responses by status class, bytes each way, cache hits and misses reported by the server, and
(servers only) a histogram of request durations. Plain ints in a slotted object, no locks, no
I/O; with workers every process keeps its own and ``merge`` adds them up (runtime/workers.py).
``count`` bumps both for one request in a single call (two method calls, one per Traffic, cost
twice the instructions of the work itself).

Durations go into fixed buckets so that processes and samples can be added and subtracted:
``quantile`` interpolates inside a bucket, which is what Prometheus's ``histogram_quantile``
does. The bounds grow by about 1.5x from 0.5 ms to 60 s: fine enough for p50/p99 of a fast
site (HAProxy's own percentiles are bucketed the same way), coarse enough that finding the
bucket takes a few comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

#: Upper bounds (seconds) of the duration buckets; one more bucket holds everything above.
BOUNDS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0015, 0.0025, 0.004, 0.006, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.15,
    0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 4.0, 6.0, 10.0, 15.0, 25.0, 40.0, 60.0,
)

_TOP: Final = len(BOUNDS)

#: Cache verdicts a response carries (http/framing.py reads them from X-Cache or Age).
CACHE_UNKNOWN: Final = 0
CACHE_HIT: Final = 1
CACHE_MISS: Final = 2


class Traffic:
    """Counters of finished requests (and, for listeners, connections)."""

    __slots__ = ("classes", "bytes_in", "bytes_out", "hits", "misses", "buckets", "seconds", "connections")

    def __init__(self) -> None:
        #: Responses by status class: [1xx..5xx] at indices 1-5, index 0 for "none" (the
        #: client left before any answer).
        self.classes = [0, 0, 0, 0, 0, 0]
        self.bytes_in = 0  # request bodies read from clients
        self.bytes_out = 0  # response bodies sent to clients
        self.hits = 0
        self.misses = 0
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.seconds = 0.0  # sum of durations (Prometheus's _sum)
        self.connections = 0  # client connections accepted (listeners only)

    @property
    def requests(self) -> int:
        return sum(self.classes)

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "classes": list(self.classes), "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "hits": self.hits, "misses": self.misses,
                "buckets": list(self.buckets), "seconds": round(self.seconds, 6),
                "connections": self.connections}

    def __repr__(self) -> str:
        return f"<Traffic requests={self.requests} classes={self.classes} hits={self.hits}/{self.misses}>"


def count(t: Traffic, listener: Traffic, status: int, bytes_in: int, bytes_out: int, seconds: float,
          cache: int) -> None:
    """One finished request: everything for its server's (or pool's) ``t``, the status class
    and bytes for its ``listener`` (which keeps no histogram)."""
    cls = status // 100 if 100 <= status < 600 else 0
    t.classes[cls] += 1
    t.bytes_in += bytes_in
    t.bytes_out += bytes_out
    i = 0  # bisect_left(BOUNDS, seconds), from the bottom: most requests stop in a few steps
    while i < _TOP and BOUNDS[i] < seconds:
        i += 1
    t.buckets[i] += 1
    t.seconds += seconds
    if cache:
        if cache == CACHE_HIT:
            t.hits += 1
        else:
            t.misses += 1
    listener.classes[cls] += 1
    listener.bytes_in += bytes_in
    listener.bytes_out += bytes_out


def quantile(q: float, buckets: Sequence[int]) -> float | None:
    """The ``q`` quantile (0..1) of a duration histogram, in seconds, interpolated linearly
    inside its bucket (as Prometheus's histogram_quantile); None without observations. The open
    top bucket answers its lower bound."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i == len(BOUNDS):
                return BOUNDS[-1]
            lo = BOUNDS[i - 1] if i else 0.0
            return lo + (BOUNDS[i] - lo) * max(0.0, rank - seen) / n
        seen += n
    return BOUNDS[-1]


# ---- adding up processes ----------------------------------------------------------------------

#: Numbers that describe a thing rather than count it: with workers each process reports the
#: same value, so ``merge`` keeps the first instead of adding them up.
SAME: Final = frozenset(("weight", "effective_weight", "agent_pct", "slow_start", "maxconn", "ms",
                  "checked_ago_s", "rise", "fall", "port", "since", "uptime_s",
                  "capacity", "workers", "loaded_at"))


def merge(values: Sequence[Any]) -> Any:
    """Several processes' snapshots of the same shape as one: numbers add up (except those named
    in SAME, and the latency average, which is averaged), lists of numbers add up element by
    element, mappings merge key by key (a key only some have is kept), anything else is the
    first process's."""
    first = values[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, (int, float)):
        return sum(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if isinstance(first, list):
        if all(isinstance(x, (int, float)) for x in first) and all(
                isinstance(v, list) and len(v) == len(first) for v in values):
            return [sum(col) for col in zip(*values)]
        return first
    if isinstance(first, Mapping):
        out: dict[str, Any] = {}
        keys = list(first)
        for v in values[1:]:
            if isinstance(v, Mapping):
                keys.extend(k for k in v if k not in out and k not in first)
        for k in dict.fromkeys(keys):
            have = [v[k] for v in values if isinstance(v, Mapping) and k in v]
            if k in SAME:
                out[k] = have[0]
            elif k == "latency_ms":
                out[k] = round(sum(have) / len(have), 3)
            else:
                out[k] = merge(have)
        return out
    return first
