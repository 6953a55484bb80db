"""One periodic sweep instead of a timer per connection: the switch's deadline clock.

Every watched object has a ``deadline`` (monotonic seconds, 0 = none) and ``on_deadline(now)``;
setting a deadline is one attribute store on the hot path instead of a ``call_later`` handle to
create and cancel per request. The tick is a quarter of the shortest timeout, within
[50 ms, 1 s], so deadlines fire at most ~25% late while a sweep costs O(watched) work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger("l7switch")


class Timed(Protocol):
    deadline: float

    def on_deadline(self, now: float) -> None: ...


def tick_for(*timeouts: float) -> float:
    """A quarter of the shortest timeout, within [50 ms, 1 s]."""
    return max(0.05, min(1.0, min(timeouts) / 4))


class Clock:
    __slots__ = ("tick", "watched", "_task")

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.watched: set[Timed] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, obj: Timed) -> None:
        self.watched.add(obj)

    def unwatch(self, obj: Timed) -> None:
        self.watched.discard(obj)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        expired = [o for o in self.watched if 0.0 < o.deadline <= now]
        for obj in expired:
            obj.deadline = 0.0
            try:
                obj.on_deadline(now)
            except Exception:  # pragma: no cover - a bug in one connection must not stop the clock
                log.exception("deadline handler failed for %r", obj)

    def __repr__(self) -> str:
        return f"<Clock tick={self.tick:g}s watched={len(self.watched)}>"
