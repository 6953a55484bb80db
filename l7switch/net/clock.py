"""One periodic sweep instead of a timer per connection: the switch's deadline clock.

Every watched object has a ``deadline`` (monotonic seconds, 0 = none) and ``on_deadline(now)``;
setting a deadline is one attribute store on the hot path instead of a ``call_later`` handle to
create and cancel per request. The tick is a quarter of the shortest timeout, within
[50 ms, 1 s], so deadlines fire at most ~25% late.

Finding what expired is a scan of every watched object (one list comprehension: ~0.4 ms for
20,000 objects on the reference machine, i.e. 0.04% of a 1 s tick; a heap or timer wheel would
need a push on every deadline store to learn of deadlines set from 0 or shortened, which the
hot paths do all the time). Handling what expired is the costly part — a close, often a 408
write and a log line, tens of microseconds each — and thousands of deadlines can expire
together (connections opened in one burst). So the expired are handled in deadline order, in
slices bounded in count (``SLICE_MAX``) and in time (``SLICE_BUDGET``), with ``SLICE_GAP``
between slices for the rest of the loop: a wave of 3,000 expiries becomes a few hundred short
slices instead of one stall of 80-200 ms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final, Protocol

log = logging.getLogger("l7switch")

#: Handlers run per slice at most, and the real time a slice may take (checked every few
#: handlers), then a gap before the next. A normal request needs two or three loop passes, each
#: of which may follow a slice: 0.5 ms slices with 2 ms gaps keep a wave's share of the loop at
#: a fifth (bench/deadline_wave.py: wrk's p99 during a wave of 3,000 head timeouts stayed at its
#: baseline, where 1 ms slices with 1 ms gaps still showed 12-32 ms; a 3,000-connection wave
#: of ~40 us closes then spreads over ~0.6 s, well inside the 1 s tick).
SLICE_MAX = 64
SLICE_BUDGET = 0.0005
SLICE_GAP = 0.002
_BUDGET_EVERY = 8  # handlers between two looks at perf_counter

_deadline = attrgetter("deadline")

#: ``time.monotonic`` held in a final name: the compiled build calls it without looking up the
#: module and its attribute on every call (several per request).
monotonic: Final = time.monotonic


class Timed(Protocol):
    deadline: float

    def on_deadline(self, now: float) -> None: ...


Later = Callable[[float, Callable[[], None]], Any]


def tick_for(*timeouts: float) -> float:
    """A quarter of the shortest timeout, within [50 ms, 1 s]."""
    return max(0.05, min(1.0, min(timeouts) / 4))


class Every:
    """A periodic job on the clock (``Clock.every``)."""

    __slots__ = ("clock", "interval", "fn", "deadline")

    def __init__(self, clock: Clock, interval: float, fn: Callable[[float], object]) -> None:
        self.clock = clock
        self.interval = interval
        self.fn = fn
        self.deadline = time.monotonic() + (interval or clock.tick)

    def on_deadline(self, now: float) -> None:
        self.fn(now)
        self.deadline = now + (self.interval or self.clock.tick)

    def __repr__(self) -> str:
        return f"<Every {self.interval or self.clock.tick:g}s {self.fn!r}>"


class Clock:
    __slots__ = ("tick", "watched", "_task", "_backlog", "_later", "_follow_up", "slices")

    def __init__(self, tick: float, later: Later | None = None) -> None:
        self.tick = tick
        self.watched: set[Timed] = set()
        self._task: asyncio.Task[None] | None = None
        # Expired objects not handled yet, earliest deadline first (a wave larger than a slice).
        self._backlog: deque[Timed] = deque()
        # How a follow-up slice is scheduled: loop.call_later once started (tests pass a fake).
        self._later = later
        self._follow_up = False  # a follow-up slice is scheduled
        self.slices = 0  # slices run, for tests and stats

    def watch(self, obj: Timed) -> None:
        self.watched.add(obj)

    def every(self, interval: float, fn: Callable[[float], object]) -> Every:
        """Run ``fn(now)`` about every ``interval`` seconds (0: every tick) on this clock, not on
        a timer of its own (persistence table sweeps, pools' ticks, pressure relief)."""
        job = Every(self, interval, fn)
        self.watch(job)
        return job

    def unwatch(self, obj: Timed) -> None:
        self.watched.discard(obj)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._later is None:
            self._later = loop.call_later
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._backlog.clear()

    @property
    def pending(self) -> int:
        """Expired objects waiting for a slice."""
        return len(self._backlog)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Find everything expired by ``now`` (the backlog of an earlier wave included: it is
        still expired) and handle the first slice of it."""
        expired = [o for o in self.watched if 0.0 < o.deadline <= now]
        if len(expired) > 1:
            expired.sort(key=_deadline)
        self._backlog = deque(expired)
        self.run_slice(now)

    def run_slice(self, now: float) -> int:
        """Handle up to a slice of the backlog, earliest deadline first; schedule the next
        slice if some remain. Returns how many handlers ran."""
        backlog, watched = self._backlog, self.watched
        ran = 0
        t0 = time.perf_counter()
        while backlog:
            obj = backlog.popleft()
            d = obj.deadline
            # Closed meanwhile, or its deadline moved (activity) or was cleared: not expired.
            if not (0.0 < d <= now) or obj not in watched:
                continue
            obj.deadline = 0.0
            try:
                obj.on_deadline(now)
            except Exception:  # pragma: no cover - a bug in one connection must not stop the clock
                log.exception("deadline handler failed for %r", obj)
            ran += 1
            if ran >= SLICE_MAX or (ran % _BUDGET_EVERY == 0 and time.perf_counter() - t0 > SLICE_BUDGET):
                break
        self.slices += 1
        if backlog and not self._follow_up and self._later is not None:
            self._follow_up = True
            self._later(SLICE_GAP, self._next_slice)
        return ran

    def _next_slice(self) -> None:
        self._follow_up = False
        # The time of this slice: what expired since the sweep waits for the next one (the
        # backlog is ordered, and rescanning here would cost a full scan per slice).
        self.run_slice(time.monotonic())

    def __repr__(self) -> str:
        return f"<Clock tick={self.tick:g}s watched={len(self.watched)} pending={len(self._backlog)}>"
