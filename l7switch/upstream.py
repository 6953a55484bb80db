"""Connections to real servers: the response-side protocol and the per-server keep-alive pool.

A ``ConnectionPool`` holds the idle keep-alive connections to *one* server (LIFO, so the
warmest socket is reused first, as asyncpg's pool does), capped at ``upstream.max_idle`` and
expired after ``upstream.idle_timeout``. A connection whose state is in doubt — a response not
read to its end, a server that said ``Connection: close``, unexpected bytes while idle — is
closed, never pooled again.

``UpstreamConnection`` parses responses with httptools and hands each piece to the exchange
(relay.py) that currently owns it; it makes no decisions of its own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any

import httptools

from .flow import PEER_FULL, FlowControl, run_drain_waiters

if TYPE_CHECKING:
    from .backends import Server
    from .relay import Exchange

# Response header fields accepted from a server; HAProxy's tune.http.maxhdr default is 101.
MAX_RESPONSE_HEADERS = 101


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("transport", "flow", "parser", "server", "cpool", "exchange", "deadline", "reused",
                 "headers", "keep_alive", "closed", "got_bytes", "clock", "drain_waiters", "relay_to")

    def __init__(self, server: Server, cpool: ConnectionPool) -> None:
        self.server = server
        self.cpool = cpool
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.deadline = 0.0
        self.reused = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.closed = False
        self.got_bytes = False  # any byte of the current response seen
        self.clock = cpool.clock
        self.drain_waiters: list = []
        self.relay_to: Any = None  # an Upgrade tunnel to a TLS client: the ClientConnection (handoff.py)

    # ---- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(transport)
        self.server.conns += 1
        self.clock.watch(self)

    def data_received(self, data: bytes) -> None:
        if self.relay_to is not None:
            self.relay_to.write(data)
            return
        ex = self.exchange
        if ex is None:
            # Bytes from a server nobody asked anything of: the connection is in doubt.
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex.response_upgraded(data[exc.args[0]:] if exc.args else b"")
            return
        except httptools.HttpParserError as exc:
            ex.upstream_failed(f"invalid response from server: {exc}")
            return
        ex = self.exchange  # may have finished (and been released) inside the callbacks
        if ex is not None:
            ex.after_upstream_feed()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns -= 1
        self.clock.unwatch(self)
        self.cpool.discard(self)
        ex = self.exchange
        if self.relay_to is not None and ex is not None:
            # The end of a tunnel over TLS: close the client gracefully so what is still
            # buffered for it is sent (upstream_lost would abort, dropping that buffer).
            self.relay_to.relay_to = self.relay_to = self.exchange = None
            ex._abort_both(graceful=exc is None)
            return
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(exc)

    def pause_writing(self) -> None:
        # The server reads the request body slower than the client sends it.
        ex = self.exchange
        if ex is not None:
            ex.client.flow.pause_reading(PEER_FULL)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.flow.resume_reading(PEER_FULL)
        run_drain_waiters(self)

    # ---- httptools callbacks ------------------------------------------------------------------
    # No on_status: the client gets the standard reason phrase (RFC 9110 §15: clients ignore
    # it; HTTP/2 dropped it), which saves a callback per response.

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name.lower(), value))
        if len(headers) > MAX_RESPONSE_HEADERS:
            # llhttp sets no limit; a server streaming headers forever must not eat our memory.
            raise ValueError(f"more than {MAX_RESPONSE_HEADERS} response header fields")

    def on_headers_complete(self) -> None:
        ex = self.exchange
        status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback
        headers, self.headers = self.headers, []  # reset here: no on_message_begin callback needed
        if ex is not None:
            ex.response_head(status, headers)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.response_complete()

    # ---- used by the pool and the exchange ----------------------------------------------------
    def reset_parser(self) -> None:
        """A fresh parser after a spliced body or a HEAD response: the old one's state is stale."""
        self.parser = httptools.HttpResponseParser(self)
        self.headers = []

    def on_deadline(self, now: float) -> None:
        if self.exchange is not None:
            self.exchange.upstream_timeout()
        else:
            self.close()  # idle past upstream.idle_timeout

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(data)

    def end_relay(self) -> None:
        """The TLS client of a tunnel is gone: send the server what is buffered, then close."""
        self.relay_to = None
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.up = None  # so the exchange's teardown does not abort us
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close(self) -> None:
        self.exchange = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()  # nothing worth flushing to a server we give up on

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.exchange else "idle")
        return f"<UpstreamConnection {self.server.address} {state}>"


class ConnectionPool:
    """Idle keep-alive connections to one server; no I/O except closing what it evicts."""

    __slots__ = ("server", "idle", "max_idle", "idle_timeout", "clock", "opened", "reused")

    def __init__(self, server: Server, max_idle: int, idle_timeout: float, clock: Any) -> None:
        self.server = server
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.opened = 0
        self.reused = 0

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()  # LIFO: the most recently used socket is the least likely to be stale
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                self.server.idle_conns = len(idle)
                self.reused += 1
                conn.reused = True
                return conn
        self.server.idle_conns = 0
        return None

    def release(self, conn: UpstreamConnection) -> None:
        conn.exchange = None
        conn.got_bytes = False
        if conn.closed or not conn.keep_alive or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.deadline = time.monotonic() + self.idle_timeout
        if conn.flow is not None and conn.flow.paused_for:
            conn.flow.paused_for = 0
            conn.transport.resume_reading()  # type: ignore[union-attr]
        self.idle.append(conn)
        self.server.idle_conns = len(self.idle)

    def discard(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self.server.idle_conns = len(self.idle)

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(self.server, self), self.server.host,
                                   self.server.port),
            timeout)
        self.opened += 1
        return conn

    def close_all(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        self.server.idle_conns = 0

    def snapshot(self) -> dict[str, Any]:
        return {"idle": len(self.idle), "opened": self.opened, "reused": self.reused}

    def __repr__(self) -> str:
        return (f"<ConnectionPool {self.server.address} idle={len(self.idle)}/{self.max_idle} "
                f"opened={self.opened} reused={self.reused}>")


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
