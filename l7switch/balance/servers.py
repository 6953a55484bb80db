"""A real server and its live counters: the numbers schedulers read and the monitor shows.

"server" in l7switch always means a real server behind the switch (IPVS's "real server");
the listening sockets are "listeners" and the process is "the switch". Nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

# Weight of the newest sample in the response-time moving average; 1/8 is TCP's SRTT gain
# (RFC 6298 §2.3, alpha = 1/8).
LATENCY_EWMA_GAIN = 0.125


class Server:
    """One real server and its live counters (the numbers the monitor shows)."""

    __slots__ = (
        "name", "host", "port", "weight", "up", "inflight", "total", "failures",
        "latency", "conns", "idle_conns", "pool_name", "index",
    )

    def __init__(self, name: str, host: str, port: int, weight: int = 1, pool_name: str = "",
                 index: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.weight = weight
        self.up = True
        self.inflight = 0  # requests sent and not yet answered in full
        self.total = 0  # requests ever sent
        self.failures = 0  # connect errors, resets, timeouts
        self.latency = 0.0  # EWMA of time to response head, seconds
        self.conns = 0  # open upstream connections (busy + idle)
        self.idle_conns = 0
        self.pool_name = pool_name
        self.index = index  # position in the pool, stable for hashing tables

    @property
    def available(self) -> bool:
        """Eligible for new work: up and not quiesced (weight 0 = drain, as IPVS)."""
        return self.up and self.weight > 0

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
            "name": self.name, "address": self.address, "weight": self.weight, "up": self.up,
            "inflight": self.inflight, "total": self.total, "failures": self.failures,
            "latency_ms": round(self.latency * 1000, 3), "conns": self.conns,
            "idle_conns": self.idle_conns,
        }

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return (f"<Server {self.pool_name}/{self.name} {self.address} w={self.weight} {state} "
                f"inflight={self.inflight} total={self.total}>")
