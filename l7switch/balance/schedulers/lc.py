"""lc: least connections (ip_vs_lc.c), counted in in-flight requests.

The server with the fewest requests in flight, whatever its weight; ties go to the first server
in pool order, as IPVS's ``doh < loh`` keeps the first it met. Weights matter only in that a
weight of 0 quiesces the server: IPVS's lc skips ``weight == 0`` destinations too. Use wlc to have
weights scale the load.
"""

from __future__ import annotations

from ..servers import Server
from .base import Scheduler, register


class LeastConnection(Scheduler):
    name = "lc"

    def pick(self, key: str | None) -> Server | None:
        best: Server | None = None
        for s in self.servers:
            if s.available and (best is None or s.inflight < best.inflight):
                best = s
        return best


register(LeastConnection)
