"""The client side: one ``ClientConnection`` per accepted socket of an HTTP listener.

It parses request heads with httptools, enforces what llhttp leaves to us (the size of a head
as its bytes arrive, the field count, the header deadline, Host rules — RFC 9112 §2-3), routes
each request with the current generation's rules, and hands it to an ``Exchange``
(exchange.py). Requests are answered strictly in order (RFC 9112 §9.3.2): a pipelined request
waits in ``queue`` (and reading pauses) until the one before it has been answered.

Timers are not per request: each connection keeps one ``deadline`` that the switch's clock
sweeps (net/clock.py), which keeps call_later handles off the hot path. What the deadline means
follows the state:

- HEAD: the head must be complete within ``timeouts.header`` from accept, and on a keep-alive
  connection from the first byte of the next request (HAProxy ``timeout http-request`` with
  ``timeout http-keep-alive``: "Once the first byte of request has been seen, the
  'http-request' timeout is used to wait for the complete request to come"). Reads do not
  extend it, so a head trickled a byte at a time still ends at the deadline: 408 and close, or
  a silent close if not a byte came (nginx closes such a connection without an answer; a 408
  nobody asked for may be taken by a browser's pre-connect as the answer to its next request).
- IDLE (keep-alive, between requests): ``timeouts.keepalive``, then a silent close (nginx and
  HAProxy). Idle connections are also the first closed under pressure (SwitchState.idle).
- BODY: ``timeouts.client`` of silence or a pace below ``limits.min_body_rate`` (pace.py), both
  looked at about once a second -> 408.
- BUSY: none while the server owes the answer (its own deadline runs); ``timeouts.client``
  while the client does not read what we write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final, cast

import httptools

from ..errors import BadRequest, HeadersTooLarge, L7Error, PayloadTooLarge, RequestTimeout
from ..http.message import (ASCII_LOWER, DEFAULT_UPGRADES, RequestHead, check_request, error_response,
                            method_name, upgrade_tokens)
from ..http.rules import RequestView
from ..net.clock import monotonic
from ..net.flow import CLOSING, HIGH_WATER, PEER_FULL, SPLICING, TURN, WAITING, FlowControl
from ..net.tunnel import TO_SERVER, Tunnel
from ..spec import ListenerSpec
from .exchange import QUEUED, RELAYING, Exchange
from .pace import BodyPace
from .ports import ClientPort
from .state import SwitchState

log = logging.getLogger("l7switch")

# Connection states, for the deadline sweep.
IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
BUSY: Final = 3
STATE_NAMES: Final = ("idle", "head", "body", "busy")
# Raw head bytes allowed beyond limits.max_header_bytes, which counts the target and the fields:
# the method, version and line ends around them.
HEAD_SLACK: Final = 256


class _NoCallbacks:
    """The parser a closed connection keeps: it refers to nothing, so the connection and its
    parser no longer form a reference cycle that only the cyclic GC could free."""


CLOSED_PARSER: Final = httptools.HttpRequestParser(_NoCallbacks())


#: How long a graceful stop leaves an idle (or not yet spoken) connection open for a request that
#: may already be on its way; a client that sends nothing meanwhile is closed. Our choice: a few
#: round trips on any network a switch fronts.
SHUTDOWN_GRACE: Final = 0.25


def http_version(parser: httptools.HttpRequestParser, keep_alive: bool, connection_field: bool) -> str:
    """The request's HTTP version, "1.1" without asking the parser when its answers already say
    so: llhttp keeps a request without a Connection field alive exactly when its version has a
    major and a minor above 0 (llhttp_should_keep_alive), and of the versions it accepts (0.9,
    1.0, 1.1, 2.0) only 1.1 has. (``get_http_version`` formats a string each call: ~2,300
    instructions, a twentieth of a compiled request.)"""
    if keep_alive and not connection_field:
        return "1.1"
    return parser.get_http_version()


def request_view(head: RequestHead) -> RequestView:
    """What the rules and a pool's key look at in a checked request head."""
    return RequestView(method_name(head.method), head.path, head.query, head.hostname, raw=head.headers)


