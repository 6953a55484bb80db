"""A small, fast origin HTTP/1.1 server: the "real servers" behind the switch in the demo,
the tests and the load tests.

It is deliberately a plain asyncio.Protocol over httptools rather than anything clever, so the
numbers a load test reports are the switch's, not the origin's:

* keep-alive and pipelining: requests parsed from one read are answered strictly in order;
  a slow (async) handler holds later requests in a queue instead of reordering them;
* one ``transport.write`` per response (head and body joined), so a response never leaves
  in two TCP segments because of us;
* the sync handler path never touches the event loop; only awaitable results create a task.

``standard_handler(name)`` gives the routes tests rely on (``/echo``, ``/bytes/N``,
``/chunked/N``, ``/status/CODE``, ``/delay/MS``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

log = logging.getLogger("l7switch.origin")


class OriginRequest:
    """One complete request (head and body); header names are kept exactly as received."""

    __slots__ = ("method", "url", "path", "query", "headers", "body", "client", "version")

    def __init__(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
                 client: tuple[str, int], version: str = "1.1") -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.client = client
        self.version = version
        # Absolute-form ("http://host/p?q") only reaches an origin by mistake, but split it
        # sensibly anyway; origin-form is the fast, common case.
        if url.startswith("/") or url == "*":
            target = url
        else:
            try:
                parsed = httptools.parse_url(url.encode("latin-1"))
                target = (parsed.path or b"/").decode("latin-1")
                if parsed.query:
                    target += "?" + parsed.query.decode("latin-1")
            except httptools.HttpParserInvalidURLError:
                target = url
        self.path, _, self.query = target.partition("#")[0].partition("?")


class OriginResponse:
    """What a handler returns. ``chunks`` (if set) is sent with chunked transfer coding;
    otherwise ``body`` with Content-Length. The server owns framing headers: any
    Content-Length, Transfer-Encoding or Connection in ``headers`` is replaced."""

    __slots__ = ("status", "headers", "body", "chunks", "close")

    def __init__(self, status: int = 200, headers: list[tuple[str, str]] | None = None,
                 body: bytes | None = None, chunks: list[bytes] | None = None,
                 close: bool = False) -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
        self.chunks = chunks
        self.close = close


Handler = Callable[[OriginRequest], "OriginResponse | Awaitable[OriginResponse]"]

# Framing headers the server writes itself; a handler's copies would contradict ours.
_OWNED = frozenset({"content-length", "transfer-encoding", "connection"})
_STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}
_BAD = object()  # queue marker: the parser failed after these requests; answer 400 and close
_END = object()  # queue marker: no more requests on this connection (upgrade); just close
_MAX_QUEUED = 64  # pipelined requests held while an async handler runs before we stop reading

_date_cache: list = [0, b""]


def _date() -> bytes:
    # formatdate is slow-ish; the value only changes once a second.
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    return _date_cache[1]


def serialize(resp: OriginResponse, server_name: bytes, *, close: bool, http10: bool,
              head: bool) -> bytes:
    """The full wire bytes of one response: status line, headers, framed body."""
    status = resp.status
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    parts = [line, b"Date: ", _date(), b"\r\n"]
    has_server = False
    for name, value in resp.headers:
        lname = name.lower()
        if lname in _OWNED:
            continue
        if lname == "x-server":
            has_server = True
        parts.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if not has_server:
        parts.append(b"X-Server: " + server_name + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")  # 1.0 only stays open if told so
    body = b""
    if status < 200 or status in (204, 304):
        pass  # RFC 9110 §6.4.1: these never carry content nor Content-Length framing here
    elif resp.chunks is not None and not http10:
        parts.append(b"Transfer-Encoding: chunked\r\n")
        if not head:
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in resp.chunks if c) + b"0\r\n\r\n"
    else:
        # A 1.0 client cannot read chunked coding: join the chunks and send a length.
        payload = resp.body if resp.chunks is None else b"".join(resp.chunks)
        payload = payload or b""
        parts.append(b"Content-Length: %d\r\n" % len(payload))
        if not head:
            body = payload
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class _NoCallbacks:
    pass


_CLOSED_PARSER = httptools.HttpRequestParser(_NoCallbacks())


class _OriginProtocol(asyncio.Protocol):
    """One client connection. The protocol object is also the httptools callback target."""

    __slots__ = (
        "srv", "transport", "parser", "client", "url", "headers", "body", "queue", "busy",
        "closing", "parsing", "eof", "task", "write_paused",
    )

    def __init__(self, srv: OriginServer) -> None:
        self.srv = srv
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] = ("", 0)
        self.url: list[bytes] = []
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.queue: deque = deque()  # parsed requests waiting behind an async handler
        self.busy = False  # an async handler is running for the head of the line
        self.closing = False  # the transport is being closed: write nothing more
        self.parsing = True  # False once no further request will be answered (close, error)
        self.eof = False
        self.task: asyncio.Task | None = None
        self.write_paused = False

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if peer else ("", 0)
        self.srv._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.srv._conns.discard(self)
        self.closing = True
        self.parser = _CLOSED_PARSER  # no protocol <-> parser cycle left for the cyclic GC
        if self.task is not None:
            self.task.cancel()
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if not self.parsing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade/CONNECT: the message head is complete but what follows is not HTTP.
            # An origin that does not speak the new protocol answers and closes.
            self._end_after_queue()
        except httptools.HttpParserError:
            self._fail()

    def eof_received(self) -> bool:
        # Half-close from the client: finish answering what was already asked, then close.
        self.eof = True
        if not self.busy and not self.queue:
            self._close()
        return True

    def pause_writing(self) -> None:
        # The client is not reading; stop parsing more of its requests until it catches up.
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.parsing and not self.closing and len(self.queue) < _MAX_QUEUED:
            self._resume_reading()

    # ---- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = []
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url.append(url)  # may arrive in pieces when the request line is split

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        # curl and friends wait ~1s for "100 Continue" before a large body. Only send it when
        # nothing is ahead of this request, or it would sit inside an earlier response.
        if (self.parsing and not self.busy and not self.queue
                and self.parser.get_http_version() == "1.1"):
            for name, value in self.headers:
                if name.lower() == "expect" and value.lower() == "100-continue":
                    self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    break

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parsing or self.closing:
            return  # pipelined after a close: never answered, as RFC 9112 §9.6 allows
        p = self.parser
        keep_alive = p.should_keep_alive()
        if not keep_alive:
            self.parsing = False  # this is the last request we will answer here
        req = OriginRequest(p.get_method().decode("latin-1"), b"".join(self.url).decode("latin-1"),
                            self.headers, b"".join(self.body), self.client, p.get_http_version())
        self.srv.requests += 1
        item = (req, keep_alive)
        if self.busy or self.queue:
            self.queue.append(item)
            if len(self.queue) >= _MAX_QUEUED:
                self._pause_reading()
        else:
            self._handle(item)

    # ---- answering -------------------------------------------------------------------------

    def _handle(self, item: tuple[OriginRequest, bool]) -> None:
        req, keep_alive = item
        try:
            result = self.srv.handler(req)
        except Exception:
            result = self._crashed(req)
        if isinstance(result, OriginResponse):  # the sync fast path
            self._respond(req, keep_alive, result)
            return
        self.busy = True
        self.task = asyncio.get_running_loop().create_task(self._await(req, keep_alive, result))

    async def _await(self, req: OriginRequest, keep_alive: bool,
                     aw: Awaitable[OriginResponse]) -> None:
        try:
            resp = await aw
        except asyncio.CancelledError:
            raise
        except Exception:
            resp = self._crashed(req)
        self.task = None
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self._respond(req, keep_alive, resp)
        self._drain()

    def _crashed(self, req: OriginRequest) -> OriginResponse:
        log.exception("origin %s: handler failed for %s %s", self.srv.name, req.method, req.url)
        return OriginResponse(500, [("Content-Type", "text/plain")], b"handler error\n")

    def _drain(self) -> None:
        while self.queue and not self.busy and not self.closing:
            item = self.queue.popleft()
            if item is _BAD:
                self._write_bad()
                return
            if item is _END:
                self._close()
                return
            self._handle(item)
        if not self.closing and not self.busy:
            if self.eof:
                self._close()
            elif self.parsing and not self.write_paused:
                self._resume_reading()

    def _respond(self, req: OriginRequest, keep_alive: bool, resp: OriginResponse) -> None:
        close = resp.close or not keep_alive or self.srv._stopping
        data = serialize(resp, self.srv.name_bytes, close=close, http10=req.version == "1.0",
                         head=req.method == "HEAD")
        self._write(data)
        if close:
            self._close()

    def _fail(self) -> None:
        """Malformed input: 400 and close, after answering whatever came before it."""
        self.parsing = False
        if self.busy or self.queue:
            self.queue.append(_BAD)
        else:
            self._write_bad()

    def _end_after_queue(self) -> None:
        """Stop reading requests; close once the ones already parsed are answered."""
        self.parsing = False
        if self.busy or self.queue:
            self.queue.append(_END)
        else:
            self._close()

    def _write_bad(self) -> None:
        resp = OriginResponse(400, [("Content-Type", "text/plain")], b"400 Bad Request\n")
        self._write(serialize(resp, self.srv.name_bytes, close=True, http10=False, head=False))
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()  # flushes what was written first


class OriginServer:
    """``await OriginServer(standard_handler("a")).start()``; ``.port`` is the bound port."""

    def __init__(self, handler: Handler, name: str = "origin") -> None:
        self.handler = handler
        self.name = name
        self.name_bytes = name.encode("latin-1")
        self.requests = 0  # completed requests parsed, across all connections
        self.host = ""
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_OriginProtocol] = set()
        self._stopping = False

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _OriginProtocol(self), host, port, reuse_address=True, backlog=1024)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        return self.port

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


# ---- the standard routes ------------------------------------------------------------------

# Period 251 (prime) so the pattern never lines up with power-of-two buffer or chunk sizes:
# a dropped or duplicated block shows up as a mismatch instead of hiding.
_BLOCK = bytes((i * 31 + 7) % 256 for i in range(251))
MAX_BYTES = 64 * 1024 * 1024
MAX_DELAY_MS = 60_000


def pattern_bytes(n: int) -> bytes:
    """The deterministic body of ``/bytes/N`` and ``/chunked/N``."""
    return (_BLOCK * (n // len(_BLOCK) + 1))[:n]


def _text(status: int, text: str) -> OriginResponse:
    return OriginResponse(status, [("Content-Type", "text/plain; charset=utf-8")], text.encode())


def _int_arg(path: str, prefix: str, limit: int) -> int | None:
    tail = path[len(prefix):]
    if not tail.isdigit() or len(tail) > 12:
        return None
    n = int(tail)
    return n if n <= limit else None


def standard_handler(name: str) -> Handler:
    """The routes of the module docstring; everything else is ``"<name>: <path>\\n"``."""

    def echo(req: OriginRequest) -> OriginResponse:
        doc = {
            "server": name, "method": req.method, "url": req.url, "path": req.path,
            "query": req.query, "version": req.version,
            "headers": [[n, v] for n, v in req.headers],
            "body_len": len(req.body), "body_sha256": hashlib.sha256(req.body).hexdigest(),
        }
        return OriginResponse(200, [("Content-Type", "application/json")],
                              json.dumps(doc).encode())

    async def delayed(ms: int) -> OriginResponse:
        await asyncio.sleep(ms / 1000)
        return _text(200, f"{name}: delayed {ms} ms\n")

    def handler(req: OriginRequest) -> OriginResponse | Awaitable[OriginResponse]:
        path = req.path
        if path == "/echo" or path.startswith("/echo/"):
            return echo(req)
        if path.startswith(("/bytes/", "/chunked/")):
            prefix, _, _ = path[1:].partition("/")
            n = _int_arg(path, f"/{prefix}/", MAX_BYTES)
            if n is None:
                return _text(400, f"{name}: bad size\n")
            resp = OriginResponse(200, [("Content-Type", "application/octet-stream")], pattern_bytes(n))
            if prefix == "chunked":
                # About four chunks, at most 16 KiB each: enough boundaries to exercise a reader.
                step = min(16384, max(1, -(-n // 4)))
                resp.chunks = [resp.body[i:i + step] for i in range(0, n, step)]  # type: ignore[index]
            return resp
        if path.startswith("/status/"):
            code = _int_arg(path, "/status/", 599)
            if code is None or code < 200:
                return _text(400, f"{name}: bad status\n")
            if code in (204, 304):
                return OriginResponse(code, [])
            phrase = _STATUS_LINES[code][13:-2].decode() if code in _STATUS_LINES else "Unknown"
            return _text(code, f"{code} {phrase}\n")
        if path.startswith("/delay/"):
            ms = _int_arg(path, "/delay/", MAX_DELAY_MS)
            if ms is None:
                return _text(400, f"{name}: bad delay\n")
            return delayed(ms)
        return _text(200, f"{name}: {path}\n")

    return handler
