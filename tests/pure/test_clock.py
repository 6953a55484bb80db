"""The deadline clock (net/clock.py) with a fake time: a wave of expiries is handled in bounded
slices, in deadline order, and every expired object is handled exactly once."""

from __future__ import annotations

import pytest

from l7switch.net import clock as clock_mod
from l7switch.net.clock import SLICE_MAX, Clock, tick_for


class Obj:
    __slots__ = ("deadline", "fired", "log", "name", "rearm")

    def __init__(self, deadline: float, log: list[Obj], name: int = 0, rearm: float = 0.0) -> None:
        self.deadline = deadline
        self.fired = 0
        self.log = log
        self.name = name
        self.rearm = rearm

    def on_deadline(self, now: float) -> None:
        self.fired += 1
        self.log.append(self)
        if self.rearm:
            self.deadline = now + self.rearm


class FakeLater:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self.fns: list = []

    def __call__(self, delay: float, fn) -> None:
        self.calls.append(delay)
        self.fns.append(fn)

    def run(self) -> None:
        """Run the scheduled follow-up (the clock's own path, with the real monotonic time,
        which is far past the fake deadlines)."""
        fns, self.fns = self.fns, []
        for fn in fns:
            fn()


def make(n: int, later: FakeLater | None = None) -> tuple[Clock, list[Obj], list[Obj]]:
    log: list[Obj] = []
    clock = Clock(0.1, later)
    objs = [Obj(1.0 + (i % 97) * 0.001, log, i) for i in range(n)]
    for o in objs:
        clock.watch(o)
    return clock, objs, log


def test_tick_for():
    assert tick_for(5, 60, 10) == 1.0
    assert tick_for(0.4) == 0.1
    assert tick_for(0.01) == 0.05


def test_wave_is_handled_in_bounded_slices_in_deadline_order():
    later = FakeLater()
    clock, objs, log = make(3000, later)
    clock.sweep(2.0)
    assert len(log) <= SLICE_MAX  # the sweep itself does one slice only
    assert later.calls, "a follow-up slice must be scheduled for the rest"
    slices = 1
    while clock.pending:
        before = len(log)
        assert len(later.fns) == 1, "one follow-up at a time"
        later.run()
        assert len(log) - before <= SLICE_MAX
        slices += 1
        assert slices < 3000  # bounded loop
    assert len(log) == 3000
    assert all(o.fired == 1 for o in objs)
    deadlines = [o.deadline for o in log]  # cleared to 0 when handled: compare by name instead
    assert deadlines == [0.0] * 3000
    order = [1.0 + (o.name % 97) * 0.001 for o in log]
    assert order == sorted(order), "expired objects are handled earliest deadline first"
    assert slices >= 3000 // SLICE_MAX


def test_not_expired_and_cleared_are_left_alone():
    clock, objs, log = make(10)
    objs[0].deadline = 0.0
    objs[1].deadline = 5.0
    clock.sweep(2.0)
    assert objs[0].fired == 0 and objs[1].fired == 0
    assert sum(o.fired for o in objs) == 8


def test_backlog_skips_objects_unwatched_or_extended_meanwhile(monkeypatch):
    monkeypatch.setattr(clock_mod, "SLICE_MAX", 4)
    later = FakeLater()
    clock, objs, log = make(20, later)
    clock.sweep(2.0)
    assert len(log) == 4
    rest = [o for o in objs if o.fired == 0]
    clock.unwatch(rest[0])  # closed meanwhile
    rest[1].deadline = 1e12  # activity moved its deadline (far past any real monotonic time)
    rest[2].deadline = 0.0  # no deadline any more
    for _ in range(20):
        if not clock.pending:
            break
        later.run()
    assert not clock.pending and not later.fns
    assert rest[0].fired == rest[1].fired == rest[2].fired == 0
    assert len(log) == 17
    assert len(later.calls) == 4  # one follow-up per unfinished slice


def test_next_sweep_includes_what_a_backlog_left(monkeypatch):
    """A tick that comes while a wave is still being handled rescans: nothing is lost and
    nothing handled twice."""
    monkeypatch.setattr(clock_mod, "SLICE_MAX", 10)
    clock, objs, log = make(50)
    clock.sweep(2.0)
    extra = Obj(2.5, log, 999)
    clock.watch(extra)
    clock.sweep(3.0)
    while clock.pending:
        clock.run_slice(3.0)
    assert all(o.fired == 1 for o in objs) and extra.fired == 1


def test_rearming_handler_fires_again_later():
    log: list[Obj] = []
    clock = Clock(0.1)
    o = Obj(1.0, log, rearm=1.0)
    clock.watch(o)
    clock.sweep(1.0)
    clock.sweep(1.5)
    clock.sweep(2.0)
    assert o.fired == 2


def test_time_budget_bounds_a_slice(monkeypatch):
    """Slow handlers: the slice stops once SLICE_BUDGET of real time is spent."""
    monkeypatch.setattr(clock_mod, "SLICE_BUDGET", 0.0)
    clock, objs, log = make(100)
    clock.sweep(2.0)
    assert len(log) == clock_mod._BUDGET_EVERY


@pytest.mark.parametrize("n", [20_000])
def test_scan_of_many_watched_is_cheap(n):
    """The full scan is what every tick costs: keep it well under a millisecond per 20k."""
    import time
    clock, objs, log = make(n)
    for o in objs:
        o.deadline = 1e9
    t0 = time.perf_counter()
    for _ in range(10):
        clock.sweep(2.0)
    per = (time.perf_counter() - t0) / 10
    assert per < 0.01, f"{per * 1e3:.2f} ms per scan of {n}"
