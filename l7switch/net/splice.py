"""Zero-copy relay with splice(2): socket -> pipe -> socket, bypassing Python buffers.

A job drives the transports' own socket fds while the transports sit paused: they are watched
by the process's splice poller (poller.py: an epoll instance of our own, so no ``os.dup()``),
and bytes cross through a pipe borrowed from the pipe pool (pipes.py) only while they are in
it. So a spliced body or tunnel costs its two sockets and nothing more at rest; a pipe only
while bytes wait in it for room at the destination.

When no pipe can be had (the pool is at its limit, or pipe2 fails: EMFILE/ENFILE), the job
copies that chunk through Python instead (read(2) then write(2) on the same fds, at most
``COPY_CHUNK`` held while the destination is full) and tries for a pipe again on the next
chunk. The choice is per chunk and inside the job, so the count of bytes moved — and with it
the message boundary where the proxy returns to parsing — is the same either way: no parser
ever has to be told about bytes it did not see. Only a job that cannot be started at all (epoll
refuses the fds, nothing moved yet) says so, and its owner carries on through Python.

A job moves either exactly ``nbytes`` (a known-length body; the proxy then returns to parsing
at the message boundary) or everything up to EOF (a tunnel direction, after which the
destination is half-closed so the far side sees the EOF too).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable

from . import pipes
from .flow import FlowControl
from .poller import Poller, poller_for

FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PIPE_SIZE = pipes.PIPE_SIZE
# Bytes read per copy when no pipe is free: uvloop reads 256 KiB per read; a smaller chunk keeps
# what a job may hold for a full destination at the write high-water mark (flow.HIGH_WATER).
COPY_CHUNK = 64 * 1024


def transport_fd(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise OSError(errno.EBADF, "transport has no socket")
    return int(sock.fileno())


class SpliceJob:
    """Move bytes from one transport's socket to another's; call ``on_done(moved, error)``."""

    __slots__ = ("poller", "pool", "src", "dst", "remaining", "pipe", "in_pipe", "held", "moved",
                 "copied", "on_done", "src_ready", "watching", "finished")

    def __init__(self, loop: asyncio.AbstractEventLoop, src: asyncio.BaseTransport,
                 dst: asyncio.BaseTransport, nbytes: int | None,
                 on_done: Callable[[int, BaseException | None], None],
                 pool: pipes.PipePool | None = None) -> None:
        self.poller: Poller = poller_for(loop)
        self.pool = pool if pool is not None else pipes.pool
        self.src = transport_fd(src)  # the transports' own fds: borrowed, never closed here
        self.dst = transport_fd(dst)
        self.remaining = nbytes  # None: until EOF
        self.pipe: pipes.Pipe | None = None  # held only while bytes are in it
        self.in_pipe = 0
        self.held: memoryview | None = None  # copied bytes the destination has not taken yet
        self.moved = 0  # bytes delivered to the destination
        self.copied = 0  # of which through Python (no pipe to be had)
        self.on_done = on_done
        self.src_ready = True  # not yet known to be empty
        self.watching = False
        self.finished = False

    def watch(self) -> bool:
        """Register both fds with the poller; False (nothing changed) if epoll refuses."""
        try:
            self.poller.watch(self.src, reader=self)
            self.watching = True
            self.poller.watch(self.dst, writer=self)
        except OSError:
            self._unwatch()
            return False
        return True

    def start(self) -> bool:
        """Watch and move what can be moved now; False: the job could not start."""
        if not self.watch():
            return False
        self._pump()
        return True

    def pump(self) -> None:
        """Move what can be moved now (after ``watch``)."""
        self._pump()

    # ---- the poller's callbacks -----------------------------------------------------------------
    def readable(self) -> None:
        self.src_ready = True
        self._pump()

    def writable(self, hangup: bool) -> None:
        if hangup and not (self.in_pipe or self.held):
            # Nothing to write and the destination is gone: say so now rather than when the
            # next byte arrives (a slow upload's server closing would otherwise go unseen).
            self._finish(ConnectionResetError(errno.ECONNRESET, "destination closed"))
            return
        self._pump()

    def fail(self, exc: BaseException) -> None:
        self._finish(exc)

    # ---- moving bytes -----------------------------------------------------------------------------
    def _pump(self) -> None:
        if self.finished:
            return
        try:
            self._move()
        except BlockingIOError:
            pass  # waiting for the poller (which side is in src_ready / in_pipe / held)
        except OSError as exc:  # EPIPE, ECONNRESET...
            if self.finished:
                raise  # from the owner's on_done, not from our I/O
            self._finish(exc)

    def _move(self) -> None:
        pool = self.pool
        while True:
            pipe = self.pipe
            if pipe is not None:
                while self.in_pipe:
                    n = os.splice(pipe.r, self.dst, self.in_pipe, flags=FLAGS)
                    self.in_pipe -= n
                    self.moved += n
                self.pipe = None
                pool.give(pipe, 0)  # empty: back for the next job that has bytes
            held = self.held
            if held is not None:
                while held:
                    n = os.write(self.dst, held)
                    held = self.held = held[n:]
                    self.moved += n
                self.held = None
            if self.remaining == 0:
                self._finish(None)
                return
            if not self.src_ready:
                return
            want = PIPE_SIZE if self.remaining is None else min(self.remaining, PIPE_SIZE)
            pipe = pool.take()
            if pipe is not None:
                try:
                    n = os.splice(self.src, pipe.w, min(want, pipe.size), flags=FLAGS)
                except BaseException as exc:
                    pool.give(pipe, 0)  # nothing entered it
                    if isinstance(exc, BlockingIOError):
                        self.src_ready = False  # (the pipe is empty: EAGAIN is the socket's)
                    raise
                if n == 0:
                    pool.give(pipe, 0)
                else:
                    self.pipe, self.in_pipe = pipe, n
            else:
                try:
                    data = os.read(self.src, min(want, COPY_CHUNK))
                except BlockingIOError:
                    self.src_ready = False
                    raise
                n = len(data)
                if n:
                    self.held = memoryview(data)
                    self.copied += n
            if n == 0:  # EOF from the source
                if self.remaining is None:
                    self._finish(None)
                else:
                    self._finish(ConnectionError(f"peer closed with {self.remaining} bytes left"))
                return
            if self.remaining is not None:
                self.remaining -= n

    def half_close_dst(self) -> None:
        """shutdown(SHUT_WR) on the destination socket (through a socket object that only
        borrows the fd: detached, never closed)."""
        try:
            s = socket.socket(fileno=self.dst)
        except OSError:
            return
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            s.detach()

    # ---- ending ---------------------------------------------------------------------------------
    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self._cleanup()

    def _finish(self, error: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        self._cleanup()
        if error is None and self.remaining is None:
            self.half_close_dst()
        self.on_done(self.moved, error)

    def _cleanup(self) -> None:
        """Out of the poller before the owner hands the fds back to (or closes) the transports;
        a pipe with bytes still in it is closed, not pooled."""
        self._unwatch()
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            self.pool.give(pipe, self.in_pipe)
        self.held = None

    def _unwatch(self) -> None:
        if self.watching:
            self.watching = False
            self.poller.unwatch(self.src, self)
            self.poller.unwatch(self.dst, self)

    def __repr__(self) -> str:
        return (f"<SpliceJob {self.src}->{self.dst} moved={self.moved} copied={self.copied} "
                f"remaining={self.remaining} in_pipe={self.in_pipe}>")


class Splices:
    """The splice jobs of one exchange (a request body, a response body, or both at once).

    A job starts only once its destination's write buffer has drained, so what Python already
    holds goes out first (byte order). The exchange's deadline asks ``progressed()``: bytes
    that cross by splice never pass through Python, so moving jobs are not silence. All jobs
    are cancelled together when the exchange ends.
    """

    __slots__ = ("loop", "jobs", "seen")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: list[SpliceJob] = []
        self.seen = 0  # bytes the jobs had moved at the last look

    def start(self, src: FlowControl, dst: FlowControl, nbytes: int,
              on_done: Callable[[int, BaseException | None], None], alive: Callable[[], bool],
              refused: Callable[[], None]) -> None:
        """Splice ``nbytes`` from src to dst once dst has drained, unless ``alive()`` says the
        exchange ended meanwhile; ``refused()`` when the job cannot start (a transport already
        gone, epoll refusing the fds): nothing has moved, so the owner goes on through Python."""
        def done(moved: int, error: BaseException | None) -> None:
            self.jobs = [j for j in self.jobs if not j.finished]
            on_done(moved, error)

        def go() -> None:
            if not alive():
                return
            try:
                job = SpliceJob(self.loop, src.transport, dst.transport, nbytes, done)
            except OSError:
                refused()
                return
            if not job.watch():
                refused()
                return
            self.jobs.append(job)
            job.pump()
        dst.when_drained(go)

    @property
    def moved(self) -> int:
        """Bytes the running jobs have moved so far."""
        return sum(j.moved for j in self.jobs)

    def progressed(self) -> bool:
        """Have the jobs moved bytes since the last look?"""
        if not self.jobs:
            return False
        moved = self.moved
        if moved == self.seen:
            return False
        self.seen = moved
        return True

    def cancel(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job.cancel()

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def __repr__(self) -> str:
        return f"<Splices jobs={len(self.jobs)} moved={self.moved}>"
