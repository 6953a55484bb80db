"""Real servers and the pools that group them, with the live counters schedulers read.

"ServerPool" is a group of real servers chosen by rules; "ConnectionPool" (upstream.py) is the
set of reusable TCP connections to *one* server. The two names stay distinct everywhere.

Nothing here does I/O: the frontend calls ``begin``/``end`` around each request and health checks
call ``mark_up``/``mark_down``; the pool forwards those events to its scheduler's hooks
(HAProxy's ``lbprm.server_take_conn`` / ``set_server_status_up``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import PoolSpec
    from .keys import KeyFunction
    from .persistence import Persistence
    from .rules import RequestView
    from .schedulers import Scheduler
    from .store import Tables

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


class ServerPool:
    """A named group of real servers plus the scheduler that picks among them."""

    __slots__ = ("name", "servers", "scheduler", "spec", "created", "keyfn", "persistence",
                 "hello_persistence")

    def __init__(self, spec: PoolSpec, clock: Callable[[], float] = time.monotonic,
                 tables: Tables | None = None) -> None:
        """``tables`` holds persistence tables (the switch's, kept across reloads); a pool built
        without them (``explain``, tests) gets empty ones of its own."""
        from .keys import key_function
        from .persistence import build
        from .schedulers import create
        from .store import Tables

        self.name = spec.name
        self.spec = spec
        self.servers = [
            Server(s.name, s.host, s.port, s.weight, spec.name, i) for i, s in enumerate(spec.servers)
        ]
        self.scheduler: Scheduler = create(spec.scheduler, self.servers, spec.scheduler_options, clock)
        opts = self.scheduler.opts
        #: Computes the request key when the scheduler uses one (None: the request is not looked at).
        self.keyfn: KeyFunction | None = (
            key_function(opts["hash_key"], opts["trust_forwarded"]) if "hash_key" in opts else None)
        persist = build(spec, self.servers, tables if tables is not None else Tables())
        #: Asked before the scheduler for each HTTP request when set (persistence.py: cookie or
        #: source); None costs nothing per request.
        self.persistence: Persistence | None = persist if persist is not None and persist.http else None
        #: Asked on a tls-passthrough connection's ClientHello (ssl_session or source).
        self.hello_persistence: Persistence | None = (
            persist if persist is not None and persist.tls_hello else None)
        self.created = time.monotonic()

    def key_of(self, view: RequestView, client: str) -> str | None:
        """The key this pool's scheduler picks on, for a request from ``client``."""
        keyfn = self.keyfn
        return keyfn(view, client) if keyfn is not None else None

    def pick(self, key: str | None = None, exclude: Server | None = None) -> Server | None:
        """The scheduler's choice for ``key``, or None when no server is available.

        ``exclude`` is a server that just refused a connection: hashing schedulers would name it
        again, so that one request is balanced by load instead (HAProxy's ``option redispatch``).
        """
        server = self.scheduler.pick(key)
        if server is not None and server is exclude:
            from .schedulers import least_loaded

            server = least_loaded(self.servers, exclude)
        return server

    def begin(self, server: Server) -> None:
        server.inflight += 1
        server.total += 1
        self.scheduler.on_start(server)

    def end(self, server: Server) -> None:
        server.inflight -= 1
        self.scheduler.on_end(server)

    def mark_down(self, server: Server) -> None:
        if server.up:
            server.up = False
            self.scheduler.on_down(server)

    def mark_up(self, server: Server) -> None:
        if not server.up:
            server.up = True
            self.scheduler.on_up(server)

    def set_weight(self, server: Server, weight: int) -> None:
        """Runtime weight change (0 quiesces: no new requests, in-flight ones finish)."""
        if weight != server.weight:
            server.weight = weight
            self.scheduler.on_weight(server)

    def snapshot(self) -> dict[str, Any]:
        persist = self.persistence
        return {
            "name": self.name, "scheduler": self.scheduler.snapshot(),
            "servers": [s.snapshot() for s in self.servers],
            "persistence": persist.snapshot() if persist is not None else None,
        }

    def __repr__(self) -> str:
        up = sum(1 for s in self.servers if s.available)
        inflight = sum(s.inflight for s in self.servers)
        return (f"<ServerPool {self.name} {self.scheduler.name} [{up}/{len(self.servers)} available, "
                f"{inflight} in flight]>")


def explain_choice(spec: PoolSpec, view: RequestView, client: str) -> list[str]:
    """Lines for ``l7switch explain``: what the pool's scheduler keys on for this request, which
    server it would pick first on a fresh, idle pool, and which persistence applies (a pure
    computation, no sockets; a source table is empty here, it is filled at run time)."""
    from .keys import describe

    pool = ServerPool(spec)
    sched = pool.scheduler
    opts = sched.opts
    key = pool.key_of(view, client)
    server = pool.pick(key)  # once: rr and wrr move on with every pick
    if pool.keyfn is None:
        lines = [f"key: none ({sched.name} does not look at the request)"]
    elif key is None:
        what = describe(opts["hash_key"], opts["trust_forwarded"])
        lines = [f"key: {what} -> absent; {sched.name} balances this request by load instead"]
    else:
        what = describe(opts["hash_key"], opts["trust_forwarded"])
        lines = [f"key: {what} -> {key!r} (hash_key: {opts['hash_key']})"]
        if server is not None:
            named = f" ({server.name})" if server.name != server.address else ""
            lines.append(f"first pick on an idle pool: {server.address}{named}")
    persist = pool.persistence
    if persist is not None:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in view.headers]
        lines.extend(persist.explain(headers, client, server))
    elif spec.persistence is not None:  # ssl_session
        lines.append(f"persistence: {spec.persistence.method} (decided on the TLS ClientHello by a "
                     "tls-passthrough listener, not per HTTP request)")
    return lines

