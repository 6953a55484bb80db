"""lard: locality-aware request distribution (Pai et al., ASPLOS 1998), basic and with
replication (LARD/R, ``replicate: true``).

Basic LARD remembers one server per key (``hash_key``, the path by default) and moves the key to
the least loaded server when the remembered one is unavailable or::

    (n.load > T_high and some available node has load < T_low) or n.load >= 2 * T_high

Load is ``inflight``. Thresholds scale with weight (``T * weight``), so a weight-2 server may carry
twice the load, and "least loaded" is wlc's ``inflight / weight``. The paper's values are
``t_low: 25`` and ``t_high: 65``. Compared with lblc (IPVS's copy of this algorithm), LARD has the
``2 * T_high`` escape, which moves a key off a server that is far over its share even when no
server is idle, and its "idle" mark T_low is a separate knob rather than half of T_high.

LARD/R keeps a set of servers per key and is the same algorithm as lblcr with LARD's overload
test: the request goes to the least loaded member; under overload the least loaded server joins
the set; a set unchanged for K (``set_expiry``, default 20 s, the order of the paper's K) drops
its most loaded member. ``set_expiry`` has no effect without ``replicate``.

Not done: the paper's front-end admission control, which holds requests once the back-ends
carry ``S = (n-1)*T_high + T_low - 1`` in total, because the switch has no request queue. The
key table is bounded (``max_entries``, LRU) and entries expire after ``expiration`` idle; see
_locality.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..servers import Server
from .base import KEY_OPTIONS, Option, boolean, duration, integer, register
from ._locality import TABLE_OPTIONS, LocalityScheduler


class LocalityAwareRequestDistribution(LocalityScheduler):
    name = "lard"
    options = {
        **KEY_OPTIONS,
        "t_low": Option(integer(1), 25, "in-flight requests per unit of weight below which a "
                        "server counts as lightly loaded (LARD's T_low)"),
        "t_high": Option(integer(1), 65, "in-flight requests per unit of weight above which a "
                         "key moves if some server is below t_low; at twice this it moves anyway"),
        "replicate": Option(boolean, False, "LARD/R: keep a set of servers per key that grows "
                            "under load and shrinks after set_expiry"),
        "set_expiry": Option(duration, 20.0, "with replicate: a key's server set unchanged for "
                             "this long drops its most loaded member (LARD/R's K)"),
        **TABLE_OPTIONS,
    }

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # (The arguments spelled out: compiled by mypyc, a *args/**kwargs pass-through to the
        # base class's __init__ handed it the tuple itself.)
        super().__init__(servers, options, clock)
        self.uses_sets = self.opts["replicate"]

    def scale_thresholds(self) -> None:
        self._t_low = self.opts["t_low"] / self.peers
        self._t_high = self.opts["t_high"] / self.peers

    @classmethod
    def check(cls, opts: Mapping[str, Any], n_servers: int) -> list[str]:
        problems = super().check(opts, n_servers)
        if opts["t_low"] >= opts["t_high"]:
            problems = [*problems, f"t_low ({opts['t_low']}) must be below t_high ({opts['t_high']})"]
        return problems

    def overloaded(self, n: Server) -> bool:
        high = self._t_high * n.weight
        if n.inflight >= 2 * high:
            return True
        if n.inflight <= high:
            return False
        t_low = self._t_low
        for m in self.servers:
            if m.available and m.inflight < t_low * m.weight:
                return True
        return False

    def pick(self, key: str | None) -> Server | None:
        if self.uses_sets:
            return self.pick_set(key, self.opts["set_expiry"])
        return self.pick_single(key)


register(LocalityAwareRequestDistribution)
