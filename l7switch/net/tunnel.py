"""The one byte relay: a tunnel between a client connection and a server connection.

Used by tls-passthrough connections (passthrough/connection.py) once their server is connected,
and by HTTP Upgrade tunnels after the server's 101 (proxy/exchange.py), over TLS or not. The
protocols on either end forward asyncio's callbacks here while the tunnel owns them.

Two ways to move bytes:
- **relay**: each side writes what it reads to the other through Python; the two FlowControls
  are linked, so a full write buffer on one side pauses reading on the other.
- **splice**: both directions cross by ``SpliceJob`` (splice.py) on the transports' own fds,
  never entering Python (a job copies a chunk through Python only when no pipe is free). The
  hand-off: pause both transports, let what Python already holds drain (byte order), then start
  one job per direction that has not ended. Only for plain TCP on both sides: a TLS socket
  carries ciphertext, which must cross Python to be decrypted or encrypted. Should the jobs
  not start at all (epoll refusing the fds), the tunnel relays instead.

Half-close is passed on: an EOF from one side becomes shutdown(SHUT_WR) towards the other (a
server may still answer after the client's FIN); a side that cannot half-close (TLS, which has
no half-close) ends the tunnel instead, gracefully, so what is buffered still goes out. The
tunnel ends once both directions have ended, or at once on an error on either side (both are
aborted). ``on_end`` is called exactly once.

An idle tunnel ends after ``idle`` seconds without a byte either way (``timeouts.tunnel``,
HAProxy's ``timeout tunnel``): the tunnel watches itself on the switch's clock and, when its
deadline comes, looks whether bytes moved since the last look (a counter in relay mode, the jobs'
totals when spliced) before closing, so the hot path costs one integer add per read.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from .clock import Clock, log
from .flow import SPLICING, WAITING, FlowControl
from .splice import SpliceJob

# Directions, as bits: a direction is done once its EOF has been passed on.
TO_SERVER, TO_CLIENT = 1, 2
BOTH = TO_SERVER | TO_CLIENT
SPLICE_AVAILABLE = hasattr(os, "splice")  # Linux only


class Tunnel:
    __slots__ = ("loop", "client", "server", "jobs", "done", "ended", "splicing", "on_end", "clock",
                 "idle", "deadline", "moves", "seen", "timed_out")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: FlowControl, server: FlowControl,
                 on_end: Callable[[], None], clock: Clock | None = None, idle: float = 0.0) -> None:
        self.loop = loop
        self.clock = clock
        self.idle = idle  # seconds without a byte either way before it ends; 0: never
        self.moves = 0  # reads relayed through Python
        self.seen = 0  # moves + spliced bytes at the last look
        self.timed_out = False
        self.deadline = 0.0
        if clock is not None and idle > 0:
            self.deadline = time.monotonic() + idle
            clock.watch(self)
        self.client = client
        self.server = server
        self.jobs: list[SpliceJob] = []
        self.done = 0  # TO_SERVER | TO_CLIENT once each direction's EOF has been passed on
        self.ended = False
        self.splicing = False
        self.on_end = on_end
        client.link(server)

    # ---- starting ---------------------------------------------------------------------------------
    def relay(self) -> None:
        """Move bytes through Python: both sides read (whatever paused them to set up is lifted)."""
        for flow in (self.client, self.server):
            flow.resume_reading(WAITING | SPLICING)

    def splice(self) -> bool:
        """Hand both directions to splice(2); False (and nothing changed) where it is not
        possible: no os.splice, or a TLS side."""
        if not SPLICE_AVAILABLE or self.ended or _is_tls(self.client) or _is_tls(self.server):
            return False
        self.splicing = True
        for flow in (self.client, self.server):
            flow.pause_reading(SPLICING)
            flow.resume_reading(WAITING)
        self._splice_when_drained()
        return True

    def _splice_when_drained(self) -> None:
        if self.ended:
            return
        for flow in (self.client, self.server):
            t = flow.transport
            if t.is_closing():
                return  # its connection_lost ends the tunnel
            if t.get_write_buffer_size():  # byte order: what Python holds goes first
                flow.when_drained(self._splice_when_drained)
                return
        c, s = self.client.transport, self.server.transport
        jobs: list[SpliceJob] = []
        try:
            # A direction whose EOF already went by in Python has nothing left to splice.
            if not self.done & TO_SERVER:
                jobs.append(SpliceJob(self.loop, c, s, None, self._job_done(TO_SERVER)))
            if not self.done & TO_CLIENT:
                jobs.append(SpliceJob(self.loop, s, c, None, self._job_done(TO_CLIENT)))
        except OSError:  # a transport without its socket: closing, its connection_lost ends us
            return
        # Both registered before either moves a byte, so a refusal can still go back to relay.
        for i, job in enumerate(jobs):
            if not job.watch():
                for started in jobs[:i]:
                    started.cancel()
                self.splicing = False
                self.relay()
                return
        self.jobs = jobs
        for job in jobs:
            job.pump()

    def _job_done(self, direction: int) -> Callable[[int, BaseException | None], None]:
        def done(moved: int, error: BaseException | None) -> None:
            if error is not None:
                self.abort()
            else:
                self._direction_done(direction)  # the job has half-closed its destination
        return done

    # ---- called by the protocols at either end ---------------------------------------------------
    def to_server(self, data: bytes) -> None:
        self.moves += 1
        t = self.server.transport
        if not t.is_closing():
            t.write(data)

    def to_client(self, data: bytes) -> None:
        self.moves += 1
        t = self.client.transport
        if not t.is_closing():
            t.write(data)

    def eof(self, direction: int) -> bool:
        """The side sending in ``direction`` half-closed: pass it on. True keeps that
        transport open for writing (asyncio's eof_received convention)."""
        if self.ended:
            return False
        dst = self.server if direction == TO_SERVER else self.client
        t = dst.transport
        if t.is_closing() or not t.can_write_eof():
            self.close()  # TLS has no half-close: the first EOF ends both directions
            return False
        t.write_eof()
        self._direction_done(direction)
        return True

    def lost(self, exc: Exception | None) -> None:
        """One side's connection is gone: the other follows (aborted after an error, else
        closed once what it has buffered is sent)."""
        if self.ended:
            return
        if exc is not None:
            self.abort()
        else:
            self.close()

    def _direction_done(self, direction: int) -> None:
        self.done |= direction
        if self.done == BOTH:
            self.close()

    def on_deadline(self, now: float) -> None:
        """The clock's look: bytes moved since the last one re-arm the deadline; none: it ends."""
        seen = self.moves + sum(job.moved for job in self.jobs)
        if seen != self.seen:
            self.seen = seen
            self.deadline = now + self.idle
            return
        self.timed_out = True
        log.info("tunnel idle for %gs (timeouts.tunnel): closed", self.idle)
        self.close()

    # ---- ending -----------------------------------------------------------------------------------
    def close(self) -> None:
        """End both sides, sending what their write buffers still hold."""
        for flow in self._end():
            if not flow.transport.is_closing():
                flow.transport.close()

    def abort(self) -> None:
        for flow in self._end():
            flow.transport.abort()

    def _end(self) -> tuple[FlowControl, ...]:
        if self.ended:
            return ()
        self.ended = True
        self.deadline = 0.0
        if self.clock is not None:
            self.clock.unwatch(self)
        for job in self.jobs:
            job.cancel()
        self.jobs = []
        self.client.unlink()
        self.on_end()
        return self.client, self.server

    def __repr__(self) -> str:
        mode = "splice" if self.splicing else "relay"
        state = "ended" if self.ended else f"done={self.done}"
        return f"<Tunnel {mode} {state} jobs={len(self.jobs)}>"


def _is_tls(flow: FlowControl) -> bool:
    return flow.transport.get_extra_info("ssl_object") is not None
