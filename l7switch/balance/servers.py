"""A real server, its state and its live counters: the values schedulers read and the monitor shows.

"server" in l7switch always means a real server behind the switch (IPVS's "real server");
the listening sockets are "listeners" and the process is "the switch". Nothing here does I/O.

A server's state is two values kept apart, as HAProxy keeps them (srv->cur_state and
srv->cur_admin): ``healthy`` — what checks found (active, passive, agent) — and ``admin`` — what
an operator or an agent asked for: ``ready``, ``drain`` (keeps its sessions, takes no new ones)
or ``maint`` (takes nothing). What the rest of the switch reads is derived from both by
``refresh()`` and stored, so the hot path reads plain attributes:

- ``up``: may serve requests at all (sticky sessions included): healthy and not in maint;
- ``weight``: the effective weight schedulers use: the configured weight scaled by an agent's
  percentage, 0 while draining (IPVS's quiesce);
- ``ramp``: slow start's share, (0, 1]; dynamic schedulers scale the weight by it.

``state`` names the combination for logs, ``snapshot()`` and ``explain``: maint, down, drain, up.
Because these are plain values, a process that does not run the checks itself (a worker told by
a master) can set them from what it is told.
"""

from __future__ import annotations

from typing import Any, Final

from ..stats import Traffic

# Weight of the newest sample in the response-time moving average; 1/8 is TCP's SRTT gain
# (RFC 6298 §2.3, alpha = 1/8).
LATENCY_EWMA_GAIN: Final = 0.125

UP: Final = "up"
DOWN: Final = "down"
DRAIN: Final = "drain"
MAINT: Final = "maint"
READY: Final = "ready"
ADMIN_STATES: Final = (READY, DRAIN, MAINT)


class Server:
    """One real server, its state and its live counters."""

    __slots__ = (
        "name", "host", "port", "weight", "up", "inflight", "total", "failures", "latency", "conns",
        "idle_conns", "pool_name", "index", "base_weight", "agent_pct", "ramp", "credit", "healthy",
        "admin", "since", "maxconn", "queued", "backup", "errors", "retries", "redispatches",
        "traffic",
    )

    def __init__(self, name: str, host: str, port: int, weight: int = 1, pool_name: str = "",
                 index: int = 0, maxconn: int = 0, backup: bool = False) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.base_weight = weight  # configured (or set at run time); ``weight`` is the effective one
        self.agent_pct = 100  # an agent's "75%"
        self.healthy = True
        self.admin = READY
        self.weight = weight
        self.up = True
        self.ramp = 1.0  # slow start: share of the weight taken so far
        self.credit = 0.0  # slow start with rr/wrr: turns earned (pool.pick)
        self.since = 0.0  # monotonic time of the last state change (0: never changed)
        self.maxconn = maxconn  # requests in flight at most; 0: no limit
        self.queued = 0  # requests waiting for this server in particular
        self.backup = backup
        self.inflight = 0  # requests sent and not yet answered in full
        self.total = 0  # requests ever sent
        self.failures = 0  # connect errors, resets, timeouts (ever)
        self.errors = 0  # consecutive failures seen in traffic (passive checks); reset by a success
        self.retries = 0  # requests re-sent elsewhere after failing on this server
        self.redispatches = 0  # requests sent here after failing elsewhere
        self.latency = 0.0  # EWMA of time to response head, seconds
        self.traffic = Traffic()  # requests that ended here: statuses, bytes, durations, cache
        self.conns = 0  # open upstream connections (busy + idle)
        self.idle_conns = 0
        self.pool_name = pool_name
        self.index = index  # position in the pool, stable for hashing tables

    def refresh(self) -> None:
        """Recompute ``up`` and ``weight`` from ``healthy``, ``admin``, ``base_weight`` and
        ``agent_pct`` (the pool calls this, then tells the scheduler what changed)."""
        self.up = self.healthy and self.admin != MAINT
        if self.admin == DRAIN or self.base_weight <= 0 or self.agent_pct <= 0:
            self.weight = 0
        else:
            # HAProxy's agent weight: uweight * pct / 100, never rounded down to 0 (that is drain).
            self.weight = max(1, self.base_weight * self.agent_pct // 100)

    @property
    def state(self) -> str:
        if self.admin == MAINT:
            return MAINT
        if not self.up:
            return DOWN
        if self.admin == DRAIN or self.weight == 0:
            return DRAIN
        return UP

    @property
    def available(self) -> bool:
        """Eligible for new work: up and not quiesced (weight 0 = drain, as IPVS)."""
        return self.up and self.weight > 0

    @property
    def full(self) -> bool:
        """At its ``maxconn``: a new request must wait for one in flight to end."""
        return 0 < self.maxconn <= self.inflight

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def record_latency(self, seconds: float) -> None:
        if self.latency == 0.0:
            self.latency = seconds
        else:
            self.latency += LATENCY_EWMA_GAIN * (seconds - self.latency)

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name, "address": self.address, "state": self.state, "up": self.up,
            "healthy": self.healthy, "admin": self.admin, "backup": self.backup,
            "weight": self.base_weight, "effective_weight": self.weight,
            "agent_pct": self.agent_pct, "slow_start": round(self.ramp, 3),
            "maxconn": self.maxconn, "queued": self.queued,
            "inflight": self.inflight, "total": self.total, "failures": self.failures,
            "consecutive_errors": self.errors, "retries": self.retries,
            "redispatches": self.redispatches,
            "latency_ms": round(self.latency * 1000, 3), "conns": self.conns,
            "idle_conns": self.idle_conns, "traffic": self.traffic.snapshot(),
        }

    def __repr__(self) -> str:
        backup = " backup" if self.backup else ""
        return (f"<Server {self.pool_name}/{self.name} {self.address} w={self.weight} {self.state}{backup} "
                f"inflight={self.inflight} total={self.total}>")
