"""tls-passthrough listeners: route a TLS connection on its ClientHello, then relay bytes untouched.

The switch never decrypts: it buffers the client's first bytes until the ClientHello parses
(tlshello.py), picks a pool by SNI (exact names first, then ``*.domain`` entries in file order,
then the listener's ``default_pool``), picks a server (ssl_session persistence first, then the
pool's scheduler), writes the buffered hello to it and hands both directions to the tunnel
(tunnel.py: splice, or a relay through Python with backpressure where splice is off).

There is no HTTP status on a TLS port: a bad, slow or unroutable hello gets at most a fatal TLS
alert (RFC 8446 §6) and the connection is closed. A refused connect is retried once on another
server, as relay.py's redispatch does; nothing has been sent to a server that refused.

ssl_session persistence (TLS ≤ 1.2 only; notes/peers.md §2.3) watches the server's bytes until
its ServerHello and remembers session ID -> server, so a client resuming that session by ID
returns to the one server that can resume it. A TLS 1.3 ServerHello stores nothing: its
legacy_session_id is a random echo and resumption there uses PSK tickets, which no server-side
table can see.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

from .flow import PEER_FULL, WAITING, FlowControl, run_drain_waiters
from .persistence import REFUSE, STICK
from .tlshello import (ALERT_INTERNAL_ERROR, ALERT_UNRECOGNIZED_NAME, CLIENT_HELLO, MAX_HELLO,
                       NEED_MORE, SERVER_HELLO, BadHello, ClientHello, HelloReader, ServerHello, alert)
from .tunnel import (CLOSED, CONNECTING, HELLO, RELAY, SPLICE, STATE_NAMES, TO_SERVER, ServerSide,
                     TunnelEnds)
from .upstream import set_nodelay

if TYPE_CHECKING:
    from .backends import Server, ServerPool
    from .config import ListenerSpec
    from .server import Switch
    from .splice import SpliceJob
    from .persistence import Persistence

log = logging.getLogger("l7switch.passthrough")


@functools.lru_cache(maxsize=64)
def sni_router(listener: ListenerSpec) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """Exact names as a dict; the ``*.domain`` entries as (".domain", pool) in file order.
    Built once per listener (ListenerSpec is frozen, hence hashable), not per connection."""
    exact: dict[str, str] = {}
    for name, pool in listener.sni:
        if not name.startswith("*."):
            exact.setdefault(name.lower(), pool)  # the first entry for a name wins
    wild = tuple((n[1:].lower(), p) for n, p in listener.sni if n.startswith("*."))
    return exact, wild


def route_sni(listener: ListenerSpec, sni: str | None) -> str | None:
    """The pool for a host name: exact match, then the first matching ``*.domain`` (any depth
    of subdomain but not the apex, like rules.py's host match), then the default (may be None)."""
    if sni is not None:
        exact, wild = sni_router(listener)
        pool = exact.get(sni)
        if pool is not None:
            return pool
        for suffix, pool in wild:
            if sni.endswith(suffix):
                return pool
    return listener.default_pool


class PassthroughConnection(TunnelEnds, asyncio.Protocol):
    """The client side of one passthrough connection; it owns the server side (``ServerSide``)."""

    __slots__ = ("switch", "listener", "transport", "flow", "peer_ip", "deadline", "state", "reader",
                 "pool", "server", "persist", "named", "sticky_key", "key", "attempts", "up", "pending",
                 "server_reader", "done", "eof_early", "jobs", "drain_waiters", "closed")

    def __init__(self, switch: Switch, listener: ListenerSpec) -> None:
        self.switch = switch
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.peer_ip = ""
        self.deadline = 0.0
        self.state = HELLO
        self.reader = HelloReader(CLIENT_HELLO)
        self.pool: ServerPool | None = None
        self.server: Server | None = None  # counted in flight (pool.begin) while set
        self.persist: Persistence | None = None  # the pool's persistence (persistence.py), if any
        self.named: Server | None = None  # the server the session belongs to (up or not)
        self.sticky_key: str | None = None  # the table key the choice is recorded under
        self.key: str | None = None
        self.attempts = 0
        self.up: ServerSide | None = None
        self.pending: list[bytes] = []  # client bytes held until the server connection is up
        self.server_reader: HelloReader | None = None  # watching for the ServerHello
        self.done = 0  # TO_SERVER | TO_CLIENT once each direction's EOF is passed on
        self.eof_early = False  # the client half-closed before the server connection was up
        self.jobs: list[SpliceJob] = []
        self.drain_waiters: list = []
        self.closed = False

    # ---- asyncio.Protocol (client side) --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(transport)  # type: ignore[arg-type]
        set_nodelay(transport)  # the handshake is a ping-pong of small writes
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.switch.clients.add(self)  # type: ignore[arg-type]
        if self.switch.draining:
            self.close()
            return
        self.deadline = time.monotonic() + self.switch.config.timeouts.header
        self.switch.clock.watch(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == HELLO:
            try:
                hello = self.reader.feed(data)
            except BadHello as exc:
                self.refuse(exc.reason, exc.alert)
                return
            if hello is not NEED_MORE:
                assert isinstance(hello, ClientHello)
                self.route(hello)
        elif state == CONNECTING:
            # Reading is paused (WAITING); should a read slip through anyway (uvloop does not
            # honour every pause, uvloop-proxy.md §0), hold it behind the hello, bounded.
            self.pending.append(data)
            if sum(map(len, self.pending)) > 2 * MAX_HELLO:
                self.abort()
        elif state in (RELAY, SPLICE) and self.up is not None:
            # In SPLICE the jobs start only once both write buffers are empty, so order holds.
            self.up.write(data)

    def eof_received(self) -> bool | None:
        if self.state == HELLO:
            return None  # gone before finishing its hello: close
        if self.state == CONNECTING:
            self.eof_early = True
        else:
            self.pass_eof(TO_SERVER)
        return True  # keep our write side open for what the server still sends

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state = CLOSED
        self.switch.clock.unwatch(self)
        self.switch.clients.discard(self)  # type: ignore[arg-type]
        self.release()
        for job in self.jobs:
            job.cancel()
        up = self.up
        if up is not None:
            up.close(abort=exc is not None)

    def pause_writing(self) -> None:
        self.flow.writable = False
        if self.up is not None:
            self.up.flow.pause_reading(PEER_FULL)

    def resume_writing(self) -> None:
        self.flow.writable = True
        if self.up is not None:
            self.up.flow.resume_reading(PEER_FULL)
        run_drain_waiters(self)

    # ---- routing and connecting ----------------------------------------------------------------
    def route(self, hello: ClientHello) -> None:
        pool_name = route_sni(self.listener, hello.sni)
        if pool_name is None:
            self.refuse(f"no pool for server name {hello.sni!r}", ALERT_UNRECOGNIZED_NAME)
            return
        pool = self.pool = self.switch.pools[pool_name]
        self.deadline = 0.0  # the connect timeout takes over; tunnels have no idle timeout
        self.flow.pause_reading(WAITING)
        self.pending = [bytes(self.reader.raw)]
        self.state = CONNECTING
        server: Server | None = None
        persist = self.persist = pool.hello_persistence
        if persist is not None:
            # The same verdicts as HTTP persistence (relay.py): the session's server while it
            # is up (quiesced too), else the scheduler, or nothing with redispatch: false.
            if persist.learns_sessions:
                self.server_reader = HelloReader(SERVER_HELLO)
            self.named, self.sticky_key = persist.hello_sticky(hello.session_id, self.peer_ip)
            verdict = persist.verdict(self.named)
            if verdict == REFUSE:
                assert self.named is not None
                self.refuse(f"server {self.named.name} holding this TLS session is down and "
                            "redispatch is off", ALERT_INTERNAL_ERROR)
                return
            if verdict == STICK:
                server = self.named
        if server is None:
            # Keyed schedulers hash what a TLS hello can offer: the SNI for hash_key host, the
            # client address for source; any other key is absent and the pick goes by load.
            hash_key = pool.scheduler.opts.get("hash_key")
            self.key = hello.sni if hash_key == "host" else self.peer_ip if hash_key == "source" else None
            server = pool.pick(self.key)
        if server is None:
            self.refuse(f"pool {pool.name}: no server available", ALERT_INTERNAL_ERROR)
            return
        if persist is not None:
            persist.after_pick(server, self.sticky_key)
        self.use(server)

    def use(self, server: Server) -> None:
        assert self.pool is not None
        self.server = server
        self.pool.begin(server)  # in flight for the connection's whole life
        self.switch.spawn(self.connect(server))

    async def connect(self, server: Server) -> None:
        self.attempts += 1
        loop = self.switch.loop
        try:
            _, side = await asyncio.wait_for(
                loop.create_connection(lambda: ServerSide(self, server), server.host, server.port),
                self.switch.config.timeouts.connect)
        except Exception as exc:  # never leave a client hanging, whatever went wrong
            if not isinstance(exc, OSError):  # (asyncio.TimeoutError is an OSError since 3.11)
                log.exception("connect to %s failed", server.address)
            self.connect_failed(server, exc)
            return
        if self.closed:
            side.close(abort=True)
            return
        self.up = side
        side.write_many(self.pending)
        self.pending = []
        if self.eof_early:
            self.pass_eof(TO_SERVER)
        if self.server_reader is None:
            self.start_splice()
        else:
            self.state = RELAY  # through Python until the ServerHello has gone by
            self.flow.resume_reading(WAITING)

    def connect_failed(self, server: Server, exc: BaseException) -> None:
        server.failures += 1
        if self.closed:
            return
        assert self.pool is not None
        self.release()
        timed_out = isinstance(exc, TimeoutError)
        why = "timed out" if timed_out else f"failed: {exc}"
        persist = self.persist
        # As relay.py: only a refusal is retried (nothing was sent), once; a sticky server is
        # left only when the pool's persistence allows redispatch (HAProxy option redispatch).
        if (isinstance(exc, OSError) and not timed_out and self.attempts < 2
                and (persist is None or persist.may_leave(self.named, server))):
            other = self.pool.pick(self.key, exclude=server)
            if other is not None:
                if persist is not None:
                    persist.after_pick(other, self.sticky_key)
                self.use(other)
                return
        self.refuse(f"connect to {server.address} {why}", ALERT_INTERNAL_ERROR)

    def release(self) -> None:
        if self.server is not None and self.pool is not None:
            self.pool.end(self.server)
            self.server = None

    # ---- the tunnel ----------------------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        reader = self.server_reader
        if reader is None:
            return
        try:
            hello = reader.feed(data)
        except BadHello as exc:
            log.debug("no session learnt from %s: %s", self.server, exc.reason)
            hello = None
        if hello is NEED_MORE:
            return
        self.server_reader = None
        if isinstance(hello, ServerHello):
            self.learn_session(hello)
        if self.state == RELAY:
            self.start_splice()

    def learn_session(self, hello: ServerHello) -> None:
        persist, up = self.persist, self.up
        if persist is None or up is None:
            return
        if hello.session_id and not hello.tls13:  # TLS 1.3's legacy ID is a random echo
            persist.learn(hello.session_id, up.server)  # type: ignore[attr-defined]

    # ---- called by the clock and the switch ----------------------------------------------------
    def on_deadline(self, now: float) -> None:
        if self.state == HELLO:
            self.refuse("no ClientHello within timeouts.header", None)

    def shutdown(self) -> None:
        """Graceful stop: a connection still in its hello goes now; tunnels finish on their own."""
        if self.state == HELLO:
            self.close()

    def refuse(self, reason: str, alert_code: int | None) -> None:
        log.debug("passthrough %s refused: %s", self.peer_ip, reason)
        self.state = CLOSED
        t = self.transport
        if alert_code is not None and t is not None and not t.is_closing():
            t.write(alert(alert_code))
        self.close()

    def __repr__(self) -> str:
        state = STATE_NAMES[self.state]
        return f"<PassthroughConnection {self.peer_ip} {state} server={self.up and self.up.server.name}>"
