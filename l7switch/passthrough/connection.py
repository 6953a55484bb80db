"""tls-passthrough listeners: route a TLS connection on its ClientHello, then relay bytes untouched.

The switch never decrypts: it buffers the client's first bytes until the ClientHello parses
(tlshello.py), picks a pool by SNI (sni.py), picks a server (balance/dispatch.py: ssl_session or
source persistence first, then the pool's scheduler), writes the buffered hello to it and hands
both directions to a ``Tunnel`` (net/tunnel.py: splice, or a relay through Python where splice is
off or while the ServerHello is still to be read).

There is no HTTP status on a TLS port: a bad, slow or unroutable hello gets at most a fatal TLS
alert (RFC 8446 §6) and the connection is closed. A refused connect is retried once on another
server, as for HTTP; nothing has been sent to a server that refused.

ssl_session persistence (TLS ≤ 1.2 session IDs, RFC 5246 §7.4.1.2) watches the server's bytes
until its ServerHello and remembers session ID -> server, so a client resuming that session by ID
returns to the one server that can resume it. A TLS 1.3 ServerHello stores nothing: its
legacy_session_id is a random echo and resumption there uses PSK tickets (RFC 8446 §2.2), which
no table outside the server can see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import IntEnum
from typing import Any, cast

from ..balance.dispatch import Wait, choose, choose_again, unavailable
from ..balance.persistence import Persistence
from ..balance.pool import ServerPool
from ..balance.servers import Server
from ..net.flow import WAITING, FlowControl
from ..net.ratelog import fd_exhausted, fd_log
from ..net.tunnel import TO_CLIENT, TO_SERVER, Tunnel
from ..proxy.state import SwitchState
from ..spec import ListenerSpec
from .sni import route_sni
from .tlshello import (ALERT_INTERNAL_ERROR, ALERT_UNRECOGNIZED_NAME, CLIENT_HELLO, MAX_HELLO, NEED_MORE,
                       SERVER_HELLO, BadHello, ClientHello, HelloReader, ServerHello, alert)

log = logging.getLogger("l7switch.passthrough")


class Phase(IntEnum):
    HELLO = 0  # reading the ClientHello (within timeouts.header)
    CONNECTING = 1  # a server is chosen; its connection is being opened
    RELAY = 2  # the tunnel relays through Python (splice off, or the ServerHello is awaited)
    SPLICE = 3  # the tunnel splices both directions
    CLOSED = 4


HELLO, CONNECTING, RELAY, SPLICE, CLOSED = Phase


class PassthroughConnection(asyncio.Protocol):
    """The client side of one passthrough connection; it owns the server side (``ServerSide``)."""

    __slots__ = ("switch", "listener", "transport", "flow", "peer_ip", "deadline", "phase", "reader",
                 "pool", "server", "persist", "named", "sticky_key", "key", "attempts", "up", "pending",
                 "server_reader", "eof_early", "tunnel", "closed", "guard_key")

    def __init__(self, switch: SwitchState, listener: ListenerSpec) -> None:
        self.switch = switch
        self.listener = listener
        switch.traffic_of(listener.address).connections += 1
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in connection_made
        self.peer_ip = ""
        self.deadline = 0.0
        self.phase = HELLO
        self.reader = HelloReader(CLIENT_HELLO)
        self.pool: ServerPool | None = None
        self.server: Server | None = None  # counted in flight (pool.begin) while set
        self.persist: Persistence | None = None  # the pool's persistence, if any
        self.named: Server | None = None  # the server the session belongs to (up or not)
        self.sticky_key: str | None = None  # the table key the choice is recorded under
        self.key: str | None = None
        self.attempts = 0
        self.up: ServerSide | None = None
        self.pending: list[bytes] = []  # client bytes held until the server connection is up
        self.server_reader: HelloReader | None = None  # watching for the ServerHello
        self.eof_early = False  # the client half-closed before the server connection was up
        self.tunnel: Tunnel | None = None
        self.closed = False
        self.guard_key: str | None = None  # counted under this per-client key (limits.per_client)

    # ---- asyncio.Protocol (client side) --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.flow = FlowControl(t)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        admitted, self.guard_key = self.switch.client_in(self, self.peer_ip)
        if not admitted:  # over its client's connection limit: closed before its hello is read
            self.phase = CLOSED
            t.close()
            return
        if self.switch.draining:
            self.close()
            return
        self.deadline = time.monotonic() + self.switch.current.timeouts.header
        self.switch.clock.watch(self)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == HELLO:
            try:
                hello = self.reader.feed(data)
            except BadHello as exc:
                self.refuse(exc.reason, exc.alert)
                return
            if hello is not NEED_MORE:
                assert isinstance(hello, ClientHello)
                self.route(hello)
        elif phase == CONNECTING:
            # Reading is paused (WAITING); should a read slip through anyway (uvloop does not
            # honour a pause issued in some states), hold it behind the hello, bounded.
            self.pending.append(data)
            if sum(map(len, self.pending)) > 2 * MAX_HELLO:
                self.abort()
        elif self.tunnel is not None:
            # While splicing, the jobs start only once both write buffers are empty: order holds.
            self.tunnel.to_server(data)

    def eof_received(self) -> bool | None:
        if self.phase == HELLO:
            return None  # gone before finishing its hello: close
        if self.phase == CONNECTING:
            self.eof_early = True
            return True
        if self.tunnel is not None:
            return self.tunnel.eof(TO_SERVER)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.phase = CLOSED
        sw = self.switch
        sw.clock.unwatch(self)
        key, self.guard_key = self.guard_key, None
        sw.client_out(self, key)
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.lost(exc)
        elif self.up is not None:
            self.up.close(abort=exc is not None)
        self.release()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # ---- routing and connecting ----------------------------------------------------------------
    def route(self, hello: ClientHello) -> None:
        gen = self.switch.current
        pool_name = route_sni(self.listener, hello.sni)
        if pool_name is None:
            self.refuse(f"no pool for server name {hello.sni!r}", ALERT_UNRECOGNIZED_NAME)
            return
        pool = self.pool = gen.pools[pool_name]
        self.deadline = 0.0  # the connect timeout takes over; then timeouts.tunnel (net/tunnel.py)
        self.flow.pause_reading(WAITING)
        self.pending = [bytes(self.reader.raw)]
        self.phase = CONNECTING
        persist = self.persist = pool.hello_persistence
        if persist is not None:
            if persist.learns_sessions:
                self.server_reader = HelloReader(SERVER_HELLO)
            self.named, self.sticky_key = persist.hello_sticky(hello.session_id, self.peer_ip)
        # Keyed schedulers hash what a TLS hello can offer: the SNI for hash_key host, the
        # client address for source; any other key is absent and the pick goes by load.
        hash_key = pool.scheduler.opts.get("hash_key")
        self.key = hello.sni if hash_key == "host" else self.peer_ip if hash_key == "source" else None
        # Connections are not queued: maxconn applies to HTTP requests (queue=False).
        choice = choose(pool, self.key, persist, self.named, self.sticky_key, queue=False)
        if isinstance(choice, Wait):  # (never with queue=False)
            choice = unavailable(pool)
        if isinstance(choice, str):
            self.refuse(choice, ALERT_INTERNAL_ERROR)
            return
        self.use(choice)

    def use(self, server: Server) -> None:
        assert self.pool is not None
        self.server = server
        self.pool.begin(server)  # in flight for the connection's whole life
        self.switch.spawn(self.connect(server))

    async def connect(self, server: Server) -> None:
        self.attempts += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.switch.current.timeouts.connect):  # (no extra Task)
                _, side = await loop.create_connection(lambda: ServerSide(self, server), server.host,
                                                       server.port)
        except Exception as exc:  # never leave a client hanging, whatever went wrong
            if not isinstance(exc, OSError):  # (asyncio.TimeoutError is an OSError since 3.11)
                log.exception("connect to %s failed", server.address)
            self.connect_failed(server, exc)
            return
        if self.closed:
            side.close(abort=True)
            return
        assert side.flow is not None
        self.up = side
        tunnel = self.tunnel = Tunnel(loop, self.flow, side.flow, self.tunnel_ended, self.switch.clock,
                                      self.switch.current.timeouts.tunnel)
        side.tunnel = tunnel
        tunnel.to_server(b"".join(self.pending))
        self.pending = []
        if self.eof_early:
            tunnel.eof(TO_SERVER)
        if self.server_reader is None:
            self.start_splice()
        else:
            self.phase = RELAY  # through Python until the ServerHello has gone by
            tunnel.relay()

    def connect_failed(self, server: Server, exc: BaseException) -> None:
        if fd_exhausted(exc):
            # Our fds ran out, not the server: no failure against it, no other server tried
            # (it would fail alike), and one log line a second at most.
            self.release()
            fd_log.warning("passthrough %s: connect to %s: %s", self.peer_ip, server.address,
                           getattr(exc, "strerror", exc))
            if not self.closed:
                self.refuse("out of file descriptors", ALERT_INTERNAL_ERROR)
            return
        server.failures += 1
        if self.closed:
            return
        assert self.pool is not None
        self.release()
        timed_out = isinstance(exc, TimeoutError)
        why = f"connect to {server.address} " + ("timed out" if timed_out else f"failed: {exc}")
        self.pool.failed(server, why)
        if isinstance(exc, OSError):  # refused or timed out: nothing reached the server
            choice = choose_again(self.pool, self.key, self.persist, self.named, self.sticky_key,
                                  server, self.attempts)
            if not isinstance(choice, str):
                self.use(choice)
                return
            why += f"; {choice}"
        self.refuse(why, ALERT_INTERNAL_ERROR)

    def release(self) -> None:
        if self.server is not None and self.pool is not None:
            self.pool.end(self.server)
            self.server = None

    # ---- the tunnel ----------------------------------------------------------------------------
    def start_splice(self) -> None:
        assert self.tunnel is not None
        if self.switch.current.splice.enabled and self.tunnel.splice():
            self.phase = SPLICE
        else:
            self.phase = RELAY
            self.tunnel.relay()

    def from_server(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.to_client(data)
        elif self.transport is not None and not self.transport.is_closing():
            # The server spoke before our connect() returned (nothing in TLS does, but a byte
            # stream owes nothing to TLS): pass it on all the same.
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
        if self.phase == RELAY:
            self.start_splice()

    def learn_session(self, hello: ServerHello) -> None:
        persist, up = self.persist, self.up
        if persist is None or up is None:
            return
        if hello.session_id and not hello.tls13 and hasattr(persist, "learn"):
            persist.learn(hello.session_id, up.server)  # TLS 1.3's legacy ID is a random echo

    def tunnel_ended(self) -> None:
        self.phase = CLOSED
        self.release()

    # ---- called by the clock and the switch ----------------------------------------------------
    def on_deadline(self, now: float) -> None:
        if self.phase == HELLO:
            self.refuse("no ClientHello within timeouts.header", None)

    def shutdown(self) -> None:
        """Graceful stop: a connection still in its hello goes now; tunnels finish on their own."""
        if self.phase == HELLO:
            self.close()

    def refuse(self, reason: str, alert_code: int | None) -> None:
        log.debug("passthrough %s refused: %s", self.peer_ip, reason)
        self.phase = CLOSED
        t = self.transport
        if alert_code is not None and t is not None and not t.is_closing():
            t.write(alert(alert_code))
        self.close()

    def close(self) -> None:
        """Close both sides, sending what their write buffers still hold."""
        self.deadline = 0.0
        if self.tunnel is not None:
            self.tunnel.close()
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.up is not None:
            self.up.close()

    def abort(self) -> None:
        self.deadline = 0.0
        if self.tunnel is not None:
            self.tunnel.abort()
            return
        if self.transport is not None:
            self.transport.abort()
        if self.up is not None:
            self.up.close(abort=True)

    def snapshot(self) -> dict[str, Any]:
        return {"peer": self.peer_ip, "state": self.phase.name.lower(),
                "pool": self.pool.name if self.pool is not None else None,
                "server": self.up.server.name if self.up is not None else None,
                "tunnel": repr(self.tunnel) if self.tunnel is not None else None}

    def __repr__(self) -> str:
        server = self.up.server.name if self.up is not None else None
        return f"<PassthroughConnection {self.peer_ip} {self.phase.name.lower()} server={server}>"


class ServerSide(asyncio.Protocol):
    """The server end of a passthrough connection: what it reads goes to the client end (which
    watches for the ServerHello), its EOF and loss to the tunnel."""

    __slots__ = ("client", "server", "transport", "flow", "tunnel")

    def __init__(self, client: PassthroughConnection, server: Server) -> None:
        self.client = client
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.tunnel: Tunnel | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.flow = FlowControl(t)
        self.server.conns += 1

    def data_received(self, data: bytes) -> None:
        self.client.from_server(data)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.eof(TO_CLIENT)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns -= 1
        self.transport = None
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.lost(exc)
        elif not self.client.closed:
            if exc is not None:
                self.client.abort()
            else:
                self.client.close()

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()

    def close(self, abort: bool = False) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort() if abort else t.close()
