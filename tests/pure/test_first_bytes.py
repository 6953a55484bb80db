"""state.FirstBytes: new connections' first requests, FIRST_PER_TURN per loop turn, the rest in
arrival order on the next turns (a fake loop: a list of callbacks run a turn at a time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from l7switch.proxy.state import FIRST_PER_TURN, FirstBytes


class FakeLoop:
    def __init__(self) -> None:
        self.ready: list[Callable[[], Any]] = []

    def call_soon(self, cb: Callable[[], Any]) -> None:
        self.ready.append(cb)

    def turn(self) -> None:
        todo, self.ready = self.ready, []
        for cb in todo:
            cb()


class Newcomer:
    def __init__(self, i: int, log: list[int]) -> None:
        self.i = i
        self.log = log

    def take_turn(self) -> None:
        self.log.append(self.i)


def pacer() -> tuple[FirstBytes, FakeLoop]:
    first, loop = FirstBytes(), FakeLoop()
    first.loop = loop  # type: ignore[assignment]
    return first, loop


def test_a_storm_is_spread_over_turns_in_arrival_order() -> None:
    first, loop = pacer()
    log: list[int] = []
    conns = [Newcomer(i, log) for i in range(3 * FIRST_PER_TURN + 10)]
    admitted = [c.i for c in conns if first.admit(c)]
    assert admitted == list(range(FIRST_PER_TURN))  # the first turn's share, at once
    per_turn = []
    for _ in range(5):
        before = len(log)
        loop.turn()
        per_turn.append(len(log) - before)
    assert per_turn == [FIRST_PER_TURN, FIRST_PER_TURN, 10, 0, 0]
    assert log == list(range(FIRST_PER_TURN, len(conns)))  # the rest, in order
    assert not loop.ready  # idle again: nothing scheduled


def test_a_newcomer_after_the_storm_waits_behind_it_and_forget_drops_one() -> None:
    first, loop = pacer()
    log: list[int] = []
    conns = [Newcomer(i, log) for i in range(FIRST_PER_TURN + 3)]
    for c in conns:
        first.admit(c)
    first.forget(conns[FIRST_PER_TURN + 1])  # closed while waiting
    assert not first.admit(Newcomer(999, log))  # others wait: it queues behind them
    loop.turn()
    assert log == [FIRST_PER_TURN, FIRST_PER_TURN + 2, 999]


def test_each_turn_has_its_own_share() -> None:
    first, loop = pacer()
    log: list[int] = []
    assert all(first.admit(Newcomer(i, log)) for i in range(FIRST_PER_TURN))
    loop.turn()  # a new turn: the count starts again
    assert all(first.admit(Newcomer(i, log)) for i in range(FIRST_PER_TURN))
    assert log == []
