"""Backpressure both ways as one small object per transport (after uvicorn's flow_control.py).

A transport's reading can be paused for several independent reasons at once — the peer's
write buffer is full, a pipelined request waits its turn, a splice owns the socket. Each
reason is a bit; the transport reads only when no bit is set, so one reason's resume never
undoes another's pause (the bug class of uvloop#117's non-idempotent pause/resume).

Two FlowControls are *linked* while bytes cross between their transports (a client and the
server connection answering it, or the two ends of a tunnel): a full write buffer on one side
pauses reading on the other (``PEER_FULL``) until it drains. The protocols only forward
asyncio's ``pause_writing``/``resume_writing`` here.

``when_drained`` runs a callback once the write buffer is empty — the byte-order step before a
splice takes over a socket: the high-water mark is lowered to 0 so that ``resume_writing``
fires exactly when the buffer empties, and restored afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

# Reasons to stop reading a transport.
PEER_FULL: Final = 1  # the other side's write buffer is above its high-water mark
WAITING: Final = 2  # nothing may be read now (pipelined request queued, or waiting on a server)
SPLICING: Final = 4  # a splice job drives this socket's fd directly (net/splice.py)
CLOSING: Final = 8  # an error answer is on its way; what the peer sends next is ignored
TURN: Final = 16  # a new connection's first bytes wait for their turn (proxy/state.py FirstBytes)

# uvloop's FLOW_CONTROL_HIGH_WATER is 64 KiB; uvicorn's HIGH_WATER_LIMIT is the same.
HIGH_WATER: Final = 64 * 1024


class FlowControl:
    __slots__ = ("transport", "paused_for", "writable", "peer", "drain_waiters")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.paused_for = 0
        self.writable = True  # False between pause_writing and resume_writing
        self.peer: FlowControl | None = None  # whose reading our full write buffer pauses
        self.drain_waiters: list[Callable[[], None]] = []

    # ---- reading ------------------------------------------------------------------------------
    def pause_reading(self, reason: int) -> None:
        if not self.paused_for:
            try:
                self.transport.pause_reading()
            except RuntimeError:  # already closing
                pass
        self.paused_for |= reason

    def resume_reading(self, reason: int) -> None:
        if not self.paused_for & reason:
            return
        self.paused_for &= ~reason
        if not self.paused_for and not self.transport.is_closing():
            self.transport.resume_reading()

    # ---- writing (called from the protocol's pause_writing / resume_writing) --------------------
    def pause_writing(self) -> None:
        self.writable = False
        if self.peer is not None:
            self.peer.pause_reading(PEER_FULL)

    def resume_writing(self) -> None:
        self.writable = True
        if self.peer is not None:
            self.peer.resume_reading(PEER_FULL)
        if self.drain_waiters and not self.transport.get_write_buffer_size():
            waiters, self.drain_waiters = self.drain_waiters, []
            self.transport.set_write_buffer_limits()
            for cb in waiters:
                cb()

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the write buffer is empty (at once if it already is)."""
        if self.transport.get_write_buffer_size() == 0:
            callback()
            return
        self.drain_waiters.append(callback)
        self.transport.set_write_buffer_limits(high=0, low=0)

    # ---- linking two sides ----------------------------------------------------------------------
    def link(self, other: FlowControl) -> None:
        """Bytes now cross between our transport and ``other``'s: each one's full write buffer
        pauses the other's reading. A side that is already full pauses its new peer at once
        (asyncio will not call pause_writing again)."""
        self.peer, other.peer = other, self
        if not self.writable:
            other.pause_reading(PEER_FULL)
        if not other.writable:
            self.pause_reading(PEER_FULL)

    def unlink(self) -> None:
        """End the link (the exchange is over): neither side stays paused for the other."""
        other = self.peer
        if other is None:
            return
        self.peer = other.peer = None
        if other.paused_for & PEER_FULL:
            other.resume_reading(PEER_FULL)
        if self.paused_for & PEER_FULL:
            self.resume_reading(PEER_FULL)

    def __repr__(self) -> str:
        return f"<FlowControl paused_for={self.paused_for:#x} writable={self.writable}>"
