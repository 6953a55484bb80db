"""The monitor's and /metrics' HTTP side: h11's sans-IO HTTP/1.1 over asyncio streams.

This is not the data path (a few people and a scraper, not thousands of clients), so it takes
h11 — strict, small, already what our tests speak — rather than the switch's own hot-path code.
Each request is read whole (head within ``header_timeout`` of the connection's last activity,
the body within it too, at most ``MAX_BODY``), answered by ``handler(request)``, and the
connection is kept while the client wants it and h11 says it can be. Bad framing gets its
status (400, 413, 431) and a close; a connection that sends nothing for ``header_timeout`` is
closed; at most ``MAX_CONNECTIONS`` are open at once (more are closed at accept).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

import h11

log = logging.getLogger("l7switch")

MAX_HEAD = 16 * 1024  # a browser's head is ~1 KiB; cookies and all, far below this
#: Login forms are tiny; this leaves room for the "1 MB password" attack to be read and told 400.
MAX_BODY = 2 * 1024 * 1024
MAX_CONNECTIONS = 256


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated fields joined with ", "
    body: bytes
    client: str  # peer address

    def cookie(self, name: str) -> str | None:
        raw = self.headers.get("cookie")
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


class Source(Protocol):
    """What the monitor and /metrics read and act through: something that answers admin
    commands (runtime/admin.Admin in a switch, the master with workers)."""

    async def run(self, args: list[str]) -> Any: ...


class HttpServer:
    """One listener (TLS or not) answering with ``handler``."""

    def __init__(self, handler: Handler, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 header_timeout: float, name: str) -> None:
        self.handler = handler
        self.host, self.port = host, port
        self.ssl = ssl_context
        self.header_timeout = header_timeout
        self.name = name
        self.server: asyncio.AbstractServer | None = None
        self.open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, self.host or None, self.port, ssl=self.ssl,
            ssl_handshake_timeout=self.header_timeout if self.ssl is not None else None,
            limit=MAX_HEAD, reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        self.port = sock[1]

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.open):
                w.close()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.open) >= MAX_CONNECTIONS:
            writer.close()
            return
        self.open.add(writer)
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else ""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                request = await self._read(conn, reader, client)
                if request is None:
                    return
                if isinstance(request, Response):
                    await self._send(conn, writer, request, close=True)
                    return
                try:
                    response = await self.handler(request)
                except Exception:  # a bug must not take the monitor down; the log has it
                    log.exception("%s: %s %s failed", self.name, request.method, request.path)
                    response = Response(500, b"internal error\n")
                await self._send(conn, writer, response)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open.discard(writer)
            writer.close()

    async def _read(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    client: str) -> Request | Response | None:
        """The next request whole; a Response to send before closing (bad input); None: the
        client closed or went silent."""
        head: h11.Request | None = None
        body = bytearray()
        started = bool(conn.trailing_data[0])  # bytes of this request came with the last one
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.header_timeout
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint in (400, 413, 431) else 400
                return Response(status, f"{exc}\n".encode())
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(reader.read(65536), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    # Silence before a request: just close (as nginx); in the middle of one: 408.
                    return Response(408, b"request timeout\n") if started else None
                if not data and not started:
                    return None
                started = True
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY:
                    return Response(413, b"request body too large\n")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    return Response(413, b"request body too large\n")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _request(head, bytes(body), client)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response,
                    close: bool = False) -> None:
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   *SECURITY_HEADERS, *response.headers]
        if close:
            headers.append(("Connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=response.status, headers=headers))
            data += conn.send(h11.Data(data=response.body)) if response.body else b""
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return  # (the client's state is in doubt: close)
        writer.write(data)
        await writer.drain()


#: Sent with everything the monitor serves (OWASP's secure headers): no framing by other sites,
#: scripts and styles only from the monitor itself, no referrer leaking paths, nothing cached.
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                "form-action 'self'; base-uri 'none'"),
    ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]


def _request(head: h11.Request, body: bytes, client: str) -> Request:
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = head.target.decode("latin-1")
    parts = urlsplit(target)
    return Request(head.method.decode("latin-1"), parts.path or "/", parse_qs(parts.query), headers, body, client)
