"""The listening sockets, and accepting on them that can stop and start again.

uvloop's ``Server`` has no pause: ``close()`` is its only way to stop accepting, and closing a
listening socket resets every connection waiting in its backlog. So the switch owns each
listening socket itself and hands uvloop a ``dup()`` of it (``create_server(sock=...)``). To
pause, the uvloop server is closed: that closes only the duplicate fd, and the listening socket
— with the connections queued in its kernel backlog — lives on through ours. To resume, a new
uvloop server gets a fresh ``dup()``; it accepts what waited. Accepting stays uvloop's (libuv's
accept loop in C, one ``connection_made`` per connection, as before).

(The other way, an accept loop of our own — ``add_reader`` on the socket, ``accept()``,
``connect_accepted_socket`` — would put a Python call and a coroutine on every connection
for a rare event.)

EMFILE/ENFILE on accept never reaches Python under uvloop: libuv keeps a spare fd, and when
accept fails for want of fds it closes the spare, accepts and closes every pending connection,
and takes the spare again (libuv src/unix/stream.c ``uv__emfile_trick``), i.e. it sheds the
backlog (measured with uvloop 0.23: 10 fds to spare and 30 clients connecting: 12 accepted,
18 closed at once with EOF, no exception, the listener still serving). That is accept-then-fail;
the connection cap derived from the fd limit (switch.py ``derived_cap``) keeps the switch away
from it. What can fail here is the ``dup()`` of a resume: that is logged at most
once a second and retried after ``RETRY``, as HAProxy pauses a listener for a short while when
accept runs out of fds (its ``listener_full``/``limit_listener`` with a 100 ms delay).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..net.ratelog import fd_exhausted, fd_log

log = logging.getLogger("l7switch")

#: listen(2) backlog; HAProxy's default maxconn-derived backlog is in this range, and the
#: kernel caps it at net.core.somaxconn anyway. While the switch is at its cap, new clients
#: wait here (and beyond it the kernel drops SYNs, which clients retry).
BACKLOG = 4096
#: How long accepting stays off after running out of fds (HAProxy retries a listener that hit
#: EMFILE after 100 ms).
RETRY = 0.1


class Listener:
    """One listening socket the switch owns, and the uvloop server accepting on a dup of it
    (None while paused)."""

    __slots__ = ("sock", "factory", "tls", "server", "opening", "name")

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol],
                 tls: dict[str, Any]) -> None:
        self.sock = sock
        self.factory = factory
        self.tls = tls
        self.server: asyncio.Server | None = None
        self.opening = False  # a resume's create_server is under way
        h, p = sock.getsockname()[:2]
        self.name = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

    def __repr__(self) -> str:
        state = "accepting" if self.server is not None else "paused"
        return f"<Listener {self.name} {state}>"


class Listeners:
    """Every listener of a switch; ``pause``/``resume`` are the connection cap's (proxy/state.Accept)."""

    def __init__(self) -> None:
        self.all: list[Listener] = []
        self.paused = False  # what the cap wants
        self.closed = False
        self.pauses = 0  # times accepting stopped (the cap, or fds ran out)
        self._retry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, host: str, port: int, factory: Callable[[], asyncio.Protocol],
                   tls: dict[str, Any]) -> list[Listener]:
        """Bind and listen on every address ``host`` resolves to (as create_server(host, port)
        does) and start accepting; raises OSError as bind() does."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, family=socket.AF_UNSPEC,
                                       type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        opened: list[Listener] = []
        try:
            for family, type_, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(family, type_, proto)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(addr)
                    sock.listen(BACKLOG)
                    sock.setblocking(False)
                except BaseException:
                    sock.close()
                    raise
                lst = Listener(sock, factory, tls)
                opened.append(lst)
                lst.server = await self._serve(lst)
        except BaseException:
            for lst in opened:
                self._close_one(lst)
            raise
        self.all.extend(opened)
        return opened

    async def adopt(self, socks: list[socket.socket], factory: Callable[[], asyncio.Protocol],
                    tls: dict[str, Any]) -> list[Listener]:
        """Serve sockets opened elsewhere (a worker's, from the master: already bound and listening)."""
        opened: list[Listener] = []
        for sock in socks:
            sock.setblocking(False)
            lst = Listener(sock, factory, tls)
            lst.server = await self._serve(lst)
            opened.append(lst)
        self.all.extend(opened)
        return opened

    @staticmethod
    async def _serve(lst: Listener) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        dup = lst.sock.dup()  # uvloop closes the fd it was given when its server closes
        try:
            return await loop.create_server(lst.factory, sock=dup, backlog=BACKLOG, **lst.tls)
        except BaseException:
            dup.close()
            raise

    # ---- proxy/state.Accept ---------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop accepting on every listener; connections arriving meanwhile wait in the backlog."""
        self.paused = True
        self.pauses += 1
        for lst in self.all:
            server, lst.server = lst.server, None
            if server is not None:
                server.close()

    def resume(self) -> None:
        """Accept again (unless the switch is stopping or out of fds: the retry resumes then)."""
        self.paused = False
        if self.closed or self._retry is not None:
            return
        loop = asyncio.get_running_loop()
        for lst in self.all:
            if lst.server is None and not lst.opening:
                lst.opening = True
                task = loop.create_task(self._reopen(lst))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _reopen(self, lst: Listener) -> None:
        try:
            server = await self._serve(lst)
        except Exception as exc:  # never an unretrieved task exception; try again shortly
            lst.opening = False
            if not fd_exhausted(exc):
                log.error("listener %s cannot accept again: %r; retrying", lst.name, exc)
            self.out_of_fds(exc)
            return
        lst.opening = False
        if self.paused or self.closed:  # paused again (or stopped) while this was opening
            server.close()
        else:
            lst.server = server

    def out_of_fds(self, exc: Exception) -> None:
        """No fd for accepting: stop for RETRY, then try again; logged at most once a second."""
        if fd_exhausted(exc):
            fd_log.warning("out of file descriptors (%s): not accepting for %d ms",
                           getattr(exc, "strerror", None) or exc, RETRY * 1000)
        want_paused = self.paused
        self.pause()
        self.paused = want_paused
        if self._retry is None and not self.closed:
            self._retry = asyncio.get_running_loop().call_later(RETRY, self._retried)

    def _retried(self) -> None:
        self._retry = None
        if not self.paused:
            self.resume()

    # ---- reload ------------------------------------------------------------------------------------
    def drop(self, listeners: list[Listener]) -> None:
        """Close these listeners for good (a reload removed them, or could not open them all).
        Connections they accepted stay; those still in their backlog are reset."""
        for lst in listeners:
            if lst in self.all:
                self.all.remove(lst)
            self._close_one(lst)

    def replace(self, listeners: list[Listener], factory: Callable[[], asyncio.Protocol],
                tls: dict[str, Any]) -> None:
        """New settings for these listeners on the same sockets: uvloop's server on the old dup
        closes and one on a fresh dup starts, as a pause and a resume do (arrivals wait in the
        backlog meanwhile; none is refused)."""
        for lst in listeners:
            lst.factory, lst.tls = factory, tls
            server, lst.server = lst.server, None
            if server is not None:
                server.close()
        if not self.paused:
            self.resume()

    # ---- lifecycle ---------------------------------------------------------------------------------
    @staticmethod
    def _close_one(lst: Listener) -> None:
        server, lst.server = lst.server, None
        if server is not None:
            server.close()
        lst.sock.close()  # the backlog's connections are reset: the switch is stopping

    def close(self) -> list[asyncio.Server]:
        """Stop accepting for good and close the listening sockets; returns the uvloop servers
        that were accepting (their wait_closed() waits for their connections)."""
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        servers = [lst.server for lst in self.all if lst.server is not None]
        for lst in self.all:
            self._close_one(lst)
        return servers

    def snapshot(self) -> dict[str, Any]:
        return {"accepting": not self.closed and all(lst.server is not None for lst in self.all),
                "pauses": self.pauses}

    def __repr__(self) -> str:
        return f"<Listeners {self.all}>"
