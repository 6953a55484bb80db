"""Connections to real servers: the response-side protocol and the per-server keep-alive pool.

A ``ConnectionPool`` holds the idle keep-alive connections to *one* server (LIFO, so the
warmest socket is reused first, as asyncpg's pool does), capped at ``upstream.max_idle`` and
expired after ``upstream.idle_timeout``. A connection whose state is in doubt — a response not
read to its end, a server that said ``Connection: close``, unexpected bytes while idle — is
closed, never pooled again.

``UpstreamConnection`` parses responses with httptools and hands each piece to its owner (the
exchange it currently serves, through ``ports.ResponseSink``); it makes no decisions of its own
beyond two limits llhttp does not enforce: the size of a response head and its field count.
While a tunnel owns it (after a 101), bytes go to the tunnel instead.

llhttp checks the head's syntax, but no call-back per field is asked of it (through httptools
each costs a Python call and two bytes objects): the bytes of the head are kept as they come,
and when llhttp says the head is complete its lines are cut out of them (http/fields.py), to
be forwarded as they came.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

import httptools

from ..balance.servers import Server
from ..errors import BadGateway, GatewayTimeout, L7Error, OutOfDescriptors, ServiceUnavailable
from ..http.fields import cut_head
from ..net.clock import Clock, monotonic
from ..net.flow import PEER_FULL, FlowControl
from ..net.ratelog import fd_exhausted
from ..net.tunnel import TO_CLIENT, Tunnel
from .ports import ResponseSink

log = logging.getLogger("l7switch")

# Response header fields accepted from a server; HAProxy's tune.http.maxhdr default is 101.
MAX_RESPONSE_HEADERS: Final = 101


class _NoCallbacks:
    """The parser a closed connection keeps: it refers to nothing, so the connection and its
    parser no longer form a reference cycle that only the cyclic GC could free."""


CLOSED_PARSER: Final = httptools.HttpResponseParser(_NoCallbacks())


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("transport", "flow", "parser", "server", "cpool", "owner", "deadline", "reused",
                 "keep_alive", "closed", "got_bytes", "clock", "tunnel", "in_head", "head_seen",
                 "head_lines", "head_parts", "head_at", "now")

    def __init__(self, server: Server, cpool: ConnectionPool) -> None:
        self.server = server
        self.cpool = cpool
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.parser: httptools.HttpResponseParser = httptools.HttpResponseParser(self)
        self.owner: ResponseSink | None = None
        self.deadline = 0.0
        self.reused = False
        self.keep_alive = True
        self.closed = False
        self.got_bytes = False  # any byte of the current response seen
        self.in_head = True  # a response head is being read (its bytes count against the limit)
        self.head_seen = 0
        self.head_lines = 0
        # The bytes fed to llhttp since the head began (a read or more) and where in them the
        # current head starts (after a 1xx head, its successor).
        self.head_parts: list[bytes] = []
        self.head_at = 0
        self.now = 0.0  # the clock when the current read came (data_received)
        self.clock: Clock = cpool.clock
        self.tunnel: Tunnel | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.flow = FlowControl(t)
        self.server.conns += 1
        self.clock.watch(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.to_client(data)
            return
        owner = self.owner
        if owner is None:
            # Bytes from a server nobody asked anything of: the connection is in doubt.
            self.close()
            return
        self.got_bytes = True
        self.now = monotonic()  # one clock stamp per read, for what it completes
        if self.in_head:
            self.head_parts.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            owner.response_upgraded(data[exc.args[0]:] if exc.args else b"")
            return
        except httptools.HttpParserError as exc:
            ctx = exc.__context__
            owner.upstream_failed(f"invalid response from server: {ctx or exc}")
            return
        if self.in_head:
            # Still inside a head after this read: llhttp buffers an unfinished header line
            # without limit and calls us only when it ends, so we count what it is fed — bytes,
            # and lines (each ends in LF: llhttp accepts no other line end), so that a head of
            # endless short fields is refused as soon as it has too many, not when it ends.
            self.head_seen += len(data)
            if self.head_seen > self.cpool.head_limit:
                owner.upstream_failed(f"response head over {self.cpool.head_limit} bytes")
                return
            self.head_lines += data.count(b"\n")
            if self.head_lines > MAX_RESPONSE_HEADERS + 1:  # (+ the status line)
                owner.upstream_failed(f"more than {MAX_RESPONSE_HEADERS} response header fields")
                return
        owner = self.owner  # may have finished (and been released) inside the callbacks
        if owner is not None:
            owner.after_upstream_feed(self.now)
            if self.owner is not None:
                # More of this response is to come: timeouts.server is the longest silence,
                # so every read re-arms it. (A response that ended here has been released.)
                self.deadline = self.now + self.cpool.server_timeout

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.eof(TO_CLIENT)
        return None  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns -= 1
        self.clock.unwatch(self)
        self.cpool.discard(self)
        self.parser = CLOSED_PARSER
        tunnel, self.tunnel = self.tunnel, None
        owner, self.owner = self.owner, None
        if tunnel is not None:
            tunnel.lost(exc)
        elif owner is not None:
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        # The server reads what we send slower than it comes: its silence now counts.
        if self.flow is not None:
            self.flow.pause_writing()
        if self.owner is not None:
            self.owner.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()
        if self.owner is not None:
            self.owner.upstream_writable(True)

    # ---- httptools callbacks ------------------------------------------------------------------
    # No on_status, no on_message_begin and no on_header: the client gets the standard reason
    # phrase (RFC 9110 §15: clients ignore it; HTTP/2 dropped it), and the fields are cut out
    # of the bytes llhttp was fed once it has checked them.

    def on_headers_complete(self) -> None:
        owner = self.owner
        status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback
        # A 1xx is followed by the real head, which is counted afresh.
        self.in_head = interim = 100 <= status < 200 and status != 101
        self.head_seen = 0
        self.head_lines = 0
        parts = self.head_parts
        if not parts:
            # No bytes kept: a second response after a complete one, which the owner refuses.
            lines = [b""]
        else:
            buf = parts[0] if len(parts) == 1 else b"".join(parts)
            lines, at = cut_head(buf, self.head_at, MAX_RESPONSE_HEADERS)
            if interim:
                self.head_parts = [buf]  # what follows the 1xx is found from ``at``
                self.head_at = at
            else:
                self.head_parts = []
                self.head_at = 0
        if owner is not None:
            owner.response_head(status, lines)

    def on_body(self, body: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.response_body(body)

    def on_message_complete(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.response_complete()

    # ---- used by the pool and the exchange ----------------------------------------------------
    def reset_parser(self) -> None:
        """A fresh parser after a spliced body or a HEAD response: the old one's state is stale."""
        self.parser = httptools.HttpResponseParser(self)
        self.head_parts = []
        self.head_at = 0

    def on_deadline(self, now: float) -> None:
        if self.owner is not None:
            if self.owner.upstream_timeout():
                self.deadline = now + self.cpool.server_timeout
        elif self.tunnel is None:
            self.close()  # idle past upstream.idle_timeout

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def writelines(self, data: list[bytes]) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.writelines(data)

    def close(self) -> None:
        self.owner = None
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort()  # nothing worth flushing to a server we give up on

    def __repr__(self) -> str:
        state = ("closed" if self.closed else "tunnel" if self.tunnel is not None
                 else "busy" if self.owner is not None else "idle")
        return f"<UpstreamConnection {self.server.address} {state}>"


