"""lblc: locality-based least-connection (ip_vs_lblc.c), keyed on the request instead of the
destination IP.

Each key (``hash_key``, the path by default) remembers the server that took it. The key stays on
that server while it is available and not overloaded; otherwise the weighted least-loaded server
(wlc) takes the key over and the table is updated::

    n <- table[key]
    if n is missing: n, table[key] <- least loaded server
    elif not n.available or overloaded(n): n, table[key] <- least loaded server

``overloaded(n)`` is IPVS's ``is_overloaded``: ``n.inflight > n.weight * capacity`` *and* some
available server m is below half its share, ``m.inflight * 2 < m.weight * capacity``. IPVS
compares active connections with the raw weight, so a weight-1 server counts as overloaded at its
second connection: weights there are sized as connection counts. Here weights are ordinary
relative weights (1, 2, 3...) and in-flight HTTP requests are few, so the weight is scaled by
``capacity`` (in-flight requests per unit of weight, default 65: LARD's T_high). With
``capacity: 1`` the rule is IPVS's exactly.

The table is bounded (``max_entries``, LRU) and entries expire after ``expiration`` idle, lazily
on lookup; see _locality.py. A request without a key is balanced by wlc and not remembered.
"""

from __future__ import annotations

from ..servers import Server
from .base import KEY_OPTIONS, register
from ._locality import CAPACITY_OPTION, TABLE_OPTIONS, LocalityScheduler, half_load_overloaded


class LocalityLeastConnection(LocalityScheduler):
    name = "lblc"
    options = {**KEY_OPTIONS, "capacity": CAPACITY_OPTION, **TABLE_OPTIONS}

    def scale_thresholds(self) -> None:
        self.capacity = self.opts["capacity"] / self.peers

    def overloaded(self, n: Server) -> bool:
        return half_load_overloaded(n, self.servers, self.capacity)

    def pick(self, key: str | None) -> Server | None:
        return self.pick_single(key)


register(LocalityLeastConnection)
