"""chash: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018;
HAProxy ``hash-type consistent`` + ``hash-balance-factor``, lb_chash.c).

The ring: every server with weight > 0 gets ``weight * points`` points (default 160 per unit of
weight, ketama's 40 x 4) at the 32-bit positions ``blake2b(f"{name}-{i}", digest_size=4)``. The
points depend on the server's *name* only, so adding or removing a server moves only the keys
that land on its own points; pool order, addresses and other servers do not matter.

A request key goes to the first point clockwise from ``key_hash(key)`` whose server is
available (up, weight > 0) and *eligible*. Skipping unavailable servers is the same as deleting
their points, so a server going down or coming back needs no rebuild; a weight change rebuilds the
ring (through ``defer``: the switch builds it in a worker thread, the old ring answers meanwhile).

The bound (HAProxy's chash_server_is_eligible, with load = requests in flight): let ``total`` be
the sum of ``inflight`` over the available servers and ``W`` the sum of their weights. Server
``s`` is eligible iff::

    s.inflight + 1 <= ceil((total + 1) * balance_factor * s.weight / W)

i.e. taking this request must not put it above ``balance_factor`` times its weighted share of the
load including this request. Since the caps add up to at least ``total + 1``, some available
server is always eligible. HAProxy computes ``ceil((total + 1) * factor)`` once and splits it by
weight (remainder spread proportionally); rounding up per server, as here, is the same up to
that rounding. The arithmetic is exact (the factor is used as a fraction, like HAProxy's integer
percentage). ``balance_factor: 0`` turns the bound off (HAProxy's default): plain consistent
hashing, a hot key stays on its server however loaded. A request without a key goes to the
least loaded server (wlc).
"""

from __future__ import annotations

import hashlib
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any, Final

from ..servers import Server
from .base import KEY_OPTIONS, Option, Scheduler, integer, key_hash, least_loaded, register

__all__ = ["ConsistentHash", "point_hash", "build_ring"]

#: Ring points per unit of weight: ketama's 40 hashes x 4 points each.
DEFAULT_POINTS: Final = 160
#: Mirrokni et al.'s 1 + epsilon; HAProxy's "reasonable values are from 125 to 200".
DEFAULT_BALANCE_FACTOR: Final = 1.25


def point_hash(label: str) -> int:
    """A ring position: 32 bits of BLAKE2b, the same in every process (never ``hash()``)."""
    return int.from_bytes(
        hashlib.blake2b(label.encode("utf-8", "surrogateescape"), digest_size=4).digest(), "big")


def build_ring(entries: Sequence[tuple[str, int, Server]], points: int
               ) -> tuple[list[int], list[Server], int]:
    """``(positions, owners, n_servers)``: the sorted point positions, the server of each point
    (a parallel list, so the walk needs no tuple unpacking), and how many servers have points.
    Ties between servers are broken by name so the ring never depends on pool order. Pure."""
    ring: list[tuple[int, str, Server]] = []
    for name, weight, server in entries:
        ring.extend((point_hash(f"{name}-{i}"), name, server) for i in range(weight * points))
    ring.sort(key=lambda p: (p[0], p[1]))
    return [p[0] for p in ring], [p[2] for p in ring], len(entries)


def _balance_factor(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number such as 1.25, or 0 for no bound, found {v!r}")
    if v == 0:
        return 0.0
    if v >= 100:
        raise ValueError(f"balance_factor is a multiple of the average load, not HAProxy's "
                         f"percentage: use {v / 100:g} for hash-balance-factor {v:g}")
    if not v >= 1.0:
        raise ValueError(f"expected 0 (no bound) or a factor >= 1.0 such as 1.25 (no server "
                         f"above 1.25x its share of the load), found {v:g}")
    return float(v)


class ConsistentHash(Scheduler):
    name = "chash"
    options = {
        **KEY_OPTIONS,
        "balance_factor": Option(
            _balance_factor, DEFAULT_BALANCE_FACTOR,
            "no server takes a request that would put it above this multiple of its weighted "
            "share of the in-flight requests (HAProxy hash-balance-factor / 100); 0 = no bound"),
        "points": Option(integer(1, 10000), DEFAULT_POINTS,
                         "ring points per unit of weight (ketama: 160)"),
    }

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(servers, options, clock)
        factor = Fraction(str(self.opts["balance_factor"])).limit_denominator(10_000)
        self._factor_num = factor.numerator  # 0: no bound
        self._factor_den = factor.denominator
        self._ring: tuple[list[int], list[Server], int] = ([], [], 0)
        self.rebuild()

    # ---- the ring -------------------------------------------------------------------------------
    def table_builder(self) -> Callable[[], tuple[list[int], list[Server], int]]:
        entries = [(s.name, s.weight, s) for s in self.servers if s.weight > 0]
        points = self.opts["points"]
        return lambda: build_ring(entries, points)

    def install_table(self, table: tuple[list[int], list[Server], int]) -> None:
        self._ring = table

    # ---- picking --------------------------------------------------------------------------------
    def pick(self, key: str | None) -> Server | None:
        if key is None:
            return least_loaded(self.servers)
        positions, owners, n_servers = self._ring
        n = len(positions)
        if n == 0:
            return least_loaded(self.servers)  # no server had weight at the last build
        start = bisect_left(positions, key_hash(key))
        if start == n:
            start = 0
        s = owners[start]
        num = self._factor_num
        # Common case: the key's own server is available and idle (always eligible) or unbounded.
        if s.up and s.weight > 0 and (s.inflight == 0 or num == 0):
            return s
        if num == 0:
            scale, den = 0, 1  # unbounded: any available server will do
        else:
            total = weights = 0
            for x in self.servers:
                if x.up and x.weight > 0:
                    total += x.inflight
                    weights += x.weight
            if weights == 0:
                return None
            scale = (total + 1) * num
            den = self._factor_den * weights
        # Walk clockwise, looking at each server once (a server has many points).
        seen: set[int] = set()
        for i in range(start, start + n):
            x = owners[i - n if i >= n else i]
            xid = id(x)
            if xid in seen:
                continue
            # Eligible: x.inflight + 1 <= ceil(scale * x.weight / den), in integers.
            if x.up and x.weight > 0 and (num == 0 or x.inflight + 1 <= -(-scale * x.weight // den)):
                return x
            seen.add(xid)
            if len(seen) == n_servers:
                break
        return least_loaded(self.servers)

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["ring_points"] = len(self._ring[0])
        snap["balance_factor"] = self.opts["balance_factor"]
        return snap


register(ConsistentHash)