class ConnectionPool:
    """Idle keep-alive connections to one server; no I/O except closing what it evicts."""

    __slots__ = ("server", "idle", "max_idle", "idle_timeout", "server_timeout", "head_limit", "clock",
                 "spawn", "opened", "reused")

    def __init__(self, server: Server, max_idle: int, idle_timeout: float, server_timeout: float,
                 head_limit: int, clock: Clock, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.server = server
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.server_timeout = server_timeout  # timeouts.server: the longest silence from it
        self.head_limit = head_limit  # limits.max_response_header_bytes
        self.clock = clock
        self.spawn = spawn  # SwitchState.spawn: keeps a reference to the Task
        self.opened = 0
        self.reused = 0

    def adopt(self, old: ConnectionPool) -> None:
        """A reload kept this pool's server (same pool, name and address): take over the old
        pool's idle connections, warm, and have it close whatever is released to it later (its
        requests in flight finish on their own generation)."""
        self.idle, old.idle = old.idle, []
        for conn in self.idle:
            conn.server = self.server
        self.server.conns = old.server.conns
        self.server.idle_conns = len(self.idle)
        self.opened, self.reused = old.opened, old.reused
        old.retire()

    def retire(self) -> None:
        """Its generation was replaced by a reload: pool nothing more, close what is idle."""
        self.max_idle = 0
        self.close_all()
        self.idle = []

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

    def release(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        conn.owner = None
        conn.got_bytes = False
        conn.in_head = True  # the next bytes are the next response's head
        conn.head_seen = 0
        conn.head_lines = 0
        if conn.head_parts:
            conn.head_parts = []
            conn.head_at = 0
        if conn.closed or not conn.keep_alive or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.deadline = (now or monotonic()) + self.idle_timeout
        flow = conn.flow
        if flow is not None:
            peer = flow.peer
            if peer is not None:  # FlowControl.unlink, inlined: this runs for every request
                flow.peer = peer.peer = None
                if peer.paused_for & PEER_FULL:
                    peer.resume_reading(PEER_FULL)
            if flow.paused_for:
                flow.paused_for = 0
                flow.transport.resume_reading()  # an idle connection must see the server's FIN
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
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the connect in a second
        # Task, one more per new server connection.
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(lambda: UpstreamConnection(self.server, self),
                                                   self.server.host, self.server.port)
        self.opened += 1
        return conn

    def open(self, timeout: float, ready: Callable[[UpstreamConnection], None],
             failed: Callable[[L7Error, bool], None]) -> None:
        """Open a new connection in a Task (the only Task a request may cost): ``ready(conn)``,
        or ``failed(error, refused)`` — refused means nothing reached the server, so another
        server may be tried."""
        self.spawn(self._open(timeout, ready, failed))

    async def _open(self, timeout: float, ready: Callable[[UpstreamConnection], None],
                    failed: Callable[[L7Error, bool], None]) -> None:
        address = self.server.address
        try:
            conn = await self.connect(timeout)
        except asyncio.TimeoutError:
            failed(GatewayTimeout(f"connect to {address} timed out"), False)
        except OSError as exc:
            if fd_exhausted(exc):
                failed(OutOfDescriptors(f"connect to {address}: {exc.strerror}", retry_after=1), True)
            else:
                failed(ServiceUnavailable(f"connect to {address} failed: {exc.strerror or exc}"), True)
        except Exception as exc:  # never leave a request without an answer
            log.exception("connect to %s failed", address)
            failed(BadGateway(f"connect to {address} failed: {exc!r}"), False)
        else:
            ready(conn)

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
