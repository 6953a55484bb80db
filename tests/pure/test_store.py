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
