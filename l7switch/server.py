"""Lifecycle, top to bottom: bind listeners -> serve -> (signal) stop accepting -> drain -> exit.

``Switch`` holds the state every connection shares: the config, the server pools, one
``ConnectionPool`` per real server, the set of client connections and the deadline clock.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .backends import Server, ServerPool
from .config import Config
from .frontend import ClientConnection
from .persistence import TableSweep
from .store import Tables
from .tls import server_context
from .upstream import ConnectionPool

log = logging.getLogger("l7switch")

# How long a graceful stop waits for in-flight requests (HAProxy's hard-stop-after has no
# default; 30 s matches Kubernetes' default termination grace period).
DEFAULT_GRACE = 30.0
# listen(2) backlog; HAProxy's default maxconn-derived backlog is in this range, and the
# kernel caps it at net.core.somaxconn anyway.
BACKLOG = 4096


class Clock:
    """One periodic sweep instead of a timer per request.

    Every watched object has a ``deadline`` (monotonic seconds, 0 = none) and
    ``on_deadline(now)``. The tick is a quarter of the shortest timeout, within [50 ms, 1 s],
    so deadlines fire at most ~25% late while costing O(connections) work per tick.
    """

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.watched: set[Any] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, obj: Any) -> None:
        self.watched.add(obj)

    def unwatch(self, obj: Any) -> None:
        self.watched.discard(obj)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        expired = [o for o in self.watched if 0.0 < o.deadline <= now]
        for obj in expired:
            obj.deadline = 0.0
            try:
                obj.on_deadline(now)
            except Exception:  # pragma: no cover - a bug in one connection must not stop the clock
                log.exception("deadline handler failed for %r", obj)


class Switch:
    def __init__(self, config: Config, tables: Tables | None = None) -> None:
        self.config = config
        # Persistence tables (client address -> server...): a reload hands the old switch's over,
        # so sessions survive it (store.py).
        self.tables = tables if tables is not None else Tables()
        self.pools: dict[str, ServerPool] = {
            name: ServerPool(spec, tables=self.tables) for name, spec in config.pools.items()}
        t = config.timeouts
        self.clock = Clock(max(0.05, min(1.0, min(t.connect, t.server, t.client, t.header) / 4)))
        self.clock.watch(TableSweep(self.tables, time.monotonic()))
        self.cpools: dict[Server, ConnectionPool] = {
            s: ConnectionPool(s, config.upstream.max_idle, config.upstream.idle_timeout, self.clock)
            for pool in self.pools.values() for s in pool.servers
        }
        self.clients: set[ClientConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[tuple[str, int]] = []
        self.draining = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # Tasks exist only for new server connections; asyncio keeps tasks weakly, so we hold them.
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            for lst in self.config.listeners:
                factory: Callable[[], asyncio.Protocol] = lambda: ClientConnection(self)  # noqa: E731
                tls: dict[str, Any] = {}
                if lst.mode == "tls-passthrough":
                    from .passthrough import PassthroughConnection
                    factory = lambda lst=lst: PassthroughConnection(self, lst)  # noqa: E731
                elif lst.tls is not None:
                    # One context per listener, built here once; the handshake must finish within
                    # the header timeout, as the request head must (slowloris on the handshake).
                    tls = {"ssl": server_context(lst.tls),
                           "ssl_handshake_timeout": self.config.timeouts.header}
                srv = await self.loop.create_server(
                    factory, lst.host, lst.port, backlog=BACKLOG, reuse_address=True, **tls)
                self.servers.append(srv)
                for sock in srv.sockets:
                    self.addresses.append(sock.getsockname()[:2])
        except BaseException:
            for srv in self.servers:
                srv.close()
            raise
        self.clock.start()
        for pool in self.pools.values():
            pool.scheduler.defer = self.defer_build

    def defer_build(self, build: Callable[[], Any], install: Callable[[Any], None]) -> None:
        """Build a scheduler table (Maglev, chash ring) in a worker thread, install it on the loop.

        The build is pure Python, so it still shares the GIL, but the interpreter hands the GIL
        back every 5 ms (sys.getswitchinterval), so the loop keeps serving instead of stalling for
        the whole build; the old table answers meanwhile.
        """
        fut = self.loop.run_in_executor(None, build)

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("scheduler table rebuild failed: %r", exc)
                return
            install(f.result())

        fut.add_done_callback(done)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), then close all."""
        self.draining = True
        for srv in self.servers:
            srv.close()
        for client in list(self.clients):
            client.shutdown()
        deadline = time.monotonic() + grace
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.abort()
        for cpool in self.cpools.values():
            cpool.close_all()
        self.clock.stop()
        for srv in self.servers:
            await srv.wait_closed()

    def snapshot(self) -> dict[str, Any]:
        """The one view of live state that tests, the admin CLI and the monitor read."""
        return {
            "listeners": [f"{h}:{p}" for h, p in self.addresses],
            "clients": len(self.clients),
            "pools": {name: pool.snapshot() for name, pool in self.pools.items()},
            "connection_pools": {s.address: c.snapshot() for s, c in self.cpools.items()},
        }

    def __repr__(self) -> str:
        return f"<Switch {self.addresses} pools={list(self.pools)} clients={len(self.clients)}>"


def raise_fd_limit() -> None:
    """Each proxied connection costs two fds; lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT, then stop accepting and finish in-flight requests."""
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_fd_limit()

    async def main() -> None:
        switch = Switch(config)
        await switch.start()
        for host, port in switch.addresses:
            log.info("l7switch listening on %s:%d (%s)", host, port, config.path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: no new connections, finishing %d in flight", len(switch.clients))
        await switch.stop()

    uvloop.run(main())
    return 0
