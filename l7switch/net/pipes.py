"""A small pool of reusable pipes for splice(2) (HAProxy's pipe pool, ``maxpipes``).

A splice job borrows a pipe only while bytes are in it: it takes one when its source has bytes
to move and gives it back the moment the pipe is empty again, so a slow upload waiting for its
next byte holds none, and a handful of pipes serves thousands of spliced bodies. A pipe still
holding bytes (the job failed mid-way) is closed, never pooled: the next job would send them.

When no pipe can be had — the pool is at its limit, or pipe2 fails with EMFILE/ENFILE — ``take``
returns None and the job copies that chunk through Python instead (splice.py): fewer fds is
never an error, only a few more copies.
"""

from __future__ import annotations

import fcntl
import logging
import os

from .ratelog import fd_exhausted, fd_log

log = logging.getLogger("l7switch")

# 1 MiB pipes: a sixteenth of the splice calls per MiB of Linux's default 64 KiB pipe (pipe(7):
# "the pipe capacity is 16 pages" by default); /proc/sys/fs/pipe-max-size is 1 MiB by default,
# so an unprivileged process may ask for it. Past /proc/sys/fs/pipe-user-pages-soft (16384
# pages: 64 such pipes per user) the kernel refuses the resize (EPERM) and the pipe keeps its
# default size, which only means more splice calls.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# At most this many pipes at once, in use or idle: 512 fds. HAProxy's maxpipes defaults to
# maxconn/4, sized for connections; a job here holds a pipe only while its destination is full
# (bytes are waiting in the pipe), so the count tracks stalled transfers, not connections, and a
# fixed few hundred covers a worker; beyond it bodies are copied, not refused.
MAX_PIPES = 256


class Pipe:
    __slots__ = ("r", "w", "size")

    def __init__(self, r: int, w: int, size: int) -> None:
        self.r = r
        self.w = w
        self.size = size  # capacity in bytes (what F_SETPIPE_SZ granted)

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:  # pragma: no cover - our own fds, closed once
                pass

    def __repr__(self) -> str:
        return f"<Pipe {self.r}/{self.w} {self.size}>"


class PipePool:
    __slots__ = ("limit", "idle", "busy", "made", "misses")

    def __init__(self, limit: int = MAX_PIPES) -> None:
        self.limit = limit
        self.idle: list[Pipe] = []
        self.busy = 0  # pipes taken and not given back
        self.made = 0  # pipes created (for tests and the bench)
        self.misses = 0  # takes answered None: the pool was full or pipe2 failed

    def take(self) -> Pipe | None:
        """An empty pipe, or None: the caller copies through Python instead."""
        if self.idle:
            self.busy += 1
            return self.idle.pop()  # LIFO: the warmest pipe
        if self.busy >= self.limit:
            self.misses += 1
            return None
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.misses += 1
            if fd_exhausted(exc):
                fd_log.warning("out of file descriptors for splice pipes (%s): copying through Python",
                               exc.strerror)
            else:
                log.warning("cannot make a splice pipe: %s; copying through Python", exc)
            return None
        try:
            size = fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # EPERM past pipe-user-pages-soft: keep what pipe2 gave
            size = fcntl.fcntl(w, F_GETPIPE_SZ)
        self.made += 1
        self.busy += 1
        return Pipe(r, w, size)

    def give(self, pipe: Pipe, leftover: int) -> None:
        """Back after use; ``leftover``: bytes still in it (then it is closed, never reused)."""
        self.busy -= 1
        if leftover or len(self.idle) + self.busy >= self.limit:
            pipe.close()
        else:
            self.idle.append(pipe)

    def clear(self) -> None:
        """Close the idle pipes (tests; a process that wants its fds back)."""
        idle, self.idle = self.idle, []
        for pipe in idle:
            pipe.close()

    def snapshot(self) -> dict[str, int]:
        return {"idle": len(self.idle), "busy": self.busy, "made": self.made, "misses": self.misses,
                "limit": self.limit}

    def __repr__(self) -> str:
        return f"<PipePool idle={len(self.idle)} busy={self.busy}/{self.limit} misses={self.misses}>"


#: The process's pool (pipes belong to no loop).
pool = PipePool()
