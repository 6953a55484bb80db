"""One epoll instance of our own for the sockets that splice jobs drive (net/splice.py).

uvloop refuses ``add_reader`` on a transport's fd (``Loop._ensure_fd_no_transport``), which is
why splice jobs used to watch ``os.dup()`` copies: two more fds per job. Instead the process
keeps a second epoll instance per loop, whose own fd is registered once on the loop with
``loop.add_reader``; the jobs register the transports' *own* socket fds in it while the
transports are paused. epoll(7) allows one file in several epoll instances, and with no dup
holding the file description, a socket its transport closes leaves our set by itself — the
uvloop#61 teardown hazard (epoll reporting a description a dup kept alive after the transport
closed its fd: 100% CPU) cannot arise. Jobs still unregister before handing the fd back.

Why uvloop is not disturbed: ``pause_reading`` is ``uv_read_stop`` (uvloop/handles/stream.pyx
``_stop_reading``), which clears ``read_cb`` and calls ``uv__io_stop(POLLIN)``; with no write
pending (a job starts only on an empty write buffer) the watcher's mask is empty and
``loop->watchers[fd]`` becomes NULL. libuv does not EPOLL_CTL_DEL at once: the next event on the
fd finds no watcher in ``uv__io_poll`` (src/unix/linux.c) and is DELeted then — one wakeup, no
callback. Should a write be pending, POLLIN is masked out, and POLLERR/POLLHUP reach ``uv__read``
only, which reads nothing while ``read_cb`` is NULL. ``resume_reading`` ADDs again (EEXIST is
retried as MOD by libuv).

Edge-triggered (EPOLLET), with both EPOLLIN and EPOLLOUT asked once per fd: a job never has to
change its interest between "waiting for data" and "waiting for room" (level-triggered, a
writable destination would wake us on every tick unless its mask were modified on each switch),
so a job costs one epoll_ctl to start and one to end. ET's rule — act until EAGAIN — is the
jobs' loop anyway: they return only on EAGAIN from the side they wait for, or when done. A job
that joins a fd already registered (the client socket is the source of a request body and the
destination of a response body at once; a tunnel's two directions) re-arms it with
EPOLL_CTL_MOD, which makes the kernel report what is ready already. Spurious wakeups cost a
failed splice; a missed one would stall, so every start pumps once before waiting.
"""

from __future__ import annotations

import asyncio
import logging
import select
from typing import Protocol

log = logging.getLogger("l7switch")

MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
READ = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
WRITE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
HANGUP = select.EPOLLERR | select.EPOLLHUP
# Events taken per wakeup; more stay ready and wake the (level-triggered) loop reader again,
# so a burst is spread over loop iterations instead of running in one.
MAX_EVENTS = 256


class Watcher(Protocol):
    def readable(self) -> None: ...

    def writable(self, hangup: bool) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


class Poller:
    __slots__ = ("loop", "ep", "fds")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()  # (close-on-exec)
        self.fds: dict[int, list[Watcher | None]] = {}  # fd -> [its reader, its writer]
        loop.add_reader(self.ep.fileno(), self._ready)

    def watch(self, fd: int, reader: Watcher | None = None, writer: Watcher | None = None) -> None:
        """``reader`` hears of data on fd, ``writer`` of room; OSError if epoll refuses."""
        slot = self.fds.get(fd)
        if slot is None:
            self.ep.register(fd, MASK)
            self.fds[fd] = [reader, writer]
            return
        try:
            self.ep.modify(fd, MASK)  # re-arm: what is ready already is reported again
        except FileNotFoundError:
            # The socket this slot was for was closed without unwatch (it left the set with
            # its last fd) and the number now names a new one.
            self.ep.register(fd, MASK)
            slot[0] = slot[1] = None
        if reader is not None:
            slot[0] = reader
        if writer is not None:
            slot[1] = writer

    def unwatch(self, fd: int, watcher: Watcher) -> None:
        """``watcher`` no longer hears of fd; the fd leaves the set once nobody does."""
        slot = self.fds.get(fd)
        if slot is None:
            return
        if slot[0] is watcher:
            slot[0] = None
        if slot[1] is watcher:
            slot[1] = None
        if slot[0] is None and slot[1] is None:
            del self.fds[fd]
            try:
                self.ep.unregister(fd)
            except OSError:
                pass  # already closed (and so already out of the set)

    def _ready(self) -> None:
        try:
            events = self.ep.poll(0, MAX_EVENTS)
        except InterruptedError:  # pragma: no cover
            return
        fds = self.fds
        for fd, ev in events:
            slot = fds.get(fd)
            if slot is None:
                continue  # unwatched by an earlier callback of this batch
            reader = slot[0]
            if reader is not None and ev & READ:
                self._call(reader, None)
            writer = slot[1]  # (the reader's callback may have changed the slot)
            if writer is not None and ev & WRITE:
                self._call(writer, bool(ev & HANGUP))

    def _call(self, watcher: Watcher, hangup: bool | None) -> None:
        try:
            if hangup is None:
                watcher.readable()
            else:
                watcher.writable(hangup)
        except Exception as exc:  # a bug in a job must not stop the others' events
            log.exception("splice job %r failed", watcher)
            watcher.fail(exc)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self.ep.fileno())
        self.ep.close()
        self.fds.clear()

    def __repr__(self) -> str:
        return f"<Poller epfd={self.ep.fileno()} fds={len(self.fds)}>"


_pollers: dict[asyncio.AbstractEventLoop, Poller] = {}


def poller_for(loop: asyncio.AbstractEventLoop) -> Poller:
    """The poller of ``loop`` (one per loop; a process normally runs one)."""
    poller = _pollers.get(loop)
    if poller is None:
        for old in [lp for lp in _pollers if lp.is_closed()]:
            _pollers.pop(old).close()
        poller = _pollers[loop] = Poller(loop)
    return poller
