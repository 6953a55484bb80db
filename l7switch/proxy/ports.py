"""The two places where a lower piece of the proxy calls back up, as small base classes.

A server connection (upstream.py) tells whoever owns it what the server sent; an exchange
(exchange.py) tells the client connection it serves what to write and when it is finished.
Naming only these methods here keeps the modules in one direction — frontend -> exchange ->
upstream -> ports — as h11 and httpcore keep their state machines free of their callers.

They are classes the callers inherit from, not ``typing.Protocol``s: in the compiled build a
call or an attribute read through a class is a C call or a struct field, through a Protocol a
method lookup by name (~200 instructions each, a dozen times per request).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import L7Error
from ..net.flow import FlowControl
from ..net.tunnel import Tunnel
from ..stats import Traffic


class ResponseSink:
    """What an ``UpstreamConnection`` reports to the exchange that owns it (its response)."""

    __slots__ = ()

    def response_head(self, status: int, lines: list[bytes]) -> None:
        """A response head: its status and its lines as received (http/fields.cut_head: the
        status line, then the field lines)."""
        raise NotImplementedError

    def response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def response_complete(self) -> None:
        raise NotImplementedError

    def after_upstream_feed(self, now: float = 0.0) -> None:
        """One read from the server has been parsed: write what it produced, as one write.
        ``now``: the clock when that read came, if the caller took it."""
        raise NotImplementedError

    def response_upgraded(self, leftover: bytes) -> None:
        """The parser stopped after a 101; ``leftover`` are the bytes behind the head."""
        raise NotImplementedError

    def upstream_failed(self, detail: str) -> None:
        """The server sent something unusable (bad framing, an oversized head)."""
        raise NotImplementedError

    def upstream_lost(self, exc: Exception | None) -> None:
        """The server connection closed or was reset."""
        raise NotImplementedError

    def upstream_timeout(self) -> bool:
        """The server was silent for ``timeouts.server``; True if the exchange re-armed the
        deadline instead (bytes are still moving, by splice)."""
        raise NotImplementedError

    def upstream_writable(self, writable: bool) -> None:
        """The server stopped (False) or resumed (True) reading what we send it."""
        raise NotImplementedError


class ClientPort(asyncio.Protocol):
    """What an ``Exchange`` needs of the client connection it answers."""

    __slots__ = ("flow", "peer_ip", "peer_port", "listener", "traffic", "proto", "tls", "closing_after",
                 "feeding")

    def __init__(self, listener: str = "", traffic: Traffic | None = None) -> None:
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in connection_made
        self.peer_ip = ""
        self.peer_port = 0
        self.listener = listener  # the listener's address, for the access log
        self.traffic = traffic if traffic is not None else Traffic()  # the listener's counters
        self.proto = b"http"  # what X-Forwarded-Proto says: b"http" or b"https"
        self.tls = False  # TLS terminated here: its socket carries ciphertext, so nothing splices it
        self.closing_after = False  # the connection closes once what was asked is answered
        self.feeding = False  # inside parser.feed_data: the current read's body bytes are still to come

    def last_response(self) -> bool:
        """The response now starting is the last before the connection closes."""
        raise NotImplementedError

    def writelines(self, data: list[bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def request_spliced(self) -> None:
        """The request body crossed by splice: the parser's state is stale, the request done."""
        raise NotImplementedError

    def exchange_finished(self, ex: Any, error: L7Error | None, request_id: str, close: bool,
                          now: float = 0.0) -> None:
        """``ex`` is over: answer ``error`` if set, then serve the next request or close.
        ``now``: the clock, if the caller has just read it."""
        raise NotImplementedError

    def tunnel_started(self, tunnel: Tunnel) -> None:
        """Bytes from the client now belong to ``tunnel``."""
        raise NotImplementedError
