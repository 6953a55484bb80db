"""Bounded work per loop turn, where a storm would otherwise do it all at once.

An event loop runs every ready callback of a turn before it polls again, so thousands of
connections arriving together (a flood, or its attackers reconnecting as one) are parsed, routed
and connected to their servers in one turn, and every established client waits behind them:
p99 of normal clients went to 0.4–0.6 s when 5,000 slow uploads started (bench/hostile). HAProxy
bounds the same work per turn (``tune.maxaccept`` 64, the run queue depth); here:

- ``FirstBytes``: new connections' first requests, FIRST_PER_TURN per turn, the rest on the
  next turns in arrival order. A keep-alive client's next request never waits here.
- ``ConnectGate``: server connects in flight at once, MAX_CONNECTING; the rest start, in order,
  as others finish, so their completions (attach, write, splice set-up) arrive a few at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

#: New connections whose first bytes are handled per loop turn; the rest wait for the next
#: turns, in arrival order. A storm of thousands of connections arriving at once (a flood, or
#: its attackers reconnecting together) otherwise parses, routes and connects them all in one
#: turn, and every established client waits behind them (HAProxy bounds the same work per
#: turn with tune.maxaccept, 64 by default, and its run queue depth).
FIRST_PER_TURN = 64


class Newcomer(Protocol):
    """A client connection whose first bytes were held back (ClientConnection)."""

    def take_turn(self) -> None: ...


class FirstBytes:
    """Paces new connections' first requests: FIRST_PER_TURN per loop turn, the rest queued.
    Established connections (a keep-alive client's next request) never wait here."""

    __slots__ = ("loop", "count", "waiting", "scheduled")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.count = 0  # first requests handled this turn
        self.waiting: deque[Newcomer] = deque()
        self.scheduled = False

    def admit(self, conn: Newcomer) -> bool:
        """True: handle its first bytes now; False: it waits (the caller holds them)."""
        if self.count < FIRST_PER_TURN and not self.waiting:
            if not self.count:
                self._schedule()  # a new turn starts the count again
            self.count += 1
            return True
        self.waiting.append(conn)
        self._schedule()
        return False

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            loop = self.loop or asyncio.get_running_loop()
            loop.call_soon(self._turn)

    def _turn(self) -> None:
        """A new loop turn: the waiting connections go first, up to the turn's share."""
        self.scheduled = False
        self.count = 0
        waiting = self.waiting
        while waiting and self.count < FIRST_PER_TURN:
            self.count += 1
            waiting.popleft().take_turn()
        if waiting or self.count:
            self._schedule()

    def forget(self, conn: Newcomer) -> None:
        try:
            self.waiting.remove(conn)  # (rare: a waiting connection that closed)
        except ValueError:
            pass



#: Server connects in flight at once (loopback or LAN connects take ~0.1 ms, so 64 in flight is
#: far from limiting throughput; HAProxy's tune.maxaccept bounds its accepts per turn at 64 too).
MAX_CONNECTING = 64


class ConnectGate:
    """Starts connect coroutines through ``spawn``, at most MAX_CONNECTING at once; the rest wait
    in order and start as others finish (each connect keeps its own timeout from its start)."""

    __slots__ = ("spawn", "running", "waiting")

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.spawn = spawn
        self.running = 0
        self.waiting: deque[Coroutine[Any, Any, None]] = deque()

    def __call__(self, coro: Coroutine[Any, Any, None]) -> None:
        if self.running < MAX_CONNECTING:
            self._start(coro)
        else:
            self.waiting.append(coro)

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        self.running += 1
        self.spawn(self._run(coro))

    async def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        finally:
            self.running -= 1
            if self.waiting:
                self._start(self.waiting.popleft())

    def close(self) -> None:
        """The switch stops: connects that never started are dropped (never awaited)."""
        while self.waiting:
            self.waiting.popleft().close()

    def __repr__(self) -> str:
        return f"<ConnectGate running={self.running} waiting={len(self.waiting)}>"
