"""The switch's lifecycle, top to bottom: open listeners -> serve -> (signal) stop accepting ->
drain -> exit.

``Switch`` owns the listeners and the ``SwitchState`` every connection shares (proxy/state.py:
the current generation of rules and pools, the deadline clock, the client connections, the
persistence tables). Beside it: reload.py decides when to apply a new file (``Switch.apply``
makes it current), admin.py is ``l7switch ctl``'s side, and workers.py runs several of these
under one master.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from ..balance.persistence import SWEEP_INTERVAL
from ..balance.store import Tables
from ..checks.checker import HealthChecker, needs_checker, pool_deliver
from ..net.pipes import MAX_PIPES
from ..net.tls import server_context
from ..passthrough.connection import PassthroughConnection
from ..proxy.frontend import ClientConnection
from ..proxy.state import Generation, SwitchState
from ..spec import Config, ListenerSpec
from ..version import build
from ..monitor import Observers
from .admin import Admin, AdminServer, default_socket
from .listeners import Listener, Listeners
from .reload import Reloader

log = logging.getLogger("l7switch")

# How long a graceful stop waits for in-flight requests (HAProxy's hard-stop-after has no
# default; 30 s matches Kubernetes' default termination grace period).
DEFAULT_GRACE = 30.0
# fds the switch needs besides client and server connections, for the derived connection cap:
# listening sockets, the loop's own (epoll, signal pipe, libuv's spare fd for EMFILE), health
# checks and agents, log files, and the splice pipe pool (net/pipes.MAX_PIPES pipes, two fds
# each). HAProxy reserves similarly when it derives maxconn from ulimit-n (global.maxsock =
# maxconn * 2 + listeners + checks + pipes).
FD_RESERVE = 256 + 2 * MAX_PIPES


# How often pools look at time-driven state: ejections that end, slow start's ramp, queued
# requests a server could now take (HAProxy's slowstart recalculates its weight about as often).
POOL_TICK = 0.5


class ListenError(Exception):
    """A listener could not be opened; the message is one line an operator can act on."""


class Switch:
    def __init__(self, config: Config, tables: Tables | None = None,
                 inherited: dict[str, list[socket.socket]] | None = None, peers: int = 1) -> None:
        self.config = config
        #: Listening sockets opened by a master (runtime/workers.py), by "host:port" as written.
        self.inherited = inherited or {}
        #: ``peers``: the worker processes serving with this one (workers: N), 1 alone.
        self.state = SwitchState(config, tables, peers)
        state = self.state
        state.clock.every(SWEEP_INTERVAL, lambda now: state.tables.expire())
        state.clock.every(POOL_TICK, self._tick_pools)
        self.accept = Listeners()  # pauses and resumes at the connection cap (proxy/state.Accept)
        self._closed_servers: list[asyncio.Server] = []
        #: The admin socket when the file names none: "" (none) unless run() sets the default.
        self.default_admin = ""
        self.addresses: list[tuple[str, int]] = []
        #: Each listener spec's sockets, by (host, port) as written: what a reload compares.
        self.listening: dict[tuple[str, int], tuple[ListenerSpec, list[Listener]]] = {}
        # Active checks and agents; results go to the current generation's pools, so a reload
        # swaps pools under running checks.
        self.checker: HealthChecker | None = None
        self.reloader: Reloader | None = None  # set by run() (SIGHUP) when there is a file
        #: A worker: its master probes the servers and sends the results (runtime/workers.py).
        self.checks_elsewhere = False
        self.admin = Admin(self)  # the operations of ``l7switch ctl`` (runtime/admin.py)
        self.file_config = config  # the last configuration read from the file (ctl's changes apart)
        self.admin_server: AdminServer | None = None
        #: The monitor and /metrics (monitor/); a worker leaves them to its master.
        self.observers = Observers(self.admin)
        self.observe = True

    def _tick_pools(self, now: float) -> None:
        """``ServerPool.tick`` for the current pools (ejections ending, slow start, queues)."""
        for pool in self.state.current.pools.values():
            pool.tick(now)

    # ---- the shared state, as tests, the admin CLI and the monitor read it -------------------------
    @property
    def current(self) -> Generation:
        return self.state.current

    @property
    def pools(self) -> dict[str, Any]:
        return self.state.current.pools

    @property
    def tables(self) -> Tables:
        return self.state.tables

    @property
    def clients(self) -> set[Any]:
        return self.state.clients

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open every listener (all or none: one that fails closes those already open)."""
        loop = asyncio.get_running_loop()
        self.state.loop = loop
        try:
            for spec in self.config.listeners:
                opened = await self._listen(spec)
                self.listening[(spec.host, spec.port)] = (spec, opened)
                for listener in opened:
                    self.addresses.append(listener.sock.getsockname()[:2])
        except BaseException:
            self.accept.close()
            self.accept = Listeners()
            raise
        self._set_cap()
        await self._open_admin()
        if self.observe:
            try:
                await self.observers.start(self.config)
            except OSError as exc:
                await self.observers.stop()
                self.accept.close()
                self.accept = Listeners()
                if self.admin_server is not None:
                    await self.admin_server.stop()
                raise ListenError(f"cannot open the monitor or metrics listener: {_why(exc)}") from None
        self.state.accept = self.accept
        self.state.clock.start()
        self.state.current.defer_builds(self.defer_build)
        self._start_checks(self.config)

    def _start_checks(self, config: Config) -> None:
        """Active checks and agents of ``config``'s pools, delivered to the current generation
        (unless a master probes for this worker)."""
        if needs_checker(config.pools) and not self.checks_elsewhere:
            self.checker = HealthChecker(pool_deliver(lambda: self.state.current.pools))
            self.checker.start(config.pools)

    async def _open_admin(self) -> None:
        """The admin socket: one the file names must open (else the switch does not start, as
        for a listener); the default one (config.admin.socket None, filled in by run()) is
        skipped with a warning when another switch holds it."""
        spec = self.config.admin
        path = spec.socket if spec.socket is not None else self.default_admin
        if not path:
            return
        server = AdminServer(self.admin, path, spec.mode)
        try:
            await server.start()
        except OSError as exc:
            why = exc.strerror.lower() if exc.strerror else str(exc)
            if spec.socket is None:
                log.warning("no admin socket %s: %s", path, why)
                return
            self.accept.close()
            raise ListenError(f"cannot open admin socket {path}: {why}") from None
        self.admin_server = server
        log.info("admin socket %s (l7switch ctl)", path)

    def _set_cap(self) -> None:
        cap = self.config.limits.max_connections
        if cap is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            cap = derived_cap(nofile, self.config)
            log.info("connection cap %d, derived from the fd limit %d (limits.max_connections: auto)",
                     cap, nofile)
        self.state.set_cap(cap)

    def _factory(self, lst: ListenerSpec, config: Config) -> tuple[Callable[[], asyncio.Protocol], dict[str, Any]]:
        """What a listener's accepted connections become, and its TLS settings."""
        state = self.state
        factory: Callable[[], asyncio.Protocol]
        tls: dict[str, Any] = {}
        if lst.mode == "tls-passthrough":
            factory = lambda: PassthroughConnection(state, lst)  # noqa: E731
        else:
            factory = lambda: ClientConnection(state, lst)  # noqa: E731
            if lst.tls is not None:
                # One context per listener, built here once; the handshake must finish within
                # the header timeout, as the request head must (slowloris on the handshake).
                tls = {"ssl": server_context(lst.tls), "ssl_handshake_timeout": config.timeouts.header}
        return factory, tls

    async def _listen(self, lst: ListenerSpec, config: Config | None = None) -> list[Listener]:
        factory, tls = self._factory(lst, config or self.config)
        socks = self.inherited.get(f"{lst.host}:{lst.port}")
        if socks is not None:
            return await self.accept.adopt(socks, factory, tls)
        try:
            return await self.accept.open(lst.host, lst.port, factory, tls)
        except OSError as exc:
            raise ListenError(f"cannot listen on {lst.address}: {_why(exc)}") from None

    # ---- reload (runtime/reload.py decides when; this applies) ----------------------------------------
    async def apply(self, config: Config) -> dict[str, Any]:
        """``config`` as read from the file, with what ctl added or removed laid over it."""
        changes = await self._apply(self.admin.overlay(config))
        self.file_config = config  # (only once applied: ctl's next change starts from it)
        return changes

    async def _apply(self, config: Config) -> dict[str, Any]:
        """Make ``config`` current, whole or not at all: new listeners are opened first (one
        that cannot be raises ListenError and nothing changes); then new requests use the new
        rules and pools while those in flight finish on theirs; servers kept (same pool, name
        and address) keep their state and warm connections; listeners whose settings changed
        take the new ones on the same socket (the backlog waits meanwhile, nothing is
        refused); removed listeners close; checks restart on the new pools. Returns what
        changed, for the log line and ``ctl``."""
        old_keys = set(self.listening)
        new_specs = {(lst.host, lst.port): lst for lst in config.listeners}
        opened: dict[tuple[str, int], list[Listener]] = {}
        try:
            for key, spec in new_specs.items():
                if key not in old_keys:
                    opened[key] = await self._listen(spec, config)
            plan = await self.observers.prepare(config) if self.observe else None
        except OSError as exc:  # (the monitor's or /metrics')
            for listeners in opened.values():
                self.accept.drop(listeners)
            raise ListenError(f"cannot open the monitor or metrics listener: {_why(exc)}") from None
        except BaseException:
            for listeners in opened.values():
                self.accept.drop(listeners)
            raise
        # From here on nothing fails: the switch changes in one loop turn.
        old, kept = self.state.reconfigure(config)
        self.config = config
        self.state.current.defer_builds(self.defer_build)
        changed, closed = [], []
        for key, spec in new_specs.items():
            if key in opened:
                self.listening[key] = (spec, opened[key])
                continue
            prev_spec, listeners = self.listening[key]
            if prev_spec != spec:
                factory, tls = self._factory(spec, config)
                self.accept.replace(listeners, factory, tls)
                changed.append(spec.address)
            self.listening[key] = (spec, listeners)
        for key in old_keys - set(new_specs):
            spec, listeners = self.listening.pop(key)
            self.accept.drop(listeners)
            closed.append(spec.address)
        self.addresses = [lst.sock.getsockname()[:2] for _, ls in self.listening.values() for lst in ls]
        self._set_cap()  # (auto: the servers may have changed; a number: the same or the new one)
        if self.checker is not None:
            await self.checker.stop()
            self.checker = None
        self._start_checks(config)
        if plan is not None:
            self.observers.commit(plan)
        asyncio.get_running_loop().call_later(config.hard_stop_after, self._cut, old)
        return {"opened": [new_specs[k].address for k in opened], "changed": changed, "closed": closed,
                "pools": sorted(self.state.current.pools), "kept_servers": kept}

    def _cut(self, old: Generation) -> None:
        """hard_stop_after a reload: connections still serving a request (or a tunnel) of the
        replaced configuration are cut; keep-alive clients between requests are not affected."""
        stale = [c for c in list(self.state.clients)
                 if isinstance(c, ClientConnection) and c.exchange is not None and c.exchange.gen is old]
        if stale:
            log.warning("hard_stop_after %gs: cutting %d connection%s still on the configuration "
                        "replaced by a reload", self.config.hard_stop_after, len(stale),
                        "" if len(stale) == 1 else "s")
        for client in stale:
            client.abort()

    def defer_build(self, build: Callable[[], Any], install: Callable[[Any], None]) -> None:
        """Build a scheduler table (Maglev, chash ring) in a worker thread, install it on the loop.

        The build is pure Python, so it still shares the GIL, but the interpreter hands the GIL
        back every 5 ms (sys.getswitchinterval), so the loop keeps serving instead of stalling for
        the whole build; the old table answers meanwhile.
        """
        loop = self.state.loop
        assert loop is not None
        fut = loop.run_in_executor(None, build)

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("scheduler table rebuild failed: %r", exc)
                return
            install(f.result())

        fut.add_done_callback(done)

    async def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), then close all."""
        state = self.state
        state.draining = True
        await self.observers.stop()
        if self.admin_server is not None:
            await self.admin_server.stop()
        if self.checker is not None:
            await self.checker.stop()
        self._closed_servers = self.accept.close()
        # A connection accepted in the loop turn that closed the listeners has its
        # connection_made still to come: let it run, so the connection is counted and answered
        # rather than closed unread with the loop (a worker replaced by a reload met this).
        await asyncio.sleep(0.01)
        for client in list(state.clients):
            client.shutdown()
        deadline = time.monotonic() + grace
        while state.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for client in list(state.clients):
            client.abort()
        state.current.close()
        state.clock.stop()
        if state.access is not None:
            await asyncio.to_thread(state.access.close)  # what is buffered reaches the file
        for server in self._closed_servers:
            await server.wait_closed()

    def snapshot(self, connections: bool = False) -> dict[str, Any]:
        """The one view of live state that tests, the admin CLI and the monitor read.
        ``connections``: also each client connection and the exchange it serves (its phase)."""
        snap: dict[str, Any] = {
            "listeners": [f"{h}:{p}" for h, p in self.addresses],
            "clients": len(self.state.clients),
            "requests": self.state.requests,
            "protection": {**self.state.snapshot(), **self.accept.snapshot()},
            "access_log": self.state.access.snapshot() if self.state.access is not None else None,
            **self.state.current.snapshot(),
        }
        if self.checker is not None:
            snap["checks"] = self.checker.snapshot()
        if self.reloader is not None:
            snap["reload"] = self.reloader.snapshot()
        if connections:
            snap["connections"] = [c.snapshot() for c in list(self.state.clients)]
        return snap

    def __repr__(self) -> str:
        return f"<Switch {self.addresses} pools={list(self.pools)} clients={len(self.state.clients)}>"


def _why(exc: OSError) -> str:
    """"address already in use", in the words operators know from other servers' logs."""
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    text = str(exc)
    return text.rpartition("): ")[2] or text  # uvloop: "error while attempting to bind on address (...): ..."


