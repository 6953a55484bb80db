"""rr: round robin over available servers, ignoring weights (ip_vs_rr.c).

Like IPVS, the cursor continues from the last server chosen and skips servers that are down or
quiesced (weight 0), so a masked server's turn passes to the next one instead of doubling up.
"""

from __future__ import annotations

from ..servers import Server
from .base import Scheduler, register


class RoundRobin(Scheduler):
    name = "rr"

    _cursor = -1

    def pick(self, key: str | None) -> Server | None:
        servers = self.servers
        n = len(servers)
        for step in range(1, n + 1):
            i = (self._cursor + step) % n
            if servers[i].available:
                self._cursor = i
                return servers[i]
        return None


register(RoundRobin)
