"""The byte tunnel behind a tls-passthrough connection, once its server is connected.

Both directions cross by ``SpliceJob`` (splice.py) when splice is enabled and the platform has
``os.splice``; the hand-off is handoff.py's for Upgrade tunnels: pause both transports, let what
Python already holds drain (byte order), then splice the duplicated fds. Otherwise, and before
that hand-off, bytes cross Python: each side writes what it reads to the other, and a write
buffer over its high-water mark pauses reading on the other side (FlowControl, PEER_FULL).

Half-close is passed on: an EOF from one side becomes shutdown(SHUT_WR) towards the other (a
TLS close_notify is only data to us, and a server may still answer after the client's FIN); the
connection closes once both directions have ended. An error on either side aborts both.

``TunnelEnds`` is a mixin of ``PassthroughConnection`` (passthrough.py) with no state of its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import TYPE_CHECKING

from .flow import PEER_FULL, SPLICING, WAITING, FlowControl, run_drain_waiters
from .flow import when_drained
from .splice import SpliceJob
from .upstream import set_nodelay

if TYPE_CHECKING:
    from .backends import Server
    from .passthrough import PassthroughConnection

# Connection states (PassthroughConnection.state).
HELLO, CONNECTING, RELAY, SPLICE, CLOSED = range(5)
STATE_NAMES = ("hello", "connecting", "relay", "splice", "closed")
# Directions of the tunnel, as bits: a direction is done once its EOF has been passed on.
TO_SERVER, TO_CLIENT = 1, 2
SPLICE_AVAILABLE = hasattr(os, "splice")  # Linux only


class TunnelEnds:
    __slots__ = ()

    def start_splice(self: PassthroughConnection) -> None:
        """Hand both directions to splice(2), or keep relaying in Python where it is off."""
        up = self.up
        assert up is not None
        splice = self.switch.config.splice
        if not (splice.enabled and SPLICE_AVAILABLE):
            self.state = RELAY
            self.flow.resume_reading(WAITING)
            return
        self.state = SPLICE
        self.flow.pause_reading(SPLICING)
        self.flow.resume_reading(WAITING)
        up.flow.pause_reading(SPLICING)

        def go() -> None:
            client, server = self.transport, up.transport
            if self.closed or client is None or server is None or server.is_closing():
                return
            for t in (client, server):
                if t.get_write_buffer_size():  # byte order: what Python holds goes first
                    when_drained(t, go)
                    return
            loop, done = self.switch.loop, functools.partial
            # A direction whose EOF already went by in Python has nothing left to splice.
            if not self.done & TO_SERVER:
                self.jobs.append(SpliceJob(loop, client, server, None, done(self.spliced, TO_SERVER)))
            if not self.done & TO_CLIENT:
                self.jobs.append(SpliceJob(loop, server, client, None, done(self.spliced, TO_CLIENT)))
            for job in list(self.jobs):
                job.start()
        go()

    def spliced(self: PassthroughConnection, direction: int, moved: int, error: BaseException | None) -> None:
        if error is not None:
            self.abort()
            return
        self.direction_done(direction)  # the job has half-closed its destination

    def pass_eof(self: PassthroughConnection, direction: int) -> None:
        """An EOF in relay mode: half-close the other side."""
        dst = self.up if direction == TO_SERVER else self
        t = dst.transport if dst is not None else None
        if t is not None and not t.is_closing() and t.can_write_eof():
            t.write_eof()
        self.direction_done(direction)

    def direction_done(self: PassthroughConnection, direction: int) -> None:
        self.done |= direction
        if self.done == TO_SERVER | TO_CLIENT:
            self.close()

    def close(self: PassthroughConnection) -> None:
        """Close both sides, sending what their write buffers still hold."""
        self.deadline = 0.0
        for job in self.jobs:
            job.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.up is not None:
            self.up.close()

    def abort(self: PassthroughConnection) -> None:
        self.deadline = 0.0
        for job in self.jobs:
            job.cancel()
        if self.transport is not None:
            self.transport.abort()
        if self.up is not None:
            self.up.close(abort=True)


class ServerSide(asyncio.Protocol):
    """The server end of a passthrough connection: everything it reads goes to the client end."""

    __slots__ = ("client", "server", "transport", "flow", "drain_waiters")

    def __init__(self, client: PassthroughConnection, server: Server) -> None:
        self.client = client
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.drain_waiters: list = []  # flow.when_drained callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(transport)  # type: ignore[arg-type]
        set_nodelay(transport)  # the handshake is a ping-pong of small writes
        self.server.conns += 1

    def data_received(self, data: bytes) -> None:
        self.client.from_server(data)

    def eof_received(self) -> bool | None:
        self.client.pass_eof(TO_CLIENT)
        return True  # keep our write side open: the client may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns -= 1
        self.transport = None
        client = self.client
        if not client.closed:
            if exc is not None:
                client.abort()
            else:
                client.close()

    def pause_writing(self) -> None:
        self.client.flow.pause_reading(PEER_FULL)

    def resume_writing(self) -> None:
        self.client.flow.resume_reading(PEER_FULL)
        run_drain_waiters(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_many(self, data: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(data)

    def close(self, abort: bool = False) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort() if abort else t.close()
