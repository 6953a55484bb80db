"""wlc: weighted least connections (ip_vs_wlc.c), counted in in-flight requests.

IPVS ranks servers by overhead = (active * 256 + inactive) / weight, where "inactive" are
connections in TIME_WAIT and the like. At Layer 7 the meaningful load is the number of requests
a server is working on now, so overhead here is ``inflight / weight``. Upstream keep-alive
connections that sit idle cost a server nothing, which is what IPVS's inactive term was
approximating. As IPVS does, we compare by cross-multiplying (``a.load * b.weight <
b.load * a.weight``) to stay in integers, and the first server with the least overhead wins.
"""

from __future__ import annotations

from ..backends import Server
from . import Scheduler, register


@register
class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def pick(self, key: str | None) -> Server | None:
        best: Server | None = None
        for s in self.servers:
            if not s.available:
                continue
            if best is None or s.inflight * best.weight < best.inflight * s.weight:
                best = s
        return best
