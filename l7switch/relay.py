"""One request and its response crossing the switch: the ``Exchange``.

The frontend creates an exchange once a request head is parsed and routed; the exchange takes
a server from the pool's scheduler, a connection from that server's ``ConnectionPool`` (or opens
one — the only place a Task is created), streams the request body up, and streams the response
back: head rewritten, body passed through (Content-Length), re-chunked (chunked, or
close-delimited to a keep-alive client) or spliced (known length above ``splice.threshold``).
Upgrades become a spliced two-way tunnel after the server's 101.

Outcomes the client sees when a server fails (http-safety.md §3.2, RFC 9110 §15.6):
refused connect -> one redispatch to another server, else 503; connect or response-head
timeout -> 504; reset/garbage before a response head -> 502; reset mid-body -> the client
connection is aborted so it detects the truncation (never padded, never hung).

A pool with persistence is asked before its scheduler (persistence.py decides, ``_start_sticky``
acts): the server the session names serves while it is up; a refused connect to it moves the
session like any redispatch, and the response re-sets the cookie for the new server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .errors import BadGateway, GatewayTimeout, L7Error, PayloadTooLarge, ServiceUnavailable
from .flow import HIGH_WATER, PEER_FULL
from .handoff import SpliceHandoff
from .message import RequestHead, forward_request_head, forward_response_head, parse_content_length
from .persistence import REFUSE, STICK

if TYPE_CHECKING:
    from .backends import Server, ServerPool
    from .frontend import ClientConnection
    from .persistence import Persistence
    from .splice import SpliceJob
    from .upstream import ConnectionPool, UpstreamConnection

log = logging.getLogger("l7switch")

CHUNK_END = b"0\r\n\r\n"
NO_BODY_STATUS = (204, 304)


class Exchange(SpliceHandoff):
    __slots__ = (
        "client", "head", "pool", "route", "key", "server", "cpool", "up", "t0",
        "to_up", "pending", "pending_size", "req_done", "req_body", "req_splice_left", "attempts",
        "status", "resp_started", "resp_done", "resp_chunked", "resp_close", "resp_eof_framed",
        "resp_splice_left", "to_client", "interim", "no_body", "finished", "jobs",
        "tunnel_data", "upgrading", "body_sent_up", "sticky", "sticky_key", "cookies",
    )

    def __init__(self, client: ClientConnection, head: RequestHead, pool: ServerPool, route: str,
                 key: str | None = None) -> None:
        self.client = client
        self.head = head
        self.pool = pool
        self.route = route  # rule label, for logs and stats
        self.key = key  # what the pool's scheduler picks on (hash_key), None if it needs nothing
        self.server: Server | None = None
        self.cpool: ConnectionPool | None = None
        self.up: UpstreamConnection | None = None
        self.t0 = time.monotonic()
        self.to_up: list[bytes] = []  # request bytes produced by one client read, written at once
        self.pending: list[bytes] | None = []  # request bytes that arrived before a connection
        self.pending_size = 0
        self.req_done = False
        self.req_body = 0
        self.req_splice_left = 0
        self.attempts = 0
        self.status = 0
        self.resp_started = False
        self.resp_done = False
        self.resp_chunked = False  # we frame the body to the client as chunked
        self.resp_close = not head.keep_alive
        self.resp_eof_framed = False  # the server's body ends when it closes
        self.resp_splice_left = 0
        self.to_client: list[bytes] = []
        self.interim = False
        self.no_body = False
        self.finished = False
        self.jobs: list[SpliceJob] = []  # running splice jobs (handoff.py)
        self.tunnel_data = b""
        self.upgrading = False
        self.body_sent_up = False
        # Persistence (pools that have it; persistence.py decides): the server the request names,
        # the table key the choice is recorded under, the Cookie values to forward (None: as is).
        self.sticky: Server | None = None
        self.sticky_key: str | None = None
        self.cookies: list[bytes] | None = None

    # ---- request side ---------------------------------------------------------------------------
    def start(self) -> None:
        """Pick a server and get a connection to it (pooled, or a new one)."""
        persist = self.pool.persistence
        if persist is not None:
            self._start_sticky(persist)
            return
        server = self.pool.pick(self.key)
        if server is None:
            self.fail(ServiceUnavailable(f"no server available in pool '{self.pool.name}'"))
            return
        self._use(server)

    def _start_sticky(self, persist: Persistence) -> None:
        """The server the session belongs to if it can serve, else what ``verdict`` says."""
        self.sticky, self.sticky_key, self.cookies = persist.sticky(self.head.headers, self.client.peer_ip)
        named = self.sticky
        verdict = persist.verdict(named)
        if verdict == REFUSE:
            assert named is not None
            self.fail(ServiceUnavailable(f"server '{named.name}' holding this session in pool "
                                         f"'{self.pool.name}' is down and redispatch is off"))
            return
        server = named if verdict == STICK else self.pool.pick(self.key)
        if server is None:
            self.fail(ServiceUnavailable(f"no server available in pool '{self.pool.name}'"))
            return
        persist.after_pick(server, self.sticky_key)
        self._use(server)

    def _use(self, server: Server) -> None:
        self.server = server
        self.pool.begin(server)
        self.cpool = cpool = self.client.switch.cpools[server]
        conn = cpool.acquire()
        if conn is not None:
            self._attach(conn)
        else:
            self.client.switch.spawn(self._connect(cpool))

    async def _connect(self, cpool: ConnectionPool) -> None:
        self.attempts += 1
        try:
            conn = await cpool.connect(self.client.switch.config.timeouts.connect)
        except asyncio.TimeoutError:
            self._connect_failed(GatewayTimeout(f"connect to {cpool.server.address} timed out"))
            return
        except OSError as exc:
            self._connect_failed(ServiceUnavailable(f"connect to {cpool.server.address} failed: "
                                                    f"{exc.strerror or exc}"), refused=True)
            return
        except Exception as exc:  # never leave the client without an answer
            log.exception("connect to %s failed", cpool.server.address)
            self._connect_failed(BadGateway(f"connect to {cpool.server.address} failed: {exc}"))
            return
        if self.finished:
            cpool.release(conn)
        else:
            self._attach(conn)

    def _connect_failed(self, err: L7Error, refused: bool = False) -> None:
        server = self.server
        assert server is not None
        server.failures += 1
        if self.finished:
            return  # the client left meanwhile; client_lost already ended the request
        self.pool.end(server)
        self.server = None
        persist = self.pool.persistence
        # A session pinned to the refusing server with redispatch off may not move.
        pinned = refused and persist is not None and not persist.may_leave(self.sticky, server)
        if refused and self.attempts < 2 and not pinned:
            # HAProxy's `option redispatch`: a refused connection is safe to retry elsewhere,
            # nothing was sent (RFC 9110 §9.2.2's caution is about requests already sent).
            other = self.pool.pick(self.key, exclude=server)
            if other is not None:  # pool.pick never returns the excluded server
                if persist is not None:
                    # The session moves: the table names the new server, and its response
                    # re-sets the cookie because the request named another one.
                    persist.after_pick(other, self.sticky_key)
                self._use(other)
                return
        if pinned:
            err = ServiceUnavailable(f"server '{server.name}' holding this session refused the "
                                     "connection and redispatch is off")
        self.fail(err)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.up = conn
        conn.exchange = self
        if not self.client.flow.writable and conn.flow is not None:
            # The client stopped reading during an earlier response; pause_writing will not fire
            # again, so this server connection must start paused or its body piles up here.
            conn.flow.pause_reading(PEER_FULL)
        conn.deadline = time.monotonic() + self.client.switch.config.timeouts.server
        head = forward_request_head(self.head, self.client.peer_ip, self.client.proto, self.head.chunked,
                                    self.cookies)
        pending, self.pending = self.pending, None
        if pending:
            self.body_sent_up = True
            conn.writelines([head, *pending])
        else:
            conn.write(head)
        if self.pending_size > HIGH_WATER:
            self.client.flow.resume_reading(PEER_FULL)
        if self.req_splice_left and not self.req_done and not self.client.feeding:
            # Inside a parser callback the current read's body bytes are still to come through
            # on_body; after_client_feed starts the splice once the parser has consumed them.
            self._start_request_splice()

    def request_body(self, data: bytes) -> None:
        n = len(data)
        self.req_body += n
        limit = self.client.switch.config.limits.max_body_bytes
        if limit is not None and self.req_body > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        framed = (b"%x\r\n" % n, data, b"\r\n") if self.head.chunked else (data,)
        if self.pending is not None:
            self.pending.extend(framed)
            self.pending_size += n
            if self.pending_size > HIGH_WATER:
                self.client.flow.pause_reading(PEER_FULL)  # no server yet: stop reading the client
        else:
            self.to_up.extend(framed)

    def request_complete(self) -> None:
        if self.req_done:
            return
        self.req_done = True
        if self.head.chunked:
            if self.pending is not None:
                self.pending.append(CHUNK_END)
            else:
                self.to_up.append(CHUNK_END)
        if self.resp_done and not self.finished:
            self._finish()

    def after_client_feed(self) -> None:
        """Write what one client read produced, as one write."""
        if self.to_up and self.up is not None:
            out, self.to_up = self.to_up, []
            self.body_sent_up = True
            self.up.writelines(out)
        if self.req_splice_left and not self.req_done and self.up is not None and not self.jobs:
            self._start_request_splice()

    # ---- response side (called by UpstreamConnection) ----------------------------------------
    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.resp_started or self.resp_done:
            if self.up is not None:
                self.up.keep_alive = False  # a second response to one request: in doubt
            return
        if 100 <= status < 200 and status != 101:
            # RFC 9110 §15.2: forward 1xx, but never to an HTTP/1.0 client.
            self.interim = True
            if self.head.version == "1.1":
                self.to_client.append(forward_response_head(status, b"", headers, b"", False))
            return
        server = self.server
        if server is not None:
            server.record_latency(time.monotonic() - self.t0)
        self.status = status
        up = self.up
        if status == 101:
            if self.head.upgrade is None:
                self.upstream_failed("101 to a request that asked for no upgrade")
                return
            self.upgrading = True
            self.to_client.append(forward_response_head(101, b"", headers, b"", False,
                                                         upgrade=self.head.upgrade))
            return
        if self.head.upgrade is not None:
            # The server declined the upgrade: answer normally, then close both connections
            # (http-safety.md: switch to a tunnel only after a real 101).
            self.resp_close = True
            if up is not None:
                up.keep_alive = False
        cl = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                cl = parse_content_length(value.split(b",")[0])
            elif name == b"transfer-encoding":
                chunked = True
        if self.head.method == b"HEAD" or status in NO_BODY_STATUS:
            self.no_body = True
            framing = b"Content-Length: %d\r\n" % cl if cl is not None else b""
        elif chunked:
            if self.head.version == "1.1":
                self.resp_chunked = True
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.resp_close = True  # an HTTP/1.0 client gets the de-chunked body up to close
                framing = b""
        elif cl is not None:
            framing = b"Content-Length: %d\r\n" % cl
            splice = self.client.switch.config.splice
            if splice.enabled and cl >= splice.threshold and not self.client.tls:  # TLS: handoff.py
                self.resp_splice_left = cl
        else:
            self.resp_eof_framed = True
            if up is not None:
                up.keep_alive = False
            if self.head.version == "1.1" and not self.resp_close:
                self.resp_chunked = True  # keep the client's connection: re-frame as chunked
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.resp_close = True
                framing = b""
        client = self.client
        if client.closing_after and not client.queue and client.pending_error is None:
            # Only the last response before the close says so: pipelined requests queued behind
            # this one, or a bad one waiting for its 400, are still to be answered in order.
            self.resp_close = True
        self.resp_started = True
        persist = self.pool.persistence
        if persist is None or server is None:
            self.to_client.append(forward_response_head(status, b"", headers, framing, self.resp_close))
        else:  # Set-Cookie added or edited, still one head and one write
            extra = persist.response(server, self.sticky, headers)
            self.to_client.append(forward_response_head(status, b"", headers, framing, self.resp_close,
                                                        None, extra))

    def response_body(self, data: bytes) -> None:
        if self.no_body or self.resp_done:
            if self.up is not None:
                self.up.keep_alive = False  # bytes where none belong
            return
        if self.resp_splice_left:
            self.resp_splice_left -= len(data)
        if self.resp_chunked:
            self.to_client.extend((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.to_client.append(data)

    def response_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.upgrading:
            # llhttp always pauses right after a 101 (HttpParserUpgrade, or a parser error when
            # the 101 lacks Upgrade): UpstreamConnection.data_received starts the tunnel with the
            # bytes behind the head. Starting it here too made that second call abort both sides.
            return
        if self.resp_done or not self.resp_started:
            return
        self.resp_done = True
        self.resp_splice_left = 0
        if self.resp_chunked:
            self.to_client.append(CHUNK_END)

    def after_upstream_feed(self) -> None:
        if self.finished:
            return
        if self.to_client:
            out, self.to_client = self.to_client, []
            self.client.writelines(out)
        up = self.up
        if up is None:
            return
        if self.no_body and self.resp_started and not self.resp_done:
            # llhttp cannot know the request was HEAD; the response ends at its head.
            up.reset_parser()
            self.resp_done = True
        if self.resp_done:
            if self.req_done:
                self._finish()
            else:
                # Answered before the request body ended (e.g. an early 413): neither
                # connection can be trusted to be at a message boundary.
                self.resp_close = True
                up.keep_alive = False
                self._finish()
        elif self.resp_splice_left > 0:
            self._start_response_splice()

    # ---- failures ---------------------------------------------------------------------------------
    def upstream_lost(self, exc: Exception | None) -> None:
        """The server's connection closed (``up.exchange`` is already cleared)."""
        if self.finished:
            return
        up, self.up = self.up, None
        if self.jobs:
            return  # the splice job sees the EOF or error itself and reports it
        if self.resp_started and self.resp_eof_framed and not self.resp_done:
            self.resp_done = True  # a close-delimited body ends here (RFC 9112 §6.3(8))
            if self.resp_chunked:
                self.to_client.append(CHUNK_END)
            self.after_upstream_feed()
            self._finish()
            return
        if self.resp_started:
            self._abort_both()  # truncated: the client must see an incomplete message
            return
        if (up is not None and up.reused and not up.got_bytes and not self.body_sent_up
                and self.attempts < 2 and not self.head.upgrade):
            # A pooled keep-alive connection the server had already closed: the request never
            # reached it, so it is safe to send it again on a fresh connection.
            self.attempts += 1
            self.client.switch.spawn(self._connect(self.cpool))  # type: ignore[arg-type]
            return
        if self.server is not None:
            self.server.failures += 1
        self.fail(BadGateway("server closed the connection before responding"))

    def upstream_failed(self, detail: str) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.close()
        if self.server is not None:
            self.server.failures += 1
        if self.resp_started:
            self._abort_both()
        else:
            self.fail(BadGateway(detail))

    def upstream_timeout(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.close()
        if self.server is not None:
            self.server.failures += 1
        if self.resp_started:
            self._abort_both()
        else:
            self.fail(GatewayTimeout(f"no response within {self.client.switch.config.timeouts.server:g}s"))

    def fail(self, err: L7Error) -> None:
        """Answer the client with the switch's own error response for this exchange."""
        if self.finished:
            return
        self.to_client.clear()
        close = err.close or not self.req_done or self.resp_close
        self._finish(error=err, close=close)

    def client_lost(self) -> None:
        """The client went away: cancel everything; the server connection is in doubt."""
        for job in self.jobs:
            job.cancel()
        self.jobs = []
        up, self.up = self.up, None
        if up is not None:
            up.close()
        if not self.finished:
            self.finished = True
            if self.server is not None:
                self.pool.end(self.server)

    def _abort_both(self, graceful: bool = False) -> None:
        """End the exchange on both sides: a tunnel that finished, or a truncated response."""
        self.client_lost()  # the same teardown on the server side
        if graceful:
            self.client.close()
        else:
            self.client.abort()

    def _finish(self, error: L7Error | None = None, close: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        for job in self.jobs:
            # A request body still being spliced (the server answered early, or failed): the
            # job's dup()ed fds would keep both sockets open after their transports close.
            job.cancel()
        self.jobs = []
        if self.server is not None:
            self.pool.end(self.server)
        up, self.up = self.up, None
        if up is not None:
            if error is None and self.req_done and self.resp_done and self.cpool is not None:
                self.cpool.release(up)
            else:
                up.close()
        self.client.exchange_finished(self, error, close or self.resp_close or not self.req_done)

    def __repr__(self) -> str:
        state = "done" if self.finished else ("responding" if self.resp_started else "waiting")
        server = self.server.address if self.server else "-"
        return (f"<Exchange {self.head.method.decode()} {self.head.path} -> {self.pool.name}/{server} "
                f"{state} status={self.status}>")

