"""lblcr: locality-based least-connection with replication (ip_vs_lblcr.c), keyed on the request.

Each key remembers a *set* of servers. A request goes to the least loaded available member; if
there is none, or it is overloaded (the same test as lblc: above ``weight * capacity`` in-flight
requests while some server is under half its share), the least loaded server in the pool joins
the set and takes the request. When the set has more than one member and has not changed for
``set_expiry``, its most loaded member (by ``inflight / weight``) is dropped, so a key that was
hot and got replicated shrinks back once the load passes. See ``LocalityScheduler.pick_set`` for
the exact steps.

``set_expiry`` defaults to 60 s. IPVS's ``lblcr_expiration`` is 24 h because it keys whole
destination IPs of cache clusters, whose popularity changes slowly; LARD/R keys single targets and
shrinks after K of a few seconds (20 s). A URL key sits between the two, and a minute lets a
replica set last across a burst without holding extra copies for a day.

The table is bounded (``max_entries``, LRU) and entries expire after ``expiration`` idle, lazily
on lookup; see _locality.py. A request without a key is balanced by wlc and not remembered.
"""

from __future__ import annotations

from ..servers import Server
from .base import KEY_OPTIONS, Option, duration, register
from ._locality import CAPACITY_OPTION, TABLE_OPTIONS, LocalityScheduler, half_load_overloaded


class LocalityLeastConnectionReplicated(LocalityScheduler):
    name = "lblcr"
    options = {
        **KEY_OPTIONS,
        "capacity": CAPACITY_OPTION,
        "set_expiry": Option(duration, 60.0, "a key's server set unchanged for this long drops "
                             "its most loaded member (IPVS lblcr_expiration is 24h)"),
        **TABLE_OPTIONS,
    }
    uses_sets = True

    def scale_thresholds(self) -> None:
        self.capacity = self.opts["capacity"] / self.peers

    def overloaded(self, n: Server) -> bool:
        return half_load_overloaded(n, self.servers, self.capacity)

    def pick(self, key: str | None) -> Server | None:
        return self.pick_set(key, self.opts["set_expiry"])


register(LocalityLeastConnectionReplicated)
