"""What the connections of one switch process share.

``Generation``: one loaded rule file and the live objects built from it — the router, the server
pools and one ``ConnectionPool`` per real server. Each request takes the generation that is
current when its head is routed and keeps it to the end, so a reload (which makes a new
generation current) never changes the rules under a request in flight.

``SwitchState``: process-wide — the deadline clock, the client connections, the persistence
tables, the tasks of connects in flight, a request counter for request ids, the draining flag,
the current generation, and self-protection: the connection cap (the runtime's ``Accept`` pauses
the listeners at it) and the per-client table (guard/clients.py). The runtime
(runtime/switch.py) owns it; connections read it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from ..balance.build import build_pools
from ..balance.pool import ServerPool
from ..balance.servers import Server
from ..balance.store import Tables
from ..errors import TooManyRequests
from ..guard.clients import ClientTable
from ..http.rules import Router
from ..net.clock import Clock, Timed, monotonic, tick_for
from ..net.ratelog import RateLimited
from ..stats import Traffic
from ..spec import Config, LogSpec
from .accesslog import AccessLog
from .upstream import ConnectionPool

log = logging.getLogger("l7switch")

#: Above this share of the connection cap, idle keep-alive connections are closed, oldest
#: first, until the count is back under it (the issue's "~80%"; nginx drains its reusable
#: keep-alive connections, oldest first, once fewer than 1/16 of worker_connections are free:
#: ngx_drain_connections, "reusing connections in advance" since 1.19.2).
PRESSURE: Final = 0.8

Defer = Callable[[Callable[[], Any], Callable[[Any], None]], None]


class Client(Protocol):
    """A client connection, as the switch sees it when stopping, counting or showing it."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class Accept(Protocol):
    """The listeners, as the connection cap sees them (runtime/listeners.py): stop accepting at
    the cap (pending connections wait in the kernel's backlog), accept again below it."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


#: The listeners accept again once the clients are down to this share of the cap: a gap between
#: the two marks keeps a busy switch from pausing and resuming on every connection (HAProxy
#: resumes its listeners as soon as one slot is free, but pays less for a pause than a listen()).
RESUME_AT: Final = 0.9


#: Under pressure only connections quiet for at least this long are closed: a keep-alive
#: connection idle for microseconds is usually about to send its next request (closing those
#: failed normal clients' requests in bench/hostile's idle flood), and a client that connected
#: a moment ago has not had time to speak. A second is long for a client that means to talk.
EVICT_AFTER = 1.0


#: New connections whose first bytes are handled per loop turn; the rest wait for the next
#: turns, in arrival order. A storm of thousands of connections arriving at once (a flood, or
#: its attackers reconnecting together) otherwise parses, routes and connects them all in one
#: turn, and every established client waits behind them (HAProxy bounds the same work per
#: turn with tune.maxaccept, 64 by default, and its run queue depth).
FIRST_PER_TURN: Final = 64


class Newcomer(Protocol):
    """A client connection whose first bytes were held back (ClientConnection)."""

    def take_turn(self) -> None: ...


class FirstBytes:
    """Paces new connections' first requests: FIRST_PER_TURN per loop turn, the rest queued.
    Established connections (a keep-alive client's next request) never wait here."""

    __slots__ = ("loop", "count", "waiting", "scheduled")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.count = 0  # first requests handled this turn
        self.waiting: deque[Newcomer] = deque()
        self.scheduled = False

    def admit(self, conn: Newcomer) -> bool:
        """True: handle its first bytes now; False: it waits (the caller holds them)."""
        if self.count < FIRST_PER_TURN and not self.waiting:
            if not self.count:
                self._schedule()  # a new turn starts the count again
            self.count += 1
            return True
        self.waiting.append(conn)
        self._schedule()
        return False

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            loop = self.loop or asyncio.get_running_loop()
            loop.call_soon(self._turn)

    def _turn(self) -> None:
        """A new loop turn: the waiting connections go first, up to the turn's share."""
        self.scheduled = False
        self.count = 0
        waiting = self.waiting
        while waiting and self.count < FIRST_PER_TURN:
            self.count += 1
            waiting.popleft().take_turn()
        if waiting or self.count:
            self._schedule()

    def forget(self, conn: Newcomer) -> None:
        try:
            self.waiting.remove(conn)  # (rare: a waiting connection that closed)
        except ValueError:
            pass


class IdleClient(Protocol):
    """A client connection, as eviction under pressure sees it."""

    def drop_idle(self) -> None: ...

    def silent(self) -> bool:
        """Not a byte since accept."""


class Generation:
    __slots__ = ("config", "router", "pools", "cpools", "timeouts", "limits", "splice", "id_header",
                 "id_name", "header_timeout", "keepalive_timeout", "client_timeout", "server_timeout",
                 "max_header_bytes", "max_headers", "max_body_bytes", "buffer_body", "splice_threshold")

    def __init__(self, config: Config, tables: Tables, clock: Clock,
                 spawn: Callable[[Coroutine[Any, Any, None]], None], peers: int = 1) -> None:
        self.config = config
        # One attribute hop less on the paths every request takes (the same frozen objects).
        self.timeouts = config.timeouts
        self.limits = config.limits
        self.splice = config.splice
        # What every request reads, as fields of this class: compiled, a field here is a struct
        # read, where a field of a spec (a Python dataclass) is a lookup by name.
        t, limits = config.timeouts, config.limits
        self.header_timeout = t.header
        self.keepalive_timeout = t.keepalive
        self.client_timeout = t.client
        self.server_timeout = t.server
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_body_bytes = limits.max_body_bytes
        self.buffer_body = limits.buffer_body
        #: Known-length bodies from this size cross by splice; None: splice is off.
        self.splice_threshold = config.splice.threshold if config.splice.enabled else None
        self.id_name = config.log.request_id_header.encode("latin-1")  # as written, for servers
        self.id_header = self.id_name.lower()  # b"": none sent
        self.router = Router.from_specs(config.rules, config.default_pool)
        self.pools: dict[str, ServerPool] = build_pools(config.pools, tables, config.timeouts.queue, peers)
        up = config.upstream
        self.cpools: dict[Server, ConnectionPool] = {
            s: ConnectionPool(s, up.max_idle, up.idle_timeout, config.timeouts.server,
                              config.limits.max_response_header_bytes, clock, spawn)
            for pool in self.pools.values() for s in pool.all_servers
        }

    def defer_builds(self, defer: Defer) -> None:
        """Scheduler tables (Maglev, chash rings) are rebuilt through ``defer`` from now on."""
        for pool in self.pools.values():
            pool.scheduler.defer = defer

    def inherit(self, old: Generation) -> dict[str, list[str]]:
        """After a reload, from the generation this one replaces: per pool kept by name, the
        servers' known state (ServerPool.inherit) and the warm idle connections of every server
        kept (same pool, name and address); the old generation's other connection pools close
        their idle connections and pool no more. Returns the servers carried over, by pool."""
        carried: dict[str, list[str]] = {}
        for name, pool in self.pools.items():
            prev = old.pools.get(name)
            if prev is not None:
                carried[name] = pool.inherit(prev)
        new_by_id = {(s.pool_name, s.name, s.host, s.port): s for s in self.cpools}
        for server, cpool in old.cpools.items():
            mine = new_by_id.get((server.pool_name, server.name, server.host, server.port))
            if mine is not None:
                self.cpools[mine].adopt(cpool)
            else:
                cpool.retire()
        return carried

    def close(self) -> None:
        """Close the idle server connections (busy ones close with their exchanges)."""
        for cpool in self.cpools.values():
            cpool.close_all()

    def snapshot(self) -> dict[str, Any]:
        return {
            "pools": {name: pool.snapshot() for name, pool in self.pools.items()},
            "connection_pools": {s.address: c.snapshot() for s, c in self.cpools.items()},
        }

    def __repr__(self) -> str:
        return f"<Generation {self.config.path} pools={list(self.pools)}>"


class SwitchState:
    __slots__ = ("current", "clock", "tables", "clients", "tasks", "loop", "draining", "requests",
                 "id_prefix", "id_bytes", "max_connections", "crowded_at", "resume_at", "paused", "accept", "guard",
                 "idle", "fresh", "first", "refusals_log", "rate_log", "buffered", "access",
                 "_access_job", "peers", "listeners")

    def __init__(self, config: Config, tables: Tables | None = None, peers: int = 1) -> None:
        t = config.timeouts
        # Queue timeouts are deadlines on this clock too (balance/queue.Ticket).
        queues = [p.queue.timeout for p in config.pools.values() if p.queue.timeout is not None]
        self.clock = Clock(tick_for(t.connect, t.server, t.client, t.header, t.keepalive, t.queue, *queues))
        # Persistence tables (client address -> server...) belong to the process, not to a
        # generation: a reload hands them to the new pools, so sessions survive it.
        self.tables = tables if tables is not None else Tables()
        #: Worker processes serving the same listeners, each with its own state (workers: N).
        self.peers = peers
        #: Counters per listener address (stats.py), kept across reloads like the address.
        self.listeners: dict[str, Traffic] = {}
        self.current = Generation(config, self.tables, self.clock, self.spawn, peers)
        self.clients: set[Client] = set()
        # Tasks exist only for new server connections; asyncio keeps tasks weakly, so we hold them.
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self.requests = 0
        #: Body bytes held by requests reading theirs before a server is chosen (exchange.py's
        #: BUFFERING, bounded by its BUFFER_BUDGET).
        self.buffered = 0
        #: One line per request (log.access; None: off); flushed every second on the clock.
        self.access: AccessLog | None = None
        self._access_job: Timed | None = None
        self._set_access(config.log)
        #: The client connection cap in force (limits.max_connections, or derived from the fd
        #: limit by the runtime at start); 0 until then: no cap.
        self.max_connections = 0
        self.crowded_at = 0  # clients at which connection_made calls crowded(); 0: never
        self.resume_at = 0  # the listeners resume at or below this many clients
        self.paused = False  # the listeners stopped accepting at the cap
        self.accept: Accept | None = None  # installed by the runtime with its listeners
        per_client = config.limits.per_client
        #: Per-client limits (None: off): process-wide, like the persistence tables, so a
        #: reload keeps each client's counts.
        self.guard = ClientTable(per_client) if per_client is not None else None
        # A flood must not become a flood of log lines: one line a second per kind of refusal,
        # with the count of those held back (nginx's limit_req logs every rejection, which
        # operators then have to rate-limit themselves).
        self.refusals_log = RateLimited(log)
        self.rate_log = RateLimited(log)
        #: Keep-alive connections between requests, oldest idle first, with the time each went
        #: idle (insertion order: a connection leaves when its next request starts and comes
        #: back at the end). One dict store and one pop per request buy O(1) oldest-first
        #: eviction under pressure.
        self.idle: OrderedDict[IdleClient, float] = OrderedDict()
        #: Connections by accept time, oldest first: the first to go under pressure are those
        #: that never sent a byte (what an idle flood is made of). Entries leave at
        #: connection_lost, or when eviction finds a connection that has spoken (each is looked
        #: at once at most).
        self.fresh: OrderedDict[IdleClient, float] = OrderedDict()
        self.first = FirstBytes()
        self.clock.every(0, lambda now: self.relieve_pressure())  # once a tick
        # Request ids: this process's random prefix + a counter, unique across restarts and
        # workers without coordination (nginx's $request_id is 32 random hex digits).
        self.id_prefix = os.urandom(3).hex()
        self.id_bytes = self.id_prefix.encode()  # (what forward_request_head formats ids with)

    def evict_idle(self, n: int, now: float | None = None) -> int:
        """Close up to ``n`` quiet connections: first those that have not sent a byte since
        accept, oldest first, then keep-alive connections between requests, longest idle first
        — only those quiet for EVICT_AFTER at least. Silently, as at keep-alive expiry (a client
        retries a request on a closed idle connection, RFC 9112 §9.3.1). Returns how many were
        closed. The connection cap calls this at accept time, the clock once a tick."""
        if now is None:
            now = monotonic()
        limit = now - EVICT_AFTER
        closed = 0
        fresh = self.fresh
        while fresh and closed < n:
            conn, since = next(iter(fresh.items()))
            if since > limit:
                break  # the rest are younger
            del fresh[conn]
            if conn.silent():
                conn.drop_idle()
                closed += 1
        idle = self.idle
        while idle and closed < n:
            conn, since = next(iter(idle.items()))
            if since > limit:
                break
            del idle[conn]
            conn.drop_idle()
            closed += 1
        return closed

    def excess(self) -> int:
        """Client connections above PRESSURE of the cap (0: below it, or no cap)."""
        cap = self.max_connections
        return len(self.clients) - int(cap * PRESSURE) if cap else 0

    def relieve_pressure(self) -> int:
        """Above PRESSURE of the cap: close as many idle keep-alive connections as it takes
        (or as there are) to get back under it. (Closed connections leave ``clients`` in
        connection_lost, one loop pass later, so calling this again before that over-counts:
        the clock calls it once per tick.)"""
        n = self.excess()
        return self.evict_idle(n) if n > 0 else 0

    def next_request(self) -> int:
        self.requests += 1
        return self.requests

    def request_id(self, seq: int) -> str:
        return f"{self.id_prefix}{seq:010x}"

    # ---- the connection cap (connection_made and connection_lost test the marks inline) ----------
    def set_cap(self, cap: int) -> None:
        """Cap client connections at ``cap`` (0: no cap)."""
        self.max_connections = cap
        self.crowded_at = max(1, int(cap * PRESSURE)) if cap else 0
        self.resume_at = min(int(cap * RESUME_AT), cap - 1) if cap else 0

    def crowded(self) -> None:
        """A client connection was made with the clients at or above PRESSURE of the cap."""
        # Idle keep-alive connections go first, oldest first, to make room before the cap: one
        # out for each one in (the closed ones leave ``clients`` only in their connection_lost,
        # a loop pass later, so sizing the eviction from len(clients) here would close far too
        # many; the clock's relieve_pressure job does the sizing once per tick).
        self.evict_idle(1)
        if len(self.clients) >= self.max_connections and not self.paused:
            self.paused = True
            log.warning("connection cap reached: %d client connections (limits.max_connections); "
                        "not accepting until %d", len(self.clients), self.resume_at)
            if self.accept is not None:
                self.accept.pause()

    def uncrowded(self) -> None:
        """The clients are down to resume_at while the listeners are paused."""
        self.paused = False
        if self.draining:
            return  # stopping: the listeners are closed for good
        log.warning("connection cap cleared: %d client connections; accepting again", len(self.clients))
        if self.accept is not None:
            self.accept.resume()

    # ---- a client connection arrives and leaves (HTTP and tls-passthrough alike) -----------------
    def client_in(self, client: Client, ip: str) -> tuple[bool, str | None]:
        """A client connection from ``ip`` was accepted: (False, None) when it is over its
        client's connection limit (the caller closes it before a byte is read; it is never
        counted: LVS drops, HAProxy "tcp-request connection reject"), else (True, the per-client
        key it is counted under). It joins ``clients``, and the cap is looked at."""
        guard = self.guard
        key = None
        if guard is not None:
            key = guard.key(ip)
            if key is not None and not guard.connect(key):
                self.client_refused(ip, key)
                return False, None
        clients = self.clients
        clients.add(client)
        if len(clients) >= self.crowded_at > 0:
            self.crowded()  # near or at the connection cap
        return True, key

    def client_out(self, client: Client, key: str | None) -> None:
        """A client connection counted by ``client_in`` (under ``key``) is gone."""
        clients = self.clients
        clients.discard(client)
        if self.paused and len(clients) <= self.resume_at:
            self.uncrowded()
        if key is not None and self.guard is not None:
            self.guard.disconnect(key)

    # ---- per-client limits ------------------------------------------------------------------------
    def client_refused(self, ip: str, key: str) -> None:
        """A connection from ``ip`` was over its client's limit (closed by the caller): logged at
        most once a second, with how many were not."""
        guard = self.guard
        assert guard is not None
        self.refusals_log.warning("per-client limit: connection from %s closed: %s has %d open "
                                  "(limits.per_client.connections)", ip, key, guard.max_conns)

    def rate_check(self, key: str, ip: str) -> TooManyRequests | None:
        """A request from client ``key``: None to pass, or the 429 to answer it with."""
        guard = self.guard
        assert guard is not None
        wait = guard.request(key)
        if not wait:
            return None
        self.rate_log.warning("per-client limit: 429 to %s: %s over %g requests/s (limits.per_client)",
                              ip, key, guard.rate)
        # Retry-After is whole seconds (RFC 9110 §10.2.3): round up, never 0.
        return TooManyRequests(f"over {guard.rate:g} requests per second", retry_after=max(1, math.ceil(wait)))

    def snapshot(self) -> dict[str, Any]:
        """The self-protection part of Switch.snapshot()."""
        snap: dict[str, Any] = {"clients": len(self.clients), "max_connections": self.max_connections,
                                "at_cap": self.paused, "buffered_body_bytes": self.buffered}
        if self.guard is not None:
            snap["per_client"] = self.guard.snapshot()
        return snap

    def traffic_of(self, listener: str) -> Traffic:
        """A listener's counters (made on its first connection)."""
        traffic = self.listeners.get(listener)
        if traffic is None:
            traffic = self.listeners[listener] = Traffic()
        return traffic

    def reconfigure(self, config: Config) -> tuple[Generation, dict[str, list[str]]]:
        """A reload: the next generation becomes current (new requests use it; those in flight
        keep theirs), per-client limits take the new settings with their counts, and the access
        log follows its settings. Returns the generation replaced, and the servers whose state
        was carried over, by pool."""
        old = self.current
        gen = Generation(config, self.tables, self.clock, self.spawn, self.peers)
        kept = gen.inherit(old)
        per_client = config.limits.per_client
        if per_client is None:
            self.guard = None
        elif self.guard is None:
            self.guard = ClientTable(per_client)
        else:
            self.guard.configure(per_client)
        if config.log != old.config.log:
            previous = self._set_access(config.log)
            if previous is not None:
                previous.close_soon()  # its thread writes what it has, then ends
        self.current = gen
        return old, kept

    def _set_access(self, spec: LogSpec) -> AccessLog | None:
        """The access log as ``spec`` says, flushed every second; returns the one it replaces."""
        if self._access_job is not None:
            self.clock.unwatch(self._access_job)
            self._access_job = None
        previous, self.access = self.access, None
        if spec.access is not None:
            access = self.access = AccessLog(spec)
            self._access_job = self.clock.every(1.0, lambda now: access.flush())
        return previous

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def __repr__(self) -> str:
        return f"<SwitchState clients={len(self.clients)} requests={self.requests} {self.current!r}>"
