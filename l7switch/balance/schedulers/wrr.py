"""wrr: weighted round robin, the interleaving algorithm of ip_vs_wrr.c.

IPVS walks the servers in pool order with a "current weight" ``cw`` that starts at the maximum
weight ``mw`` and drops by the weights' greatest common divisor ``di`` each time the walk wraps
around; a server is chosen when its weight is at least ``cw``::

    i = i + 1; if i == n: i = 0; cw -= di; if cw <= 0: cw = mw
    if servers[i].weight >= cw: pick servers[i]

so weights 4, 3, 2 give a a b a b c a b c: heavier servers are interleaved with the others
instead of being sent their whole share in a block. As in IPVS, ``mw`` is the largest weight
minus ``di - 1`` (a multiple of ``di`` plus one, so the last pass of a cycle is at ``cw = 1``),
and a weight change resets the walk to the head of the list and rounds ``cw`` to a step of the
new ``di`` (``ip_vs_wrr_dest_changed``).

``mw`` and ``di`` are taken over the *available* servers and recomputed when one goes down or
comes back, as well as on a weight change: IPVS gets the same effect because a failed real
server is removed from the service (keepalived, ldirectord), which calls the same hook. A server
that is unavailable when ``pick`` runs is skipped anyway, so a stale ``mw`` only costs a few
extra steps, and the walk is bounded by one full cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import reduce
from math import gcd
from typing import Any

from ..servers import Server
from .base import Scheduler, register


class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(servers, options, clock)
        self._i = -1  # index of the last server picked; -1 is the list head, as IPVS's mark->cl
        self._cw = 0
        self._mw = 0
        self._di = 1
        self._steps = 0  # (index, cw) states in one full cycle: the walk never needs more
        self._recompute()

    def _recompute(self) -> None:
        weights = [s.weight for s in self.servers if s.available]
        di = reduce(gcd, weights, 0) or 1
        mw = max(weights, default=0)
        if mw:
            mw -= di - 1
        self._i = -1
        self._di = di
        self._mw = mw
        if self._cw > mw or self._cw <= 0:
            self._cw = mw
        elif di > 1:
            self._cw = (self._cw // di) * di + 1
        # cw takes at most mw // di + 1 values, each visited over n servers.
        self._steps = len(self.servers) * (mw // di + 1)

    def pick(self, key: str | None) -> Server | None:
        if self._mw <= 0:
            return None
        servers = self.servers
        n = len(servers)
        i, cw, mw, di = self._i, self._cw, self._mw, self._di
        for _ in range(self._steps):
            i += 1
            if i >= n:
                i = 0
                cw -= di
                if cw <= 0:
                    cw = mw
            s = servers[i]
            if s.weight >= cw and s.available:
                self._i, self._cw = i, cw
                return s
        # A full cycle found nobody: everything went down without a hook telling us.
        self._i, self._cw = i, cw
        return None

    def on_up(self, server: Server) -> None:
        self._recompute()

    def on_down(self, server: Server) -> None:
        self._recompute()

    def on_weight(self, server: Server) -> None:
        self._recompute()


register(WeightedRoundRobin)
