"""What the connections of one switch process share.

``Generation``: one loaded rule file and the live objects built from it — the router, the server
pools and one ``ConnectionPool`` per real server. Each request takes the generation that is
current when its head is routed and keeps it to the end, so a reload (which makes a new
generation current) never changes the rules under a request in flight.

``SwitchState``: process-wide — the deadline clock, the client connections, the persistence
tables, the tasks of connects in flight, a request counter for request ids, the draining flag,
and the current generation. The runtime (runtime/switch.py) owns it; connections read it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ..balance.build import build_pools
from ..balance.pool import ServerPool
from ..balance.servers import Server
from ..balance.store import Tables
from ..http.rules import Router
from ..net.clock import Clock, tick_for
from ..spec import Config
from .upstream import ConnectionPool

log = logging.getLogger("l7switch")

#: Above this share of the connection cap, idle keep-alive connections are closed, oldest
#: first, until the count is back under it (the issue's "~80%"; nginx drains its reusable
#: keep-alive connections, oldest first, once fewer than 1/16 of worker_connections are free:
#: ngx_drain_connections, "reusing connections in advance" since 1.19.2).
PRESSURE = 0.8

Defer = Callable[[Callable[[], Any], Callable[[Any], None]], None]


class Client(Protocol):
    """A client connection, as the switch sees it when stopping, counting or showing it."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class IdleClient(Protocol):
    """A keep-alive connection between requests, as eviction under pressure sees it."""

    def drop_idle(self) -> None: ...


class IdleRelief:
    """Watched by the clock: closes idle keep-alive connections while above PRESSURE."""

    __slots__ = ("state", "deadline")

    def __init__(self, state: SwitchState) -> None:
        self.state = state
        self.deadline = 1.0  # (long past: the first sweep looks, then every tick)

    def on_deadline(self, now: float) -> None:
        self.state.relieve_pressure()
        self.deadline = now + self.state.clock.tick


class Generation:
    __slots__ = ("config", "router", "pools", "cpools", "timeouts", "limits", "splice")

    def __init__(self, config: Config, tables: Tables, clock: Clock,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.config = config
        # One attribute hop less on the paths every request takes (the same frozen objects).
        self.timeouts = config.timeouts
        self.limits = config.limits
        self.splice = config.splice
        self.router = Router.from_specs(config.rules, config.default_pool)
        self.pools: dict[str, ServerPool] = build_pools(config.pools, tables, config.timeouts.queue)
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
                 "id_prefix", "max_connections", "idle")

    def __init__(self, config: Config, tables: Tables | None = None) -> None:
        t = config.timeouts
        # Queue timeouts are deadlines on this clock too (balance/queue.Ticket).
        queues = [p.queue.timeout for p in config.pools.values() if p.queue.timeout is not None]
        self.clock = Clock(tick_for(t.connect, t.server, t.client, t.header, t.keepalive, t.queue, *queues))
        # Persistence tables (client address -> server...) belong to the process, not to a
        # generation: a reload hands them to the new pools, so sessions survive it.
        self.tables = tables if tables is not None else Tables()
        self.current = Generation(config, self.tables, self.clock, self.spawn)
        self.clients: set[Client] = set()
        # Tasks exist only for new server connections; asyncio keeps tasks weakly, so we hold them.
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self.requests = 0
        #: The client connection cap in force (limits.max_connections, or derived from the fd
        #: limit by the runtime at start); 0 until then: no cap.
        self.max_connections = 0
        #: Keep-alive connections between requests, oldest idle first (insertion order: a
        #: connection leaves when its next request starts and comes back at the end). One dict
        #: store and one pop per request buy O(1) oldest-first eviction under pressure.
        self.idle: OrderedDict[IdleClient, None] = OrderedDict()
        self.clock.watch(IdleRelief(self))
        # Request ids: this process's random prefix + a counter, unique across restarts and
        # workers without coordination (nginx's $request_id is 32 random hex digits).
        self.id_prefix = os.urandom(3).hex()

    def evict_idle(self, n: int) -> int:
        """Close up to ``n`` idle keep-alive connections, oldest idle first (silently, as at
        keep-alive expiry: a client retries a request on a closed idle connection, RFC 9112
        §9.3.1). Returns how many were closed. The connection cap calls this at accept time."""
        idle = self.idle
        closed = 0
        while idle and closed < n:
            conn, _ = idle.popitem(last=False)
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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def __repr__(self) -> str:
        return f"<SwitchState clients={len(self.clients)} requests={self.requests} {self.current!r}>"