def derived_cap(nofile: int, config: Config) -> int:
    """``limits.max_connections: auto``: (nofile - FD_RESERVE - idle server connections) // 2.

    Each client connection may hold a server connection too (a spliced body or tunnel borrows a
    pipe from a small pool, and falls back to copying when none is free, so it needs no more);
    the idle keep-alive connections the upstream pools may keep (upstream.max_idle per server)
    hold fds without a client. HAProxy derives maxconn from ulimit-n the same way, about
    (ulimit-n - reserved) / 2. Never less than a quarter of the fds."""
    servers = sum(len(p.servers) + len(p.backup) for p in config.pools.values())
    room = nofile - FD_RESERVE - config.upstream.max_idle * servers
    return max(room // 2, nofile // 4, 1)


def raise_fd_limit() -> int:
    """Each proxied connection costs two fds (a spliced body borrows a pooled pipe only while it
    moves bytes): lift the soft limit to the hard one, as HAProxy does at start-up. Returns the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def run(config: Config, log_level: str = "info", inherited: dict[str, list[socket.socket]] | None = None,
        worker: int | None = None, peers: int = 1) -> int:
    """Serve until SIGTERM/SIGINT, then stop accepting and finish in-flight requests.
    Returns the exit status: 0, or 1 when a listener cannot be opened (one line on stderr).
    ``log_level``: the event log's (stderr) threshold: debug, info, warning or error.
    ``inherited``/``worker``/``peers``: worker ``worker`` of ``peers`` (runtime/workers.py), on its
    master's sockets."""
    import uvloop

    tag = f"w{worker} " if worker is not None else ""
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format=f"%(asctime)s %(levelname)s {tag}%(message)s")
    raise_fd_limit()

    async def main() -> int:
        switch = Switch(config, inherited=inherited, peers=peers)
        if worker is None:
            switch.default_admin = default_socket()
        else:
            switch.checks_elsewhere = bool(config.admin.socket)  # (no socket: it probes itself)
            switch.observe = False  # the master runs the monitor and /metrics
        try:
            await switch.start()
        except ListenError as exc:
            log.error("%s", exc)
            return 1
        for host, port in switch.addresses:
            log.info("l7switch %s listening on %s:%d (%s)", build(), host, port, config.path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # logrotate moved the file: write a new one (nginx -s reopen); the log in force, which a
        # reload may have replaced
        loop.add_signal_handler(signal.SIGUSR1,
                                lambda: switch.state.access.reopen() if switch.state.access else None)
        if not config.path.startswith("<"):
            reloader = Reloader(config.path, switch.apply)
            switch.reloader = reloader
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
        await stop.wait()
        log.info("stopping: no new connections, finishing %d in flight", len(switch.clients))
        await switch.stop(switch.config.hard_stop_after)
        return 0

    return uvloop.run(main())

