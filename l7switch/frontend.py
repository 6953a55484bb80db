"""The client side: one ``ClientConnection`` per accepted socket.

It parses request heads with httptools, enforces the limits llhttp leaves to us (header bytes
and count, header deadline, Host rules — http-safety.md §4.2), routes each request, and hands
it to an ``Exchange`` (relay.py). Requests are answered strictly in order: a pipelined request
waits in ``queue`` (and reading pauses) until the one before it has been answered.

Timers are not per request: each connection keeps one ``deadline`` that the switch's clock
sweeps (server.py), which keeps call_later handles off the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from .errors import BadRequest, HeadersTooLarge, L7Error, PayloadTooLarge, RequestTimeout
from .flow import CLOSING, HIGH_WATER, PEER_FULL, SPLICING, WAITING, FlowControl, run_drain_waiters
from .message import check_request, error_response
from .relay import Exchange
from .rules import RequestView

if TYPE_CHECKING:
    from .server import Switch

# Connection states, for the deadline sweep.
IDLE, HEAD, BODY, BUSY = 0, 1, 2, 3


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "switch", "transport", "flow", "parser", "peer_ip", "proto", "deadline", "state",
        "exchange", "receiving", "queue", "url", "headers", "head_bytes", "closing_after",
        "pending_error", "tunnel", "drain_waiters", "closed", "requests", "in_trailers", "feeding",
        "tls", "relay_to",
    )

    def __init__(self, switch: Switch, proto: bytes = b"http") -> None:
        self.switch = switch
        self.proto = proto
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.peer_ip = ""
        self.deadline = 0.0
        self.state = IDLE
        self.exchange: Exchange | None = None  # the exchange being answered
        self.receiving: Exchange | None = None  # the exchange whose request body is arriving
        self.queue: deque[Exchange] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.closing_after = False  # answer what we have, then close
        self.pending_error: L7Error | None = None
        self.tunnel: Exchange | None = None
        self.drain_waiters: list = []
        self.closed = False
        self.requests = 0
        self.in_trailers = False
        self.feeding = False  # inside parser.feed_data (callbacks may run)
        self.tls = False  # TLS terminated here: the socket carries ciphertext, so nothing splices it
        self.relay_to: Any = None  # a tunnel over TLS: the UpstreamConnection our bytes go to

    # ---- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        if transport.get_extra_info("ssl_object") is not None:
            self.tls, self.proto = True, b"https"  # the proto is what X-Forwarded-Proto says
        self.deadline = time.monotonic() + self.switch.config.timeouts.client
        self.switch.clock.watch(self)
        self.switch.clients.add(self)
        if self.switch.draining:
            self.closing_after = True

    def data_received(self, data: bytes) -> None:
        if self.relay_to is not None:
            self.relay_to.write(data)  # an Upgrade tunnel over TLS (handoff.py): decrypted bytes
            return
        if self.tunnel is not None or self.closed:
            # uvloop ignores pause_reading() issued in some states; hold tunnel bytes.
            if self.tunnel is not None:
                self.tunnel.tunnel_data += data
                if len(self.tunnel.tunnel_data) > HIGH_WATER:
                    self.abort()  # a client flooding before the server even agreed to switch
            return
        if self.flow.paused_for & (WAITING | SPLICING | CLOSING) and self.pending_error is not None:
            return  # we are closing after an error; ignore what follows
        if self.state == IDLE:
            self.state = HEAD
            self.deadline = time.monotonic() + self.switch.config.timeouts.header
        elif self.state == BODY:
            self.deadline = time.monotonic() + self.switch.config.timeouts.client
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp runs on_message_complete (which clears self.receiving) before it pauses on
            # an upgrade: the upgrade request is the last one parsed.
            ex = self.receiving or (self.queue[-1] if self.queue else self.exchange)
            if ex is not None and ex.head.upgrade is not None:
                ex.tunnel_data += data[exc.args[0]:] if exc.args else b""
                # (ex.upgrading is the response side's "got a 101"; it must not be set here.)
                ex.req_done = True
                self.receiving = None
                self.flow.pause_reading(SPLICING)
                self.tunnel_wait(ex)
            else:
                self.error(BadRequest("unexpected protocol upgrade"))
            self.flush_fed()
            return
        except L7Error as err:
            self.error(err)
            self.flush_fed()
            return
        except httptools.HttpParserError as exc:
            # An L7Error raised inside a parser callback (431, 413, a check_request 400) reaches
            # us wrapped in HttpParserCallbackError, the original as __context__.
            ctx = exc.__context__
            self.error(ctx if isinstance(ctx, L7Error) else BadRequest(_parser_message(exc)))
            self.flush_fed()
            return
        finally:
            self.feeding = False
        self.flush_fed()

    def flush_fed(self) -> None:
        """Send on what one client read produced for the server(s), also when the read ended in
        an error or an upgrade: an earlier pipelined request's body bytes from the same read
        would otherwise never reach its server, which then waits for them forever."""
        ex = self.receiving or self.exchange
        if ex is not None:
            ex.after_client_feed()
        if self.exchange is not None and self.exchange is not ex:
            self.exchange.after_client_feed()

    def tunnel_wait(self, ex: Exchange) -> None:
        # The upgrade request is complete; from now on client bytes belong to the tunnel.
        self.tunnel = ex
        ex.after_client_feed()

    def eof_received(self) -> bool | None:
        if self.tls:
            return None  # close_notify: TLS has no half-close, the transport closes either way
        # A client may half-close after its last request (RFC 9112 §9.6); keep the write side
        # open until what it asked for has been answered.
        if self.exchange is not None or self.queue:
            self.closing_after = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.relay_to is not None:
            self.relay_to.end_relay()  # what we relayed last still reaches the server
        self.switch.clock.unwatch(self)
        self.switch.clients.discard(self)
        for ex in (self.exchange, *self.queue):
            if ex is not None:
                ex.client_lost()
        self.exchange = self.receiving = self.tunnel = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.flow.writable = False
        self.deadline = time.monotonic() + self.switch.config.timeouts.client
        ex = self.exchange
        if ex is not None and ex.up is not None and ex.up.flow is not None:
            ex.up.flow.pause_reading(PEER_FULL)

    def resume_writing(self) -> None:
        self.flow.writable = True
        ex = self.exchange
        if self.state == BUSY:
            self.deadline = 0.0
        if ex is not None and ex.up is not None and ex.up.flow is not None:
            ex.up.flow.resume_reading(PEER_FULL)
        run_drain_waiters(self)

    # ---- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.in_trailers = False
        if self.state == IDLE:
            self.state = HEAD
            self.deadline = time.monotonic() + self.switch.config.timeouts.header

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.switch.config.limits.max_header_bytes:
            raise HeadersTooLarge("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            return  # RFC 9110 §6.5.1: trailer fields are not merged into the header section
        self.head_bytes += len(name) + len(value) + 4
        limits = self.switch.config.limits
        if self.head_bytes > limits.max_header_bytes:
            raise HeadersTooLarge(f"header section over {limits.max_header_bytes} bytes")
        headers = self.headers
        if len(headers) >= limits.max_headers:
            raise HeadersTooLarge(f"more than {limits.max_headers} header fields")
        # llhttp drops leading OWS but keeps trailing OWS; RFC 9110 §5.5 excludes both from the
        # field value. Rules must match (and the server get) the value a server would parse.
        headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.in_trailers = True
        self.requests += 1
        head = check_request(parser.get_method(), self.url, self.headers, parser.get_http_version(),
                             parser.should_keep_alive(), parser.should_upgrade())
        if self.closing_after:
            head.keep_alive = False
        limit = self.switch.config.limits.max_body_bytes
        if limit is not None and head.content_length is not None and head.content_length > limit:
            # Refuse at the head: a body at/above splice.threshold never passes request_body's check.
            raise PayloadTooLarge(f"request body over {limit} bytes")
        host = head.host
        if host.startswith(b"["):
            host = host[:host.find(b"]") + 1]
        else:
            host = host.split(b":", 1)[0]
        view = WireView(head.method.decode("latin-1"), head.path, head.query,
                        host.decode("latin-1").lower(), head.headers)
        rule, pool_name = self.switch.config.router.route(view)
        pool = self.switch.pools[pool_name]
        key = pool.keyfn(view, self.peer_ip) if pool.keyfn is not None else None
        ex = Exchange(self, head, pool, rule.label if rule is not None else "default", key)
        self.receiving = ex
        has_body = head.has_body
        if not has_body:
            ex.req_done = True
        else:
            ex.plan_request_splice()
        if self.exchange is None:
            self.exchange = ex
            self._set_state(ex)
            ex.start()
        else:
            self.queue.append(ex)
            self.flow.pause_reading(WAITING)  # answer in order (RFC 9112 §9.3.2)

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.receiving
        self.receiving = None
        if self.state == BODY:
            self.state = BUSY
            self.deadline = 0.0
        if ex is not None:
            ex.request_complete()

    # ---- called by exchanges, the clock and the server ----------------------------------------
    def exchange_finished(self, ex: Exchange, error: L7Error | None, close: bool) -> None:
        if ex is not self.exchange:
            return
        transport = self.transport
        if transport is None or self.closed:
            return
        if error is not None:
            transport.write(error_response(error.status, error.detail, close=close))
        self.exchange = None
        if ex is self.receiving:
            self.receiving = None
        if (self.pending_error is not None and not self.queue and ex.head.keep_alive
                and not (ex.resp_eof_framed and not ex.resp_chunked)):
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
            nxt.start()
            return
        if self.pending_error is not None:
            self._send_error(self.pending_error)
            return
        self.state = IDLE
        self.deadline = time.monotonic() + self.switch.config.timeouts.client

    def _set_state(self, ex: Exchange) -> None:
        """State and deadline follow the exchange being served, never a queued one: reading is
        paused while a request waits its turn, so its body cannot be expected meanwhile."""
        if ex.req_done:
            self.state = BUSY
            self.deadline = 0.0
        else:
            self.state = BODY
            self.deadline = time.monotonic() + self.switch.config.timeouts.client

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
        if self.exchange is not None:
            if self.exchange.resp_started or ex is not self.exchange:
                self.pending_error = err
                self.closing_after = True
                return
            # The exchange whose request is broken: it gets the error as its answer.
            cur = self.exchange
            cur.client_lost()
            self.exchange = None
        self._send_error(err)

    def _send_error(self, err: L7Error) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(error_response(err.status, err.detail, close=True))
        self.close()

    def on_deadline(self, now: float) -> None:
        if self.state == IDLE:
            self.close()  # keep-alive idle: silent close, as nginx and HAProxy do
        elif self.state == HEAD:
            self.error(RequestTimeout("request header not received in time"))
        elif self.state == BODY and (self.exchange is None or not self.exchange.resp_started):
            self.error(RequestTimeout("request body stalled"))
        else:
            self.abort()  # stalled mid-response: the client stopped reading

    def shutdown(self) -> None:
        """Graceful stop: close when idle, else after the current response."""
        self.closing_after = True
        if self.exchange is None and self.state == IDLE:
            self.close()

    def reset_parser(self) -> None:
        self.parser = httptools.HttpRequestParser(self)

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

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

    def __repr__(self) -> str:
        state = ("idle", "head", "body", "busy")[self.state]
        return f"<ClientConnection {self.peer_ip} {state} requests={self.requests} queued={len(self.queue)}>"


class WireView(RequestView):
    """A RequestView whose headers are decoded only if a rule looks at them."""

    __slots__ = ("_raw", "_decoded")

    def __init__(self, method: str, path: str, query: str, host: str,
                 raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: list[tuple[str, str]] | None = None
        super().__init__(method, path, query, host, [])

    @property  # type: ignore[override]
    def headers(self) -> list[tuple[str, str]]:
        if self._decoded is None:
            self._decoded = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._raw]
        return self._decoded

    @headers.setter
    def headers(self, value: list[tuple[str, str]]) -> None:
        pass  # the raw list is the source of truth


def _parser_message(exc: Exception) -> str:
    msg = str(exc) or type(exc).__name__
    return msg[:200]
