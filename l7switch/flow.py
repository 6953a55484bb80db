"""Backpressure as one small object (after uvicorn's flow_control.py).

A transport's reading can be paused for several independent reasons at once — the peer's
write buffer is full, a pipelined request waits its turn, a splice owns the socket. Each
reason is a bit; the transport reads only when no bit is set, so one reason's resume never
undoes another's pause (the bug class of uvloop#117's non-idempotent pause/resume).
"""

from __future__ import annotations

import asyncio

# Reasons to stop reading a transport.
PEER_FULL = 1  # the other side's write buffer is above its high-water mark
WAITING = 2  # nothing may be read now (pipelined request queued, or waiting on a server)
SPLICING = 4  # a splice job reads this socket's duplicate fd directly
CLOSING = 8

# uvloop's FLOW_CONTROL_HIGH_WATER is 64 KiB; uvicorn's HIGH_WATER_LIMIT is the same.
HIGH_WATER = 64 * 1024


class FlowControl:
    __slots__ = ("transport", "paused_for", "writable")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.paused_for = 0
        self.writable = True  # False between pause_writing and resume_writing

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

    def __repr__(self) -> str:
        return f"<FlowControl paused_for={self.paused_for:#x} writable={self.writable}>"


def when_drained(transport: asyncio.BaseTransport, callback: object) -> None:
    """Run ``callback`` once the transport's write buffer is empty (byte order before a splice)."""
    if transport.get_write_buffer_size() == 0:  # type: ignore[attr-defined]
        callback()  # type: ignore[operator]
        return
    proto = transport.get_protocol()
    proto.drain_waiters.append(callback)  # type: ignore[attr-defined]
    transport.set_write_buffer_limits(high=0, low=0)  # type: ignore[attr-defined]


def run_drain_waiters(proto: object) -> None:
    """From a protocol's resume_writing: run callbacks waiting for an empty write buffer.

    when_drained lowers the high-water mark to 0 so resume_writing fires exactly when
    the buffer is empty (uvloop-proxy.md §2.4 step 4); the default mark is restored here.
    """
    waiters = proto.drain_waiters  # type: ignore[attr-defined]
    if not waiters:
        return
    transport = proto.transport  # type: ignore[attr-defined]
    if transport is None or transport.get_write_buffer_size():
        return
    proto.drain_waiters = []  # type: ignore[attr-defined]
    transport.set_write_buffer_limits()
    for cb in waiters:
        cb()
