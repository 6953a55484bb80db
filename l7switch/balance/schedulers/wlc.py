"""wlc: weighted least connections (ip_vs_wlc.c), counted in in-flight requests.

IPVS ranks servers by overhead = (active * 256 + inactive) / weight, where "inactive" are
connections in TIME_WAIT and the like. At Layer 7 the meaningful load is the number of requests
a server is working on now, so overhead here is ``inflight / weight``. Upstream keep-alive
connections that sit idle cost a server nothing, which is what IPVS's inactive term was
approximating. The comparison itself is ``least_loaded`` in base.py, shared with the locality
schedulers that fall back to wlc.
"""

from __future__ import annotations

from ..servers import Server
from .base import Scheduler, least_loaded, register


class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def pick(self, key: str | None) -> Server | None:
        return least_loaded(self.servers)


register(WeightedLeastConnection)
