"""The persistence store interface: expiry with a fake clock, bounds, touch, sweeps, Tables."""

from __future__ import annotations

from l7switch.balance.store import MemoryStore, Tables


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_get_set_and_expiry() -> None:
    clock = FakeClock()
    s = MemoryStore(clock=clock)
    s.set("10.0.0.0", "a1", 300)
    assert s.get("10.0.0.0") == "a1"
    clock.now += 299.9
    assert s.get("10.0.0.0") == "a1"  # get does not extend the life
    clock.now += 0.2
    assert s.get("10.0.0.0") is None
    assert len(s) == 0  # dropped when found stale


def test_touch_extends_only_live_entries() -> None:
    clock = FakeClock()
    s = MemoryStore(clock=clock)
    s.set("k", "v", 10)
    clock.now += 8
    assert s.touch("k", 10) is True
    clock.now += 8
    assert s.get("k") == "v"  # 16 s after set, 8 after the touch
    clock.now += 3
    assert s.touch("k", 10) is False and s.get("k") is None
    assert s.touch("absent", 10) is False


def test_bounded_lru_eviction_counts() -> None:
    s = MemoryStore(max_entries=3, clock=FakeClock())
    for k in "abc":
        s.set(k, k.upper(), 60)
    s.touch("a", 60)  # a is now the most recently used
    s.set("d", "D", 60)
    assert s.get("b") is None and s.get("a") == "A" and s.get("d") == "D"
    assert len(s) == 3 and s.evicted == 1


def test_expire_sweeps_from_the_cold_end() -> None:
    clock = FakeClock()
    s = MemoryStore(clock=clock)
    for i in range(5):
        s.set(f"k{i}", "v", 10)
        clock.now += 1
    clock.now += 7.5  # now 1012.5: k0..k2 (set at 1000..1002) are older than 10 s
    assert s.expire() == 3
    assert [k for k, _, _ in s.items()] == ["k3", "k4"]
    s.delete("k3")
    assert len(s) == 1


def test_tables_create_once_and_hand_over() -> None:
    t = Tables()
    src = t.table("source:app", 10)
    src.set("192.0.2.0", "a1", 300)
    assert t.table("source:app") is src
    assert t.snapshot() == {"source:app": 1}
    # A reload builds new pools but keeps the same Tables: the entry is still there.
    assert t.table("source:app").get("192.0.2.0") == "a1"


def test_tables_apply_a_changed_bound_on_hand_over() -> None:
    """A table handed to a new config with a smaller ``max_entries`` shrinks to it, keeping the
    most recently used entries and counting the rest as evicted; a larger bound keeps them all
    and lets the table grow; asking without a bound keeps the one it has.

    Old code returned the existing store unchanged: 10 entries and a bound of 10 stayed.
    """
    clock = FakeClock()
    t = Tables(factory=lambda n: MemoryStore(n, clock=clock))
    src = t.table("source:app", 10)
    for i in range(10):
        src.set(f"k{i}", f"s{i}", 300)
    src.touch("k0", 300)  # used again: now the most recent
    assert t.table("source:app", 4) is src
    assert len(src) == 4
    assert [k for k, _, _ in src.items()] == ["k7", "k8", "k9", "k0"]
    assert isinstance(src, MemoryStore) and src.max_entries == 4 and src.evicted == 6
    src.set("k10", "s10", 300)
    assert len(src) == 4  # the new bound holds for later entries too
    assert t.table("source:app", 8) is src and len(src) == 4 and src.max_entries == 8
    for i in range(11, 20):
        src.set(f"k{i}", "v", 300)
    assert len(src) == 8
    assert t.table("source:app") is src and src.max_entries == 8
    # Evicted: 6 by the shrink, 1 by k10, 5 of k11..k19 once 8 were held, 5 by resize(3).
    assert src.resize(8) == 0 and src.resize(3) == 5 and src.evicted == 6 + 1 + 5 + 5


def test_memory_store_resize_counts_what_it_drops() -> None:
    """``resize`` returns how many entries it dropped and adds them to ``evicted``.

    Old code had no way to change a store's bound.
    """
    s = MemoryStore(max_entries=5, clock=FakeClock())
    for k in "abcde":
        s.set(k, k, 60)
    assert s.resize(2) == 3 and s.evicted == 3
    assert [k for k, _, _ in s.items()] == ["d", "e"]
    assert s.resize(5) == 0 and len(s) == 2
