"""Zero-copy relay with splice(2): socket -> pipe -> socket, bypassing Python buffers.

uvloop will not hand a transport's fd over (PseudoSocket has no detach(), and add_reader on a
transport's fd raises), so each job watches ``os.dup()`` copies of the two sockets while the
transports sit paused. Order of teardown matters: readers/writers are removed *before* the
duplicates are closed, or epoll keeps reporting the description (uvloop#61, the historical
100% CPU bug).

A job moves either exactly ``nbytes`` (a known-length body; the proxy then returns to parsing
at the message boundary) or everything up to EOF (a tunnel direction, after which the
destination is half-closed so the far side sees the EOF too).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from collections.abc import Callable

from .flow import FlowControl

FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# 1 MiB pipes: a sixteenth of the splice calls per MiB of Linux's default 64 KiB pipe; the
# default /proc/sys/fs/pipe-max-size is also 1 MiB, so an unprivileged process may ask for it.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def transport_fd(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise OSError(errno.EBADF, "transport has no socket")
    return int(sock.fileno())


class SpliceJob:
    """Move bytes from one transport's socket to another's; call ``on_done(moved, error)``."""

    __slots__ = ("loop", "src", "dst", "remaining", "in_pipe", "moved", "on_done", "pipe_r", "pipe_w",
                 "watching_src", "watching_dst", "finished")

    def __init__(self, loop: asyncio.AbstractEventLoop, src: asyncio.BaseTransport,
                 dst: asyncio.BaseTransport, nbytes: int | None,
                 on_done: Callable[[int, BaseException | None], None]) -> None:
        self.loop = loop
        # Four fds, any of which may fail to come (EMFILE under load): whatever was made before
        # the failure is closed again before the error reaches the caller.
        made: list[int] = []
        try:
            made.append(os.dup(transport_fd(src)))
            made.append(os.dup(transport_fd(dst)))
            made.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        self.src, self.dst, self.pipe_r, self.pipe_w = made
        try:
            fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only means more splice calls
        self.remaining = nbytes  # None: until EOF
        self.in_pipe = 0
        self.moved = 0
        self.on_done = on_done
        self.watching_src = False
        self.watching_dst = False
        self.finished = False

    def start(self) -> None:
        self._pump()

    def _pump(self) -> None:
        if self.finished:
            return
        try:
            while True:
                if self.in_pipe:
                    try:
                        n = os.splice(self.pipe_r, self.dst, self.in_pipe, flags=FLAGS)
                    except BlockingIOError:
                        self._watch(dst=True)
                        return
                    self.in_pipe -= n
                    self.moved += n
                    continue
                if self.remaining == 0:
                    self._finish(None)
                    return
                want = PIPE_SIZE if self.remaining is None else min(self.remaining, PIPE_SIZE)
                try:
                    n = os.splice(self.src, self.pipe_w, want, flags=FLAGS)
                except BlockingIOError:
                    self._watch(dst=False)
                    return
                if n == 0:  # EOF from the source
                    if self.remaining is None:
                        self._finish(None)
                    else:
                        self._finish(ConnectionError(f"peer closed with {self.remaining} bytes left"))
                    return
                self.in_pipe += n
                if self.remaining is not None:
                    self.remaining -= n
        except OSError as exc:  # EPIPE, ECONNRESET...
            self._finish(exc)

    def _watch(self, dst: bool) -> None:
        # Exactly one side is watched at a time: we wait either for data or for room.
        if dst:
            if self.watching_src:
                self.loop.remove_reader(self.src)
                self.watching_src = False
            if not self.watching_dst:
                self.loop.add_writer(self.dst, self._pump)
                self.watching_dst = True
        else:
            if self.watching_dst:
                self.loop.remove_writer(self.dst)
                self.watching_dst = False
            if not self.watching_src:
                self.loop.add_reader(self.src, self._pump)
                self.watching_src = True

    def half_close_dst(self) -> None:
        """shutdown(SHUT_WR) acts on the socket, not the descriptor, so the dup can do it."""
        try:
            s = socket.socket(fileno=os.dup(self.dst))
            try:
                s.shutdown(socket.SHUT_WR)
            finally:
                s.close()
        except OSError:
            pass

    def cancel(self) -> None:
        if not self.finished:
            self._cleanup()
            self.finished = True

    def _finish(self, error: BaseException | None) -> None:
        if self.finished:
            return
        if error is None and self.remaining is None:
            self.half_close_dst()
        self._cleanup()
        self.finished = True
        self.on_done(self.moved, error)

    def _cleanup(self) -> None:
        if self.watching_src:
            self.loop.remove_reader(self.src)
        if self.watching_dst:
            self.loop.remove_writer(self.dst)
        self.watching_src = self.watching_dst = False
        for fd in (self.src, self.dst, self.pipe_r, self.pipe_w):
            try:
                os.close(fd)
            except OSError as exc:  # pragma: no cover - double close would be a bug
                if exc.errno != errno.EBADF:
                    raise

    def __repr__(self) -> str:
        return f"<SpliceJob moved={self.moved} remaining={self.remaining} in_pipe={self.in_pipe}>"


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
              failed: Callable[[OSError], None]) -> None:
        """Splice ``nbytes`` from src to dst once dst has drained, unless ``alive()`` says the
        exchange ended meanwhile; ``failed`` when no job can be made (no fds for a pipe)."""
        def done(moved: int, error: BaseException | None) -> None:
            self.jobs = [j for j in self.jobs if not j.finished]
            on_done(moved, error)

        def go() -> None:
            if not alive():
                return
            try:
                job = SpliceJob(self.loop, src.transport, dst.transport, nbytes, done)
            except OSError as exc:  # EMFILE: SpliceJob closed what it had made
                failed(exc)
                return
            self.jobs.append(job)
            job.start()
        dst.when_drained(go)

    def progressed(self) -> bool:
        """Have the jobs moved bytes since the last look?"""
        if not self.jobs:
            return False
        moved = sum(j.moved for j in self.jobs)
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
        return f"<Splices jobs={len(self.jobs)} moved={sum(j.moved for j in self.jobs)}>"
