"""One request and its response crossing the switch: the ``Exchange``.

The frontend creates an exchange once a request head is parsed and routed. The exchange asks
the pool where the request goes (balance/dispatch.py: persistence, then the scheduler), takes a
connection from that server's ``ConnectionPool`` (or has it open one — the only Task a request
may cost), streams the request body up, and streams the response back: head rewritten, body
passed through (Content-Length), re-chunked (chunked, or close-delimited to a keep-alive
client) or spliced (known length above ``splice.threshold``). An accepted Upgrade becomes a
tunnel (net/tunnel.py) after the server's 101.

Its life is one phase, set where each transition happens::

    PENDING -> [BUFFERING] -> [QUEUED] -> CONNECTING -> AWAITING -> RELAYING -> COMPLETE -> DONE
                                                 ^           |  |          '-> SPLICING -'
                                                 |           |  '-> UPGRADING -> TUNNEL -----> DONE
                                                 '-----------'  a safe retry, or a stale pooled connection
    (any phase -> DONE when it fails or the client leaves)

BUFFERING: a request with a body reads ``limits.buffer_body`` bytes of it (or all of it, if
smaller) before a server is chosen (HAProxy's ``option http-buffer-request``, nginx's
``proxy_request_buffering``): a slow upload costs one client socket and what it has sent, not
a server connection, a slot in a scheduler's counts and a pipe. The client's pace limits
(``min_body_rate``, ``timeouts.client``) apply as to any body. Not for ``Expect: 100-continue``
(the client waits for the server's word before it sends the body) nor an Upgrade, and not once
all buffering bodies hold ``BUFFER_BUDGET`` bytes together (memory stays bounded: beyond it
requests connect at their head, as with buffering off).

QUEUED: every server it may go to is at its ``maxconn`` (balance/queue.py); it waits, in
arrival order, up to the queue timeout (then 503 with Retry-After) or until its client leaves.

The request side runs alongside: ``req_done`` once its body has gone up in full (by Python or
by splice). Outcomes the client sees when a server fails (RFC 9110 §15.6), after the safe
retries (below): a refused connect -> 503; connect timeout or a server silent for
``timeouts.server`` before the response head -> 504; reset or garbage before a response head
-> 502; any failure after the head went out -> the client connection is cut, so it sees the
truncation (never padded, never hung). Error answers carry a request id; the detail is logged.

Retries (the pool's ``retries``, within its retry budget) go to another server, and only when
safe: the connection failed (nothing reached the server), or it closed before any response byte
and the request is idempotent (RFC 9110 §9.2.2) with its whole body still held. A pooled
connection the server had already closed is not a retry: the request goes again, whole, to the
same server on a fresh connection. Each failure is also counted against the server (passive
checks: ``ServerPool.failed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from ..balance.dispatch import Wait, choose, choose_again, room_for, unavailable
from ..balance.pool import ServerPool
from ..balance.queue import Ticket
from ..balance.servers import Server
from ..errors import BadGateway, GatewayTimeout, L7Error, OutOfDescriptors, ServiceUnavailable
from ..http.framing import forward_response_head, relay_fields, response_framing
from ..stats import count
from ..http.message import RequestHead, forward_request_head, relay_head
from ..net import flow
from ..net.clock import monotonic
from ..net.flow import HIGH_WATER, PEER_FULL, FlowControl
from ..net.ratelog import fd_log
from ..net.splice import Splices
from ..net.tunnel import Tunnel
from .accesslog import ERROR_TERM
from .body import CHUNK_END, RequestBody
from .ports import ClientPort, ResponseSink
from .state import Generation, SwitchState
from .upstream import ConnectionPool, UpstreamConnection

log = logging.getLogger("l7switch")


# An exchange's phase (plain ints: the compiled build compares them as C integers, where an
# IntEnum costs a rich comparison of two objects each time).
PENDING: Final = 0  # parsed and routed; waits behind an earlier request on its client connection
BUFFERING: Final = 1  # reads the first limits.buffer_body bytes of its body before choosing a server
QUEUED: Final = 2  # waits in a pool's or server's queue for a server below its maxconn
CONNECTING: Final = 3  # a server is chosen; its connection is being opened (request bytes wait)
AWAITING: Final = 4  # connected: the request goes up as it arrives; no final response head yet
UPGRADING: Final = 5  # the server answered 101; the tunnel starts when its parser hands over
RELAYING: Final = 6  # the response head is out; the body streams through Python
SPLICING: Final = 7  # the response body crosses by splice(2)
COMPLETE: Final = 8  # the response has been read in full; the exchange ends after this read
TUNNEL: Final = 9  # after a 101: bytes both ways until either side closes
DONE: Final = 10  # answered, failed or abandoned; nothing more happens
PHASE_NAMES: Final = ("pending", "buffering", "queued", "connecting", "awaiting", "upgrading", "relaying",
                      "splicing", "complete", "tunnel", "done")

#: All bodies in BUFFERING hold at most this many bytes together (1,024 bodies of 64 KiB); past
#: it, requests connect at their head. Our bound, so that 20,000 hostile uploads cannot hold
#: 64 KiB each in memory (nginx spills to disk instead; we have no disk to spill to).
BUFFER_BUDGET = 64 * 1024 * 1024

#: Methods a request may be re-sent with after its connection closed unanswered (RFC 9110
#: §9.2.2: idempotent; the retry list of the issue and HAProxy's "retry-on" safe set).
IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class Exchange(ResponseSink):
    __slots__ = (
        "client", "gen", "state", "head", "pool", "route", "key", "seq", "phase", "server", "cpool",
        "up", "t0", "body", "resendable", "req_done", "req_splice_left", "attempts", "status",
        "resp_chunked", "resp_eof", "no_body", "resp_close", "resp_splice_left", "to_client", "splices",
        "tunnel_data", "sticky", "sticky_key", "cookies", "ticket", "retry_slot",
        "idempotent", "resent", "refusal", "buffered",
        # for the access log (proxy/accesslog.py): when the head began and was sent up, the
        # connect began, the response head came; time queued; response bytes; who ended it
        "t_head", "t_sent", "t_connect", "t_resp", "t_queued", "waited", "resp_bytes", "term",
        "cache",  # what the server said of its cache (stats.CACHE_*), for the monitor
    )

    def __init__(self, client: ClientPort, gen: Generation, state: SwitchState, head: RequestHead,
                 pool: ServerPool, route: str, key: str | None = None, now: float = 0.0) -> None:
        self.client = client
        self.gen = gen  # the rules and pools this request was routed with, kept to its end
        self.state = state
        self.head = head
        self.pool = pool
        self.route = route  # rule label, for logs and stats
        self.key = key  # what the pool's scheduler picks on (hash_key), None if it needs nothing
        state.requests += 1
        self.seq = state.requests  # for the request id
        self.phase = PENDING
        self.server: Server | None = None  # counted in flight (pool.begin) while set
        self.cpool: ConnectionPool | None = None
        self.up: UpstreamConnection | None = None
        self.t0 = now or monotonic()  # (``now``: the client read's clock stamp, ClientPort.now)
        has_body = head.chunked or bool(head.content_length)
        self.body = RequestBody(head.chunked, gen.max_body_bytes) if has_body else None
        self.resendable = False  # sent on a reused connection that has not answered yet
        self.req_done = not has_body  # the request has gone up in full (or is on its way)
        self.req_splice_left = 0
        self.attempts = 0  # servers tried (a resend on a stale pooled connection is not one)
        self.idempotent = head.method in IDEMPOTENT and head.upgrade is None
        self.ticket: Ticket | None = None  # while QUEUED
        self.retry_slot = False  # counted in the pool's retries in flight (the retry budget)
        self.resent = False  # went again after a pooled connection died unanswered
        self.status = 0
        self.resp_chunked = False  # we frame the body to the client as chunked
        self.resp_eof = False  # the server's body ends when it closes (RFC 9112 §6.3(8))
        self.no_body = False  # HEAD, 204, 304
        self.resp_close = not head.keep_alive  # the client connection closes after this response
        self.resp_splice_left = 0
        self.to_client: list[bytes] = []
        self.splices: Splices | None = None  # once a body crosses by splice
        self.tunnel_data = b""  # client bytes after an Upgrade request, held until the 101
        # Persistence (pools that have it): the server the request names, the table key the
        # choice is recorded under, the Cookie values to forward (None: as is).
        self.sticky: Server | None = None
        self.sticky_key: str | None = None
        self.cookies: list[bytes] | None = None
        #: Answered with this instead when its turn comes (429: over the client's request rate).
        self.refusal: L7Error | None = None
        self.buffered = 0  # body bytes counted in state.buffered while BUFFERING
        self.t_head = self.t_sent = self.t_connect = self.t_resp = self.t_queued = self.waited = 0.0
        self.resp_bytes = 0
        self.cache = 0
        self.term = ""  # set where a failure is not the switch's own answer ("client", "server")

    @property
    def request_id(self) -> str:
        return self.state.request_id(self.seq)

    # ---- choosing a server and connecting ------------------------------------------------------
    def start(self, now: float = 0.0) -> None:
        """Its turn on the client connection: choose a server and get a connection to it.
        ``now``: the clock, if the caller has just read it (one client read: one stamp)."""
        if self.refusal is not None:
            # Answered in order like any other; not logged here (the guard paces those lines).
            # An Upgrade's bytes after its head would be read as HTTP: close after it.
            self._finish(self.refusal, not self.req_done or self.resp_close or self.head.upgrade is not None)
            return
        body = self.body
        if body is not None:
            if self.buffered:
                self._unbuffer()
            if (not self.req_done and body.held is not None and body.held_size < self.gen.buffer_body
                    and not self.head.expect_continue and self.head.upgrade is None
                    and self.state.buffered < BUFFER_BUDGET):
                self.phase = BUFFERING  # request_body / request_complete call start() again
                return
        persist = self.pool.persistence
        if persist is None:
            server = self.pool.pick(self.key)  # (dispatch.choose without persistence, inlined)
            if server is not None and (not server.maxconn or server.inflight < server.maxconn):
                self._use(server, now)
                return
            choice = (room_for(self.pool, server, self.key, None, False, None) if server is not None
                      else unavailable(self.pool))
        else:
            self.sticky, self.sticky_key, self.cookies = persist.sticky(self.head.headers,
                                                                        self.client.peer_ip)
            choice = choose(self.pool, self.key, persist, self.sticky, self.sticky_key)
        if isinstance(choice, str):
            self.fail(ServiceUnavailable(choice))
        elif isinstance(choice, Wait):
            self._wait(choice.server)
        else:
            self._use(choice)

    # ---- waiting for a slot (balance/queue.py) ----------------------------------------------------
    def _wait(self, server: Server | None) -> None:
        queue = self.pool.queue
        self.t_queued = now = monotonic()
        ticket = queue.push(self, server, now)
        if ticket is None:
            self.fail(ServiceUnavailable(f"queue of pool '{self.pool.name}' full ({queue.max} waiting)",
                                         retry_after=max(1, round(queue.timeout))))
            return
        self.ticket = ticket
        self.phase = QUEUED
        self.state.clock.watch(ticket)

    def dequeued(self, server: Server) -> None:
        """A slot on ``server`` is ours (balance/queue.Waiter)."""
        self._unqueued()
        persist = self.pool.persistence
        if persist is not None:
            persist.after_pick(server, self.sticky_key)
        self._use(server)

    def requeue(self) -> None:
        """The server this request waited for went down: it chooses again, as if new."""
        self._unqueued()
        self.start()

    def queue_expired(self) -> None:
        ticket = self._unqueued()
        where = f"server '{ticket.server.name}'" if ticket is not None and ticket.server else "a server"
        queue = self.pool.queue
        self.fail(ServiceUnavailable(f"waited {queue.timeout:g}s in pool '{self.pool.name}' queue for {where}",
                                     retry_after=max(1, round(queue.timeout))))

    def _unqueued(self) -> Ticket | None:
        """Out of the queue (or leaving it): the clock stops watching its ticket."""
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            self.state.clock.unwatch(ticket)
            self.waited += monotonic() - self.t_queued
        return ticket

    def _use(self, server: Server, now: float = 0.0) -> None:
        self.phase = CONNECTING
        self.server = server
        self.attempts += 1
        self.pool.begin(server)
        self.t_connect = now = now or monotonic()
        self.cpool = cpool = self.gen.cpools[server]
        conn = cpool.acquire()
        if conn is not None:
            self._attach(conn, now)
        else:
            self._open(cpool)

    def _open(self, cpool: ConnectionPool) -> None:
        cpool.open(self.gen.timeouts.connect, self._connected, self._connect_failed)

    def _connected(self, conn: UpstreamConnection) -> None:
        if self.phase == DONE:
            assert self.cpool is not None
            self.cpool.release(conn)  # the client left meanwhile: the fresh connection is still good
        else:
            self._attach(conn)

    def _connect_failed(self, err: L7Error, refused: bool) -> None:
        assert self.cpool is not None
        server = self.cpool.server  # (self.server is None if the client left meanwhile)
        if isinstance(err, OutOfDescriptors):
            # Our fds ran out, not the server: no failure against it, no other server tried.
            self.fail(err)  # (nothing if the client left meanwhile)
            return
        server.failures += 1
        self.pool.failed(server, err.detail)
        if self.phase == DONE:
            return  # the client left meanwhile; client_lost already ended the request
        if self.resent and not self.idempotent:
            # Its first sending died on a pooled connection: the server may have taken it, so a
            # non-idempotent request is never sent to a second server (RFC 9112 §9.3.1).
            self._end_server()
            self.fail(BadGateway(f"{err.detail}; not sent elsewhere: {server.name} may have "
                                 "received it on the pooled connection that closed"))
            return
        # Refused or timed out, the connection failed: nothing reached the server, so any
        # request may go to another one. A refusal costs the pool nothing (the request never
        # ran anywhere; a dead server refuses until a check masks it), so it is outside the
        # retry budget, which guards against retries adding load to servers already failing.
        self._retry(server, err, budgeted=not refused)

    def _retry(self, failed: Server, err: L7Error, budgeted: bool = True) -> None:
        """Send the request to another server (the caller made sure that is safe), or fail it."""
        pool = self.pool
        self._end_server()
        if budgeted and not pool.retry_allowed():
            err.detail += f"; retry budget of pool '{pool.name}' spent"
            self.fail(err)
            return
        choice = choose_again(pool, self.key, pool.persistence, self.sticky, self.sticky_key,
                              failed, self.attempts)
        if isinstance(choice, str):
            err.detail += f"; {choice}"
            self.fail(err)
            return
        failed.retries += 1
        choice.redispatches += 1
        pool.retries += 1
        if budgeted:
            pool.retrying += 1
            self.retry_slot = True
        body = self.body
        if body is not None and body.held is None:
            body.resend()
        if choice.full:
            self._wait(choice)  # (its own server queue: it was picked for this request)
        else:
            self._use(choice)

    def _end_server(self) -> None:
        """The request no longer occupies its server's slot (nor a retry's place in the budget)."""
        server, self.server = self.server, None
        if self.retry_slot:
            self.retry_slot = False
            self.pool.retrying -= 1
        if server is not None:
            self.pool.end(server)

    def _attach(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        self.up = conn
        conn.owner = self  # (its head counters were reset when it was pooled or made)
        self.phase = AWAITING
        client = self.client
        cf, uf = client.flow, conn.flow
        assert uf is not None
        # Each side's full write buffer now pauses the other's reading (FlowControl.link,
        # inlined: this runs for every request). A client that stopped reading during an
        # earlier response pauses this server connection from the start; a pooled or new
        # connection has nothing buffered.
        cf.peer, uf.peer = uf, cf
        if not cf.writable:
            uf.pause_reading(PEER_FULL)
        # While the body is still coming, the client's pace governs (timeouts.client); the
        # server owes us nothing yet.
        self.t_sent = now = now or monotonic()
        conn.deadline = now + self.gen.server_timeout if self.req_done else 0.0
        gen = self.gen
        head = forward_request_head(self.head, client.peer_ip, client.proto, self.head.chunked,
                                    self.cookies, gen.id_header, gen.id_name, self.state.id_bytes, self.seq)
        # A reused connection may turn out to be one the server has just closed: what is sent
        # is kept until the server answers, so the request can go again, whole.
        self.resendable = conn.reused and self.head.upgrade is None
        body = self.body
        if body is None:
            t = conn.transport
            if conn.reused and t is not None:
                t.write(head)  # (taken from the pool just now: acquire() saw it open)
            else:
                conn.write(head)
            return
        if body.held_size > HIGH_WATER:
            client.flow.resume_reading(PEER_FULL)  # held while connecting; the link takes over
        held = body.connected(self.resendable or self.idempotent)
        if held:
            conn.writelines([head, *held])
        else:
            conn.write(head)
        if self.req_splice_left and not self.req_done and not client.feeding:
            # Inside a parser callback the current read's body bytes are still to come through
            # on_body; after_client_feed starts the splice once the parser has consumed them.
            self._start_request_splice()

    # ---- request side ---------------------------------------------------------------------------
    def plan_request_splice(self) -> None:
        """At the request head: a large known-length body crosses by splice (never over TLS:
        the socket carries ciphertext)."""
        at = self.gen.splice_threshold
        cl = self.head.content_length
        if (at is not None and cl is not None and cl >= at and not self.head.expect_continue
                and not self.client.tls):
            self.req_splice_left = cl  # reduced by what the first read already carried

    def request_body(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        if body.add(data):
            self.client.flow.pause_reading(PEER_FULL)  # no server yet: stop reading the client
        if self.phase == BUFFERING:
            n = len(data)
            self.buffered += n
            self.state.buffered += n
            if body.held_size >= self.gen.buffer_body:
                self.start()

    def _unbuffer(self) -> None:
        self.state.buffered -= self.buffered
        self.buffered = 0

    def request_complete(self) -> None:
        if self.req_done:
            return
        self.req_done = True
        if self.body is not None and self.head.upgrade is None:  # (an Upgrade's body is the tunnel's)
            self.body.end()
        up = self.up
        if up is not None and self.phase == AWAITING:
            up.deadline = monotonic() + self.gen.server_timeout  # now the server owes an answer
        elif self.phase == BUFFERING:
            self.start()  # the whole body is here
        if self.phase == COMPLETE:
            self._finish()

    def after_client_feed(self) -> None:
        """Write what one client read produced, as one write."""
        up, body = self.up, self.body
        if up is None or body is None:
            return
        if body.batch:
            up.writelines(body.take_batch())
        if self.req_splice_left and not self.req_done and not self.splices:
            self._start_request_splice()

    def _start_request_splice(self) -> None:
        body, up = self.body, self.up
        assert body is not None and up is not None and up.flow is not None
        left = (self.head.content_length or 0) - body.received
        if left <= 0:
            self.req_splice_left = 0
            return
        self.req_splice_left = left
        self.resendable = False  # spliced bytes never pass through Python: no resend is possible
        self.client.flow.pause_reading(flow.SPLICING)
        if body.batch:
            up.writelines(body.take_batch())
        self._splice_when_drained(self.client.flow, up.flow, left, self._request_spliced,
                                  self._request_unspliced)

    def _request_unspliced(self) -> None:
        """The splice could not start (nothing moved): the body goes on through the parser."""
        if self.req_done or not self.req_splice_left:
            return
        self.req_splice_left = 0  # (after_client_feed will not retry)
        self.client.flow.resume_reading(flow.SPLICING)

    def _request_spliced(self, moved: int, error: BaseException | None) -> None:
        assert self.body is not None
        self.body.received += moved
        self.req_splice_left = 0
        if error is not None:
            self.client.abort()
            return
        self.client.request_spliced()
        self.client.flow.resume_reading(flow.SPLICING)
        self.request_complete()

    # ---- response side (ports.ResponseSink, called by UpstreamConnection) ----------------------
    def response_head(self, status: int, lines: list[bytes]) -> None:
        up = self.up
        if self.phase != AWAITING:
            if up is not None:
                up.keep_alive = False  # a second response to one request: in doubt
            return
        if 100 <= status < 200 and status != 101:
            # RFC 9110 §15.2: forward 1xx, but never to an HTTP/1.0 client.
            if self.head.version == "1.1":
                self.to_client.append(forward_response_head(status, b"", lines, b"", False))
            return
        server = self.server
        self.t_resp = now = up.now if up is not None else monotonic()  # (the read's clock stamp)
        if server is not None:
            server.record_latency(now - self.t0)
            if server.errors or self.pool.observe_l7:
                self.pool.answered(server, status)
        body = self.body
        if body is not None:
            body.kept = None  # answered: the request will not be sent again
        self.status = status
        if status == 101:
            if self.head.upgrade is None:
                self.upstream_failed("101 to a request that asked for no upgrade")
                return
            self.phase = UPGRADING
            self.to_client.append(forward_response_head(101, b"", lines, b"", False,
                                                         upgrade=self.head.upgrade))
            return
        if self.head.upgrade is not None:
            # The server declined the upgrade: answer normally, then close both connections
            # (a tunnel starts only after a real 101).
            self.resp_close = True
            if up is not None:
                up.keep_alive = False
        persist = self.pool.persistence
        # Set-Cookie added, or edited (rewrite/prefix: so before the lines are read); still one
        # head and one write.
        extra = b""
        if persist is not None and server is not None:
            extra, lines = persist.response(server, self.sticky, lines)
        fields, length, chunked, self.cache = relay_fields(lines)  # one pass over the fields
        framing, self.resp_chunked, self.resp_eof, self.no_body, self.resp_close, length = \
            response_framing(self.head.method, self.head.version, status, length, chunked, self.resp_close)
        if self.resp_eof and up is not None:
            up.keep_alive = False  # the body ends with the connection
        if length is not None:
            at = self.gen.splice_threshold
            if at is not None and length >= at and not self.client.tls:
                self.resp_splice_left = length
        if self.client.closing_after and self.client.last_response():
            self.resp_close = True
        self.phase = RELAYING
        self.to_client.append(relay_head(status, fields, framing, self.resp_close, extra))

    def response_body(self, data: bytes) -> None:
        if self.no_body or self.phase != RELAYING:
            if self.up is not None:
                self.up.keep_alive = False  # bytes where none belong
            return
        n = len(data)
        self.resp_bytes += n
        if self.resp_splice_left:
            self.resp_splice_left -= n
        if self.resp_chunked:
            self.to_client.extend((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.to_client.append(data)

    def response_complete(self) -> None:
        # AWAITING: the end of an interim (1xx) response. UPGRADING: llhttp always pauses right
        # after a 101 (HttpParserUpgrade), and response_upgraded starts the tunnel.
        if self.phase != RELAYING:
            return
        self.phase = COMPLETE
        self.resp_splice_left = 0
        if self.resp_chunked:
            self.to_client.append(CHUNK_END)

    def after_upstream_feed(self, now: float = 0.0) -> None:
        if self.phase == DONE:
            return
        self.resendable = False  # the server answered: the connection was not stale
        if self.to_client:
            out, self.to_client = self.to_client, []
            self.client.writelines(out)
        up = self.up
        if up is None:
            return
        if self.no_body and self.phase == RELAYING:
            up.reset_parser()  # llhttp cannot know the request was HEAD; the response ends here
            self.phase = COMPLETE
        if self.phase == COMPLETE:
            if not self.req_done:
                # Answered before the request body ended (e.g. an early 413): neither
                # connection can be trusted to be at a message boundary.
                self.resp_close = True
                up.keep_alive = False
            self._finish(now=now)  # (not up.now: after a splice that read is long past)
        elif self.phase == RELAYING and self.resp_splice_left > 0:
            self._start_response_splice()

    def _start_response_splice(self) -> None:
        up = self.up
        assert up is not None and up.flow is not None
        left = self.resp_splice_left
        self.resp_splice_left = 0
        self.phase = SPLICING
        up.flow.pause_reading(flow.SPLICING)
        self._splice_when_drained(up.flow, self.client.flow, left, self._response_spliced,
                                  self._response_unspliced)

    def _response_unspliced(self) -> None:
        """The splice could not start (nothing moved): the body goes on through Python, parsed."""
        up = self.up
        if up is None or up.flow is None or self.phase != SPLICING:
            return
        self.phase = RELAYING  # (resp_splice_left is 0: after_upstream_feed will not retry)
        up.flow.resume_reading(flow.SPLICING)

    def _response_spliced(self, moved: int, error: BaseException | None) -> None:
        self.resp_bytes += moved
        up = self.up
        if error is not None or up is None or up.flow is None:
            self._abort_both()
            return
        up.reset_parser()
        up.flow.resume_reading(flow.SPLICING)
        self.phase = COMPLETE
        self.after_upstream_feed()

    def _splice_when_drained(self, src: FlowControl, dst: FlowControl, nbytes: int,
                             on_done: Callable[[int, BaseException | None], None],
                             refused: Callable[[], None]) -> None:
        """Splice ``nbytes`` from src to dst once dst's write buffer is empty (byte order);
        ``refused()`` if the job cannot start. (Short of pipes or fds, a started job copies
        through Python itself, counting the same bytes: the message boundary does not move.)"""
        splices = self.splices
        if splices is None:
            splices = self.splices = Splices(self.state.loop or asyncio.get_running_loop())
        # Whatever ended the exchange meanwhile (client gone, server lost) has finished it.
        splices.start(src, dst, nbytes, on_done, lambda: self.phase != DONE and self.up is not None,
                      refused)

    def response_upgraded(self, leftover: bytes) -> None:
        """The server answered 101: both connections become one tunnel."""
        up, client = self.up, self.client
        if self.phase != UPGRADING or up is None or up.flow is None:
            self.upstream_failed("unexpected protocol switch")
            return
        self.phase = TUNNEL
        if self.to_client:
            out, self.to_client = self.to_client, []
            client.writelines(out)
        up.deadline = 0.0  # tunnels live until either side closes
        up.owner = None
        loop = self.state.loop or asyncio.get_running_loop()
        tunnel = Tunnel(loop, client.flow, up.flow, self._tunnel_ended, self.state.clock,
                        self.gen.timeouts.tunnel)
        up.tunnel = tunnel
        client.tunnel_started(tunnel)
        if leftover:
            tunnel.to_client(leftover)
        if self.tunnel_data:
            tunnel.to_server(self.tunnel_data)
            self.tunnel_data = b""
        if not (self.gen.splice.enabled and tunnel.splice()):
            tunnel.relay()  # TLS on the client side, or splice off

    def _tunnel_ended(self) -> None:
        if self.phase == DONE:
            return
        self.phase = DONE
        self._account(self.status, monotonic())
        self._end_server()
        self.up = None  # the tunnel has closed it
        self.client.exchange_finished(self, None, "", True)

    # ---- timing -----------------------------------------------------------------------------------
    def upstream_timeout(self) -> bool:
        """The server was silent for timeouts.server. A body crossing by splice moves without
        Python seeing it: while it makes progress, that is not silence."""
        if self.spliced_progress():
            return True
        self._drop_up()
        server = self.server
        if server is not None:
            server.failures += 1
            if self.phase < RELAYING:
                self.pool.failed(server, "response head timeout")
        if self.phase >= RELAYING:
            self._abort_both()
        else:
            self.fail(GatewayTimeout(f"no response from {self._where()} within "
                                     f"{self.gen.server_timeout:g}s"))
        return False

    def spliced_progress(self) -> bool:
        """Have the splice jobs moved bytes since the last look?"""
        return self.splices is not None and self.splices.progressed()

    def spliced_bytes(self) -> int:
        """Bytes the running splice jobs have moved: a spliced request body's progress, which
        the frontend's pace counts (a job's bytes join ``body.received`` when it ends)."""
        splices = self.splices
        return splices.moved if splices is not None else 0

    def upstream_writable(self, writable: bool) -> None:
        """The server stopped reading what we send (its silence counts from now), or resumed."""
        up = self.up
        if up is None:
            return
        if not writable:
            up.deadline = monotonic() + self.gen.server_timeout
        elif not self.req_done and self.phase == AWAITING:
            up.deadline = 0.0  # back to the client's pace

    def client_writable(self, writable: bool) -> None:
        """The client stopped reading (we stop reading the server, so its silence is ours and
        timeouts.client applies instead), or resumed."""
        up = self.up
        if up is None or self.phase not in (AWAITING, RELAYING):
            return
        up.deadline = monotonic() + self.gen.server_timeout if writable else 0.0

    # ---- failures ---------------------------------------------------------------------------------
    def upstream_lost(self, exc: Exception | None) -> None:
        """The server's connection closed (it has already let go of us)."""
        if self.phase == DONE:
            return
        up, self.up = self.up, None
        if self.splices:
            return  # the splice job sees the EOF or error itself and reports it
        self.client.flow.unlink()  # nothing to pace against a dead connection
        if self.phase == RELAYING and self.resp_eof:
            self.phase = COMPLETE  # a close-delimited body ends here (RFC 9112 §6.3(8))
            if self.resp_chunked:
                self.to_client.append(CHUNK_END)
            self.after_upstream_feed()
            self._finish()
            return
        if self.phase >= RELAYING:
            self._abort_both()  # truncated: the client must see an incomplete message
            return
        body = self.body
        if (up is not None and self.resendable and not up.got_bytes
                and (body is None or body.kept is not None)):
            # A pooled keep-alive connection the server had already closed: nothing reached
            # it, so the request goes again, whole, on a fresh connection (RFC 9112 §9.3.1).
            if body is not None:
                body.resend()
            self.resendable = False
            self.resent = True
            self.phase = CONNECTING
            assert self.cpool is not None
            self._open(self.cpool)
            return
        err = BadGateway(f"{self._where()} closed the connection before responding")
        server = self.server
        if server is None:
            self.fail(err)
            return
        server.failures += 1
        self.pool.failed(server, "connection closed before a response")
        if (self.idempotent and (up is None or not up.got_bytes) and not self.req_splice_left
                and (body is None or body.kept is not None)):
            self._retry(server, err)  # idempotent and whole: safe to send to another server
            return
        self.fail(err)

    def upstream_failed(self, detail: str) -> None:
        self._drop_up()
        if self.server is not None:
            self.server.failures += 1
            if self.phase < RELAYING:
                self.pool.failed(self.server, detail)
        if self.phase >= RELAYING:
            log.warning("%s: %s: %s; response cut", self.request_id, self._where(), detail)
            self._abort_both()
        else:
            self.fail(BadGateway(f"{self._where()}: {detail}"))

    def fail(self, err: L7Error) -> None:
        """Answer the client with the switch's own error response for this exchange."""
        if self.phase == DONE:
            return
        self.to_client.clear()
        rid = self.request_id
        level = logging.WARNING if err.status >= 500 else logging.INFO
        args = (rid, err.status, self.head.method.decode("latin-1"), self.head.path, self.route, err.detail)
        if isinstance(err, OutOfDescriptors):
            fd_log.log(level, "%s %d %s %s (%s): %s", *args)  # at most one a second
        else:
            log.log(level, "%s %d %s %s (%s): %s", *args)
        self._finish(err, err.close or not self.req_done or self.resp_close)

    def client_lost(self) -> None:
        """The client went away: cancel everything; the server connection is in doubt."""
        if self.buffered:
            self._unbuffer()
        if self.splices is not None:
            self.splices.cancel()
        self._drop_up()
        self._leave_queue()  # at once
        if self.phase != DONE:
            self.phase = DONE
            self._account(self.status, monotonic())
            access = self.state.access
            if access is not None:
                access.exchange(self, self.client, self.head, self.resp_bytes, self.status,
                                self.term or "client")
            self._end_server()

    def _leave_queue(self) -> None:
        ticket = self._unqueued()
        if ticket is not None:
            self.pool.queue.cancel(ticket)

    def _drop_up(self) -> None:
        """Give up on the server connection (in doubt: never pooled again)."""
        up, self.up = self.up, None
        if up is not None:
            if self.splices is not None:
                self.splices.cancel()  # out of the splice poller before the socket closes
            self.client.flow.unlink()
            up.close()

    def _abort_both(self) -> None:
        """A truncated response: the client must see an incomplete message, never a padded one."""
        self.term = self.term or "server"
        self.client_lost()
        self.client.abort()

    def _finish(self, error: L7Error | None = None, close: bool = False, now: float = 0.0) -> None:
        """The exchange is over. ``now``: the clock, if the caller has just read it."""
        if self.phase == DONE:
            return
        if not now:
            now = monotonic()
        complete = self.phase == COMPLETE
        self.phase = DONE
        if self.buffered:
            self._unbuffer()
        if self.splices is not None:
            # A request body still being spliced (the server answered early, or failed): its
            # job leaves the splice poller before the transports close or resume.
            self.splices.cancel()
        if self.ticket is not None:
            self._leave_queue()
        up, self.up = self.up, None
        if up is not None:
            if error is None and complete and self.req_done and self.cpool is not None:
                self.cpool.release(up, now)  # (which unlinks the two sides' flow control)
            else:
                self.client.flow.unlink()
                up.close()
        status = self.status if error is None else error.status
        self._account(status, now)
        access = self.state.access
        if access is not None:
            term = self.term or ("-" if error is None else ERROR_TERM.get(error.status, "switch"))
            access.exchange(self, self.client, self.head, self.resp_bytes, status, term)
        # After the release: a request waiting for this server takes the warm connection.
        self._end_server()
        self.client.exchange_finished(self, error, self.request_id if error is not None else "",
                                      close or self.resp_close or not self.req_done, now)

    def _account(self, status: int, now: float) -> None:
        """The request has ended: counted for its server (or its pool, when no server took it)
        and its listener (stats.count; the monitor and /metrics read these)."""
        body = self.body
        server = self.server
        count(server.traffic if server is not None else self.pool.unserved, self.client.traffic, status,
              body.received if body is not None else 0, self.resp_bytes,
              now - (self.t_head or self.t0), self.cache)

    # ---- introspection ------------------------------------------------------------------------------
    def _where(self) -> str:
        s = self.server
        return f"{self.pool.name}/{s.name} ({s.address})" if s is not None else f"pool {self.pool.name}"

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.request_id, "phase": PHASE_NAMES[self.phase],
                "method": self.head.method.decode("latin-1"), "path": self.head.path,
                "rule": self.route, "pool": self.pool.name,
                "server": self.server.name if self.server is not None else None,
                "status": self.status, "request_done": self.req_done}

    def __repr__(self) -> str:
        server = self.server.address if self.server else "-"
        return (f"<Exchange {self.head.method.decode()} {self.head.path} -> {self.pool.name}/{server} "
                f"{PHASE_NAMES[self.phase]} status={self.status}>")
