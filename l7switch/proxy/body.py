"""A request body on its way to the server, as Python sees it (what splice(2) moves never is).

Bytes are *held* while there is no server connection yet, then written in one batch per client
read (one write per read, never one per llhttp callback). Sent on a reused keep-alive connection,
they are also *kept* until the server answers: a connection the server had just closed takes the
request with it, and the request must go again, whole, on a fresh one (RFC 9112 §9.3.1 allows
the retry because nothing reached the server). A chunked body is re-chunked as it passes
(chunk extensions and trailers are not forwarded).
"""

from __future__ import annotations

from typing import Final

from ..errors import PayloadTooLarge
from ..net.flow import HIGH_WATER

CHUNK_END: Final = b"0\r\n\r\n"
# Bytes kept for a resend at most: four times the write high-water mark. A bigger body sent
# before the server's first byte cannot be sent again, and a stale connection then means 502.
KEEP_LIMIT: Final = 4 * HIGH_WATER


class RequestBody:
    __slots__ = ("chunked", "limit", "received", "held", "held_size", "batch", "kept", "kept_size")

    def __init__(self, chunked: bool, limit: int | None) -> None:
        self.chunked = chunked
        self.limit = limit  # limits.max_body_bytes
        self.received = 0  # body bytes read from the client (by Python or by splice)
        self.held: list[bytes] | None = []  # while no server connection: everything that came
        self.held_size = 0
        self.batch: list[bytes] = []  # what the current client read produced, written at once
        self.kept: list[bytes] | None = None  # what was sent, for a resend; None: none possible
        self.kept_size = 0

    def add(self, data: bytes) -> bool:
        """Body bytes from the client; True when the held bytes passed the high-water mark (the
        client must stop being read until there is a connection to write to)."""
        n = len(data)
        self.received += n
        if self.limit is not None and self.received > self.limit:
            raise PayloadTooLarge(f"request body over {self.limit} bytes")
        framed = (b"%x\r\n" % n, data, b"\r\n") if self.chunked else (data,)
        held = self.held
        if held is None:
            self.batch.extend(framed)
            return False
        held.extend(framed)
        self.held_size += n
        return self.held_size > HIGH_WATER

    def end(self) -> None:
        if self.chunked:
            (self.batch if self.held is None else self.held).append(CHUNK_END)

    def connected(self, keep: bool) -> list[bytes]:
        """A connection is ready: the held bytes, to write after the head. ``keep``: the
        connection is a reused one, so keep copies of what is sent until the server answers."""
        held, self.held = self.held or [], None
        self.kept = list(held) if keep else None
        self.kept_size = self.held_size if keep else 0
        self.held_size = 0
        return held

    def take_batch(self) -> list[bytes]:
        out, self.batch = self.batch, []
        kept = self.kept
        if kept is not None and out:
            kept.extend(out)
            self.kept_size += sum(map(len, out))
            if self.kept_size > KEEP_LIMIT:
                self.kept = None
        return out

    def resend(self) -> None:
        """The connection died unanswered: hold everything sent or batched, for the next one."""
        assert self.kept is not None
        self.held = self.kept + self.batch
        self.held_size = self.kept_size + sum(map(len, self.batch))
        self.batch, self.kept = [], None

    def __repr__(self) -> str:
        where = "held" if self.held is not None else "streaming"
        return f"<RequestBody {self.received} bytes {where} kept={self.kept is not None}>"