class ClientConnection(ClientPort):
    __slots__ = (
        "switch", "upgrades", "transport", "parser", "deadline", "state",
        "exchange", "receiving", "queue", "url", "headers", "head_bytes", "head_fed",
        "pending_error", "upgrading", "tunnel", "closed", "requests", "in_trailers", "upgrade_field",
        "connection_field", "skip_head", "resume_body", "guard_key", "pace", "held", "now",
    )

    def __init__(self, switch: SwitchState, listener: ListenerSpec | None = None) -> None:
        address = listener.address if listener is not None else ""
        super().__init__(address, switch.traffic_of(address))  # flow, peer, proto, traffic...
        self.switch = switch
        self.upgrades = DEFAULT_UPGRADES if listener is None else upgrade_tokens(listener.upgrades)
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser = httptools.HttpRequestParser(self)
        self.traffic.connections += 1
        self.deadline = 0.0
        self.state = IDLE
        self.exchange: Exchange | None = None  # the exchange being answered
        self.receiving: Exchange | None = None  # the exchange whose request body is arriving
        self.queue: deque[Exchange] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0  # of the head being parsed: target and fields, as llhttp reports them
        self.head_fed = 0  # raw bytes fed while a head is incomplete (a line may never end)
        self.pending_error: L7Error | None = None
        self.upgrading: Exchange | None = None  # an Upgrade request waiting for its 101
        self.tunnel: Tunnel | None = None  # after the 101: the client's bytes go here
        self.closed = False
        self.requests = 0
        self.in_trailers = False
        self.upgrade_field = False  # the head being parsed has an Upgrade field
        self.connection_field = False  # ... a Connection field (see http_version)
        self.skip_head = False  # the parser reads a head we made up (see _resume_body)
        self.now = 0.0  # the clock when the current read came (_received)
        self.resume_body: Exchange | None = None  # an ignored Upgrade whose body llhttp skipped
        self.guard_key: str | None = None  # counted under this per-client key (limits.per_client)
        self.pace: BodyPace | None = None  # while a request body arrives (BODY)
        self.held: bytes | None = None  # first bytes waiting for their turn (state.FirstBytes)

    # ---- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.flow = FlowControl(t)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
        if transport.get_extra_info("ssl_object") is not None:
            self.tls, self.proto = True, b"https"
        sw = self.switch
        admitted, self.guard_key = sw.client_in(self, self.peer_ip)
        if not admitted:  # over its client's connection limit
            self.closed = True
            t.close()
            return
        # The first head is due timeouts.header from accept (HAProxy "timeout http-request"),
        # not timeouts.client: a connection that sends nothing, or a byte now and then, is gone
        # by then.
        self.state = HEAD
        now = monotonic()
        self.deadline = now + sw.current.header_timeout
        sw.fresh[self] = now
        sw.clock.watch(self)
        if sw.draining:
            self.closing_after = True

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.to_server(data)
            return
        if self.upgrading is not None:
            # Bytes after an Upgrade request, before the server's answer (uvloop does not honour
            # every pause): held for the tunnel, bounded.
            self.upgrading.tunnel_data += data
            if len(self.upgrading.tunnel_data) > HIGH_WATER:
                self.abort()  # a client flooding before the server even agreed to switch
            return
        if self.closed or (self.flow.paused_for & CLOSING and self.pending_error is not None):
            return  # we are closing after an error; ignore what follows
        if self.held is not None:
            self.held += data  # (uvloop does not honour every pause)
            return
        if not self.requests and not self.head_fed and self.state == HEAD:
            # A new connection's first bytes: a bounded number per loop turn (state.FirstBytes).
            if not self.switch.first.admit(self):
                self.held = data
                self.flow.pause_reading(TURN)
                return
        self._received(data)

    def take_turn(self) -> None:
        """Its first bytes' turn has come (state.FirstBytes)."""
        data, self.held = self.held, None
        if data is None or self.closed:
            return
        self.flow.resume_reading(TURN)
        self._received(data)

    def _received(self, data: bytes) -> None:
        # One clock stamp per read: the heads it completes start their exchanges with it.
        self.now = now = monotonic()
        state = self.state
        if state == IDLE:
            self._head_begins(now)
            state = HEAD
        # (BODY: the pace's looks judge silence and rate from the byte count; no store per read.)
        heads = self.requests
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            ok = self._feed_failed(data, exc)
        else:
            ok = True
        finally:
            self.feeding = False
        if ok and self.state == HEAD:
            # llhttp buffers an unfinished header line without limit and calls us only when it
            # ends: count what it is fed. A read that ended one head and began the next is not
            # counted (its split is unknown), which bounds the slack to one read.
            if state == HEAD and self.requests == heads:
                self.head_fed += len(data)
                limit = self.switch.current.max_header_bytes
                if self.head_fed > limit + HEAD_SLACK:
                    self.error(HeadersTooLarge(f"request head over {limit} bytes"))
            else:
                self.head_fed = 0
        self.flush_fed()

    def _feed_failed(self, data: bytes, exc: Exception) -> bool:
        """The parser stopped inside ``data``: an error (answered: False), an Upgrade that
        becomes a tunnel (False), or one we do not take (parsing goes on: True, unless what
        follows stops it again)."""
        while True:
            if isinstance(exc, httptools.HttpParserUpgrade):
                rest = data[exc.args[0]:] if exc.args else b""
            elif isinstance(exc, L7Error):
                self.error(exc)
                return False
            elif isinstance(exc, httptools.HttpParserError):
                # An L7Error raised inside a parser callback (431, 413, a check_request 400)
                # reaches us wrapped in HttpParserCallbackError, the original as __context__.
                ctx = exc.__context__
                self.error(ctx if isinstance(ctx, L7Error) else BadRequest(_parser_message(exc)))
                return False
            else:
                raise exc
            # llhttp runs on_message_complete (which clears self.receiving) before it pauses on
            # an upgrade: the upgrade request is the last one parsed.
            ex = self.resume_body or self.receiving or (self.queue[-1] if self.queue else self.exchange)
            if ex is not None and ex.head.upgrade is not None:
                ex.tunnel_data += rest
                ex.request_complete()
                self.receiving = None
                self.flow.pause_reading(SPLICING)
                self.upgrading = ex  # from now on client bytes belong to the tunnel
                return False
            # An Upgrade we do not take (h2c, an unlisted protocol, HTTP/1.0): llhttp stopped
            # at the end of its head as if switching; go on parsing as HTTP/1.1.
            if self.resume_body is not None:
                self._resume_body(self.resume_body)
            if not rest:
                return True
            data = rest
            try:
                self.parser.feed_data(data)
                return True
            except Exception as again:
                exc = again

    def _resume_body(self, ex: Exchange) -> None:
        """llhttp skipped the body of an Upgrade request (it expected the new protocol there).
        Feed the parser a made-up head with the same framing, its callbacks ignored, so it reads
        that body for ``ex`` and then the requests after it, byte-exact as usual."""
        self.resume_body = None
        framing = (b"Transfer-Encoding: chunked\r\n" if ex.head.chunked
                   else b"Content-Length: %d\r\n" % (ex.head.content_length or 0))
        self.skip_head = True
        self.headers = []
        self.parser.feed_data(b"POST / HTTP/1.1\r\nHost: resume\r\n" + framing + b"\r\n")
        self.receiving = ex

    def flush_fed(self) -> None:
        """Send on what one client read produced for the server(s), also when the read ended in
        an error or an upgrade: an earlier pipelined request's body bytes from the same read
        would otherwise never reach its server, which then waits for them forever."""
        ex = self.receiving or self.exchange
        if ex is not None:
            ex.after_client_feed()
        if self.exchange is not None and self.exchange is not ex:
            self.exchange.after_client_feed()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.eof(TO_SERVER)
        if self.tls:
            return None  # close_notify: TLS has no half-close, the transport closes either way
        ex = self.exchange
        if ex is not None and ex.phase == QUEUED and not self.queue:
            # Waiting for a server slot and the client closed: it has most likely given up, so
            # the request leaves the queue now instead of taking a slot a live client waits
            # for (HAProxy's "option abortonclose", which its manual recommends with queues).
            ex.client_lost()  # (connection_lost, which follows, tidies the connection's side)
            return None
        if ex is not None and ex is self.receiving and not ex.req_done and ex.phase < RELAYING:
            # The body it announced can never be complete (RFC 9112 §8: an incomplete message)
            # and nothing has been answered yet: give up now, rather than leave the server (or
            # the buffer) waiting for bytes until a timeout.
            log.info("%s from %s: client closed in the request body", ex.request_id, self.peer_ip)
            ex.client_lost()
            return None
        # A client may half-close after its last request (RFC 9112 §9.6); keep the write side
        # open until what it asked for has been answered.
        if self.exchange is not None or self.queue:
            self.closing_after = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = CLOSED_PARSER
        sw = self.switch
        sw.clock.unwatch(self)
        sw.idle.pop(self, None)
        sw.fresh.pop(self, None)
        if self.held is not None:
            sw.first.forget(self)
            self.held = None
        key, self.guard_key = self.guard_key, None
        sw.client_out(self, key)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.lost(exc)
        for ex in (self.exchange, *self.queue):
            if ex is not None:
                ex.client_lost()
        self.exchange = self.receiving = self.upgrading = self.resume_body = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        # The client stopped reading: timeouts.client is how long it may stay so. (While its
        # body arrives the pace's looks go on: a client sending is not silent.)
        if self.state != BODY:
            self.deadline = monotonic() + self.switch.current.client_timeout
        if self.exchange is not None:
            self.exchange.client_writable(False)

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.state == BUSY:
            self.deadline = 0.0
        elif self.state == IDLE:
            self.deadline = monotonic() + self.switch.current.keepalive_timeout
        if self.exchange is not None:
            self.exchange.client_writable(True)

    # ---- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.skip_head:
            return
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.in_trailers = False
        self.upgrade_field = False
        self.connection_field = False
        if self.state == IDLE:
            self._head_begins(self.now)  # (a later pipelined head)

    def _head_begins(self, now: float) -> None:
        """The next request's first byte came while idle: its head is due timeouts.header from
        ``now``, and the connection is no longer among the idle ones."""
        self.state = HEAD
        self.deadline = now + self.switch.current.header_timeout
        idle = self.switch.idle
        if self in idle:  # (compiled: two C calls; dict.pop is a method call by name)
            del idle[self]

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        limit = self.switch.current.max_header_bytes
        if self.head_bytes > limit:
            raise HeadersTooLarge(f"request line over {limit} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            return  # RFC 9110 §6.5.1: trailer fields are not merged into the header section
        self.head_bytes += len(name) + len(value) + 4
        gen = self.switch.current
        if self.head_bytes > gen.max_header_bytes:
            raise HeadersTooLarge(f"header section over {gen.max_header_bytes} bytes")
        headers = self.headers
        if len(headers) >= gen.max_headers:
            raise HeadersTooLarge(f"more than {gen.max_headers} header fields")
        # llhttp drops leading OWS but keeps trailing OWS; RFC 9110 §5.5 excludes both from the
        # field value. Rules must match (and the server get) the value a server would parse.
        if value and value[len(value) - 1] in (32, 9):
            value = value.rstrip(b" \t")
        name = name.translate(ASCII_LOWER)
        if name == b"upgrade":
            self.upgrade_field = True
        elif name == b"connection" or name == b"proxy-connection":  # (http_parser read both)
            self.connection_field = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_trailers = True
        if self.skip_head:
            self.skip_head = False  # the made-up head of _resume_body: its body is the real one
            return
        parser = self.parser
        self.requests += 1
        method = parser.get_method()
        # llhttp upgrades on an Upgrade field (with Connection: upgrade) or CONNECT; without
        # either, no need to ask it (a method call per request).
        upgrade = (self.upgrade_field or method == b"CONNECT") and parser.should_upgrade()
        keep_alive = parser.should_keep_alive()
        version = http_version(parser, keep_alive, self.connection_field)
        head = check_request(method, self.url, self.headers, version, keep_alive, upgrade, self.upgrades)
        if self.closing_after:
            head.keep_alive = False
        gen = self.switch.current
        limit = gen.max_body_bytes
        if limit is not None and head.content_length is not None and head.content_length > limit:
            # Refuse at the head: a body at/above splice.threshold never passes request_body's check.
            raise PayloadTooLarge(f"request body over {limit} bytes")
        # The view the rules and the pool's key look at, made only if something will.
        router = gen.router
        view = None
        if router.rules:
            view = request_view(head)
            rule, pool_name = router.route(view)
        else:
            rule, pool_name = None, router.default_pool
        pool = gen.pools[pool_name]
        key = None
        if pool.keyfn is not None:
            key = pool.keyfn(view if view is not None else request_view(head), self.peer_ip)
        ex = Exchange(self, gen, self.switch, head, pool, rule.label if rule is not None else "default", key,
                      self.now)
        ex.t_head = self.deadline - gen.header_timeout  # (the head was due timeouts.header from its start)
        if self.guard_key is not None:
            ex.refusal = self.switch.rate_check(self.guard_key, self.peer_ip)  # 429 over the client's rate
        self.receiving = ex
        if ex.body is not None:
            if upgrade and head.upgrade is None:
                self.resume_body = ex  # llhttp skips this body; _resume_body has it read (no splice)
            else:
                ex.plan_request_splice()
        if self.exchange is None:
            self.exchange = ex
            self._set_state(ex)
            ex.start(self.now)
        else:
            self.queue.append(ex)
            self.flow.pause_reading(WAITING)  # answer in order (RFC 9112 §9.3.2)

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        if self.resume_body is not None:
            return  # llhttp's "end" of an Upgrade request whose body it skipped: not the end
        ex = self.receiving
        self.receiving = None
        if self.state == BODY:
            self._busy()
        if ex is not None:
            ex.request_complete()

    # ---- called by exchanges (ports.ClientPort), the clock and the switch ------------------------
    def exchange_finished(self, ex: Exchange, error: L7Error | None, request_id: str, close: bool,
                          now: float = 0.0) -> None:
        if ex is not self.exchange:
            return
        transport = self.transport
        if transport is None or self.closed:
            return
        if error is not None:
            transport.write(error_response(error.status, request_id, error.detail if error.public else "",
                                           close, error.retry_after))
        self.exchange = None
        if ex is self.receiving:
            self.receiving = None
        if (self.pending_error is not None and not self.queue and ex.head.keep_alive
                and not (ex.resp_eof and not ex.resp_chunked)):
            # A later pipelined request was bad: answer it (after this self-delimited
            # response) before closing, instead of dropping it silently.
            self._send_error(self.pending_error)
            return
        if close or (self.closing_after and not self.queue):
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.exchange = nxt
            self._set_state(nxt)
            if not self.queue:
                self.flow.resume_reading(WAITING)
            nxt.start(now)
            return
        if self.pending_error is not None:
            self._send_error(self.pending_error)
            return
        self.state = IDLE
        gen = self.switch.current
        # Keep-alive idle: timeouts.keepalive (HAProxy "timeout http-keep-alive"); a client that
        # has not read the last response yet is not idle but not reading: timeouts.client.
        if not now:
            now = monotonic()
        self.deadline = now + (gen.keepalive_timeout if self.flow.writable else gen.client_timeout)
        self.switch.idle[self] = now  # the newest idle, last to go under pressure

    def last_response(self) -> bool:
        """Only the last response before a close says Connection: close: pipelined requests
        queued behind it, or a bad one waiting for its 400, are still to be answered."""
        return self.closing_after and not self.queue and self.pending_error is None

    def request_spliced(self) -> None:
        """A request body crossed by splice: the parser's state is stale, and the request is
        complete as far as this connection is concerned."""
        self.parser = httptools.HttpRequestParser(self)
        if self.state == BODY:
            self._busy()

    def tunnel_started(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.upgrading = None
        self.deadline = 0.0  # tunnels live until either side closes

    def _set_state(self, ex: Exchange) -> None:
        """State and deadline follow the exchange being served, never a queued one: reading is
        paused while a request waits its turn, so its body cannot be expected meanwhile."""
        if ex.req_done:
            self._busy()
        else:
            self.state = BODY
            now = monotonic()
            self.pace = BodyPace(now, self._body_total(ex))
            self.deadline = now + BodyPace.step(self.switch.current.client_timeout)

    def _busy(self) -> None:
        """The request is in: the server owes the answer (its deadline runs), unless the
        client is not reading what we write (then timeouts.client)."""
        self.state = BUSY
        self.pace = None
        self.deadline = 0.0 if self.flow.writable else monotonic() + self.switch.current.client_timeout

    @staticmethod
    def _body_total(ex: Exchange) -> int:
        """Request body bytes the client has delivered: read by Python, or moved by splice."""
        body = ex.body
        return (body.received if body is not None else 0) + ex.spliced_bytes()

    def error(self, err: L7Error) -> None:
        """A bad request: answer in order, then close (framing is in doubt)."""
        self.flow.pause_reading(CLOSING)
        ex = self.receiving
        if ex is not None and ex is not self.exchange:
            # A queued request whose body went wrong: drop it, answer the earlier ones first.
            try:
                self.queue.remove(ex)
            except ValueError:
                pass
        self.receiving = None
        self.resume_body = None
        if self.exchange is not None:
            if self.exchange.phase >= RELAYING or ex is not self.exchange:
                self.pending_error = err
                self.closing_after = True
                return
            # The exchange whose request is broken: it gets the error as its answer.
            cur = self.exchange
            cur.client_lost()
            self.exchange = None
        self._send_error(err)

    def _send_error(self, err: L7Error) -> None:
        rid = self.switch.request_id(self.switch.next_request())
        log.info("%s %d from %s: %s", rid, err.status, self.peer_ip, err.detail)
        access = self.switch.access
        if access is not None:
            access.refused(self.peer_ip, self.peer_port, self.listener, err.status, rid)
        if self.transport is not None and not self.closed:
            self.transport.write(error_response(err.status, rid, err.detail if err.public else "",
                                                close=True))
        self.close()

    def on_deadline(self, now: float) -> None:
        state = self.state
        if state == IDLE:
            self.switch.idle.pop(self, None)
            self.drop_idle()  # keep-alive idle: silent close, as nginx and HAProxy do
        elif state == HEAD:
            if self.silent():
                self.close()  # not a byte since accept: nothing to answer (as nginx)
            else:
                self.error(RequestTimeout("request header not received in time"))
        elif state == BODY:
            self._look_at_body(now)
        else:
            self.abort()  # stalled mid-response: the client stopped reading

    def _look_at_body(self, now: float) -> None:
        ex, pace = self.exchange, self.pace
        gen = self.switch.current
        if ex is None or pace is None:
            self.error(RequestTimeout("request body stalled"))
            return
        total = self._body_total(ex)
        if self.flow.paused_for & PEER_FULL:
            # We stopped reading it (no server connection yet, or the server is not taking the
            # body): not the client's silence.
            pace.excuse(now, total)
            why = None
        else:
            why = pace.look(now, total, gen.client_timeout, gen.limits.min_body_rate)
        if why is None:
            self.deadline = now + BodyPace.step(gen.client_timeout)
        elif ex.phase < RELAYING:
            self.error(RequestTimeout(why))
        else:
            log.info("%s from %s: %s; connection cut", ex.request_id, self.peer_ip, why)
            self.abort()  # the response has begun: it cannot become a 408

    def silent(self) -> bool:
        """Not a byte since accept (state.IdleClient)."""
        return (not self.requests and not self.head_fed and self.held is None and self.state == HEAD
                and not self.closed)

    def drop_idle(self) -> None:
        """Close a keep-alive connection between requests (expired, or evicted under pressure):
        silently; aborted if the client has not read the last response, whose unsent bytes
        would otherwise keep the socket open."""
        if self.flow is not None and not self.flow.writable:
            self.abort()
        else:
            self.close()

    def shutdown(self) -> None:
        """Graceful stop: close after the current response, or — idle, or nothing came since
        accept — after SHUTDOWN_GRACE if still so: a request already on its way (a keep-alive
        client's next one, or the first of a connection accepted just before the stop) is then
        answered, with Connection: close, instead of meeting a closed socket."""
        self.closing_after = True
        if self._idle_at_stop():
            loop = self.switch.loop
            if loop is None:
                self.close()
            else:
                loop.call_later(SHUTDOWN_GRACE, lambda: self.close() if self._idle_at_stop() else None)

    def _idle_at_stop(self) -> bool:
        return self.exchange is None and (self.state == IDLE or self.silent())

    def writelines(self, data: list[bytes]) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.writelines(data)

    def close(self) -> None:
        self.deadline = 0.0
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        self.deadline = 0.0
        t = self.transport
        if t is not None:
            t.abort()

    def snapshot(self) -> dict[str, Any]:
        ex = self.exchange
        return {"peer": self.peer_ip, "state": "tunnel" if self.tunnel is not None else STATE_NAMES[self.state],
                "requests": self.requests, "queued": len(self.queue),
                "exchange": ex.snapshot() if ex is not None else None}

    def __repr__(self) -> str:
        return (f"<ClientConnection {self.peer_ip} {STATE_NAMES[self.state]} requests={self.requests} "
                f"queued={len(self.queue)}>")


def _parser_message(exc: Exception) -> str:
    msg = str(exc) or type(exc).__name__
    return msg[:200]
