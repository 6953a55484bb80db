"""The two places where a lower piece of the proxy calls back up, as small Protocols.

A server connection (upstream.py) tells whoever owns it what the server sent; an exchange
(exchange.py) tells the client connection it serves what to write and when it is finished.
Naming only these methods here keeps the modules in one direction — frontend -> exchange ->
upstream -> ports — as h11 and httpcore keep their state machines free of their callers.
"""

from __future__ import annotations

from ..stats import Traffic

from typing import Any, Protocol

from ..errors import L7Error
from ..net.flow import FlowControl
from ..net.tunnel import Tunnel


class ResponseSink(Protocol):
    """What an ``UpstreamConnection`` reports to the exchange that owns it (its response)."""

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_complete(self) -> None: ...

    def after_upstream_feed(self) -> None:
        """One read from the server has been parsed: write what it produced, as one write."""

    def response_upgraded(self, leftover: bytes) -> None:
        """The parser stopped after a 101; ``leftover`` are the bytes behind the head."""

    def upstream_failed(self, detail: str) -> None:
        """The server sent something unusable (bad framing, an oversized head)."""

    def upstream_lost(self, exc: Exception | None) -> None:
        """The server connection closed or was reset."""

    def upstream_timeout(self) -> bool:
        """The server was silent for ``timeouts.server``; True if the exchange re-armed the
        deadline instead (bytes are still moving, by splice)."""

    def upstream_writable(self, writable: bool) -> None:
        """The server stopped (False) or resumed (True) reading what we send it."""


class ClientPort(Protocol):
    """What an ``Exchange`` needs of the client connection it answers."""

    flow: FlowControl
    peer_ip: str
    peer_port: int
    listener: str  # the listener's address, for the access log
    traffic: Traffic  # the listener's counters (stats.py)
    proto: bytes  # what X-Forwarded-Proto says: b"http" or b"https"
    tls: bool  # TLS terminated here: its socket carries ciphertext, so nothing splices it
    closing_after: bool  # the connection closes once what was asked is answered
    feeding: bool  # inside parser.feed_data: the current read's body bytes are still to come

    def last_response(self) -> bool:
        """The response now starting is the last before the connection closes."""

    def writelines(self, data: list[bytes]) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def request_spliced(self) -> None:
        """The request body crossed by splice: the parser's state is stale, the request done."""

    def exchange_finished(self, ex: Any, error: L7Error | None, request_id: str, close: bool) -> None:
        """``ex`` is over: answer ``error`` if set, then serve the next request or close."""

    def tunnel_started(self, tunnel: Tunnel) -> None:
        """Bytes from the client now belong to ``tunnel``."""
