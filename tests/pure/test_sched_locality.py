"""The locality schedulers lblc, lblcr and lard (pure, no sockets, a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from l7switch.balance.schedulers import Scheduler, create
from l7switch.balance.schedulers._locality import KeyTable, most_loaded
from l7switch.balance.servers import Server


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def servers(*weights: int) -> list[Server]:
    return [Server(f"s{i}", "127.0.0.1", 9000 + i, w, "p", i) for i, w in enumerate(weights)]


def make(name: str, ss: list[Server], clock: FakeClock | None = None, **options: Any) -> Scheduler:
    return create(name, ss, options, clock=clock or FakeClock())


def load(ss: list[Server], *inflight: int) -> None:
    for s, n in zip(ss, inflight):
        s.inflight = n


# ---- lblc ---------------------------------------------------------------------------------------

def test_lblc_key_sticks_to_its_first_server_while_load_moves_around() -> None:
    ss = servers(1, 1, 1)
    sched = make("lblc", ss, capacity=10)
    load(ss, 0, 3, 5)
    assert sched.pick("/a") is ss[0]
    for loads in [(9, 0, 0), (10, 2, 1), (4, 4, 4), (10, 10, 0)]:
        load(ss, *loads)
        assert sched.pick("/a") is ss[0]  # at most capacity in flight: never overloaded
    load(ss, 0, 1, 1)
    assert sched.pick("/b") is ss[0]  # a new key goes to the least loaded
    load(ss, 3, 0, 5)
    assert sched.pick("/c") is ss[1]
    assert sched.pick("/b") is ss[0] and sched.pick("/c") is ss[1]


def test_lblc_moves_only_when_overloaded_and_another_server_is_under_half_load() -> None:
    ss = servers(1, 1, 1)
    sched = make("lblc", ss, capacity=10)
    assert sched.pick("/a") is ss[0]
    load(ss, 11, 5, 5)  # over capacity, but nobody under half (5 * 2 < 10 is false)
    assert sched.pick("/a") is ss[0]
    load(ss, 10, 4, 6)  # a server under half, but s0 not over capacity
    assert sched.pick("/a") is ss[0]
    load(ss, 11, 6, 4)  # both: rescheduled to the least loaded
    assert sched.pick("/a") is ss[2]
    load(ss, 0, 0, 9)  # the entry was updated: the key stays on s2 now
    assert sched.pick("/a") is ss[2]


def test_lblc_capacity_one_is_ipvs_exactly() -> None:
    ss = servers(1, 1)
    sched = make("lblc", ss, capacity=1)
    assert sched.pick("/a") is ss[0]
    load(ss, 1, 0)
    assert sched.pick("/a") is ss[0]  # 1 > 1 is false
    load(ss, 2, 0)
    assert sched.pick("/a") is ss[1]  # 2 > 1 and 0 * 2 < 1


@pytest.mark.parametrize("how", ["down", "quiesced"])
def test_lblc_reschedules_a_down_or_quiesced_server(how: str) -> None:
    ss = servers(1, 1, 1)
    sched = make("lblc", ss)
    assert sched.pick("/a") is ss[0]
    if how == "down":
        ss[0].up = False
    else:
        ss[0].weight = 0
    load(ss, 0, 2, 1)
    assert sched.pick("/a") is ss[2]
    ss[0].up, ss[0].weight = True, 1
    load(ss, 0, 2, 1)
    assert sched.pick("/a") is ss[2]  # the key moved for good


def test_lblc_weight_scales_capacity() -> None:
    ss = servers(2, 1)
    sched = make("lblc", ss, capacity=10)
    assert sched.pick("/a") is ss[0]
    load(ss, 20, 0)  # weight 2: up to 20 is not overload
    assert sched.pick("/a") is ss[0]
    load(ss, 21, 0)
    assert sched.pick("/a") is ss[1]
    # The half-load test scales too: s0 (weight 2) at 9 is under half of 20.
    assert sched.pick("/b") is ss[1]
    load(ss, 9, 11)
    assert sched.pick("/b") is ss[0]


def test_lblc_without_a_key_balances_by_load_and_remembers_nothing() -> None:
    ss = servers(1, 1)
    sched = make("lblc", ss)
    load(ss, 3, 1)
    assert sched.pick(None) is ss[1]
    assert sched.snapshot()["entries"] == 0


def test_lblc_max_entries_evicts_the_least_recently_used_key() -> None:
    ss = servers(1, 1, 1)
    sched = make("lblc", ss, max_entries=2)
    assert sched.pick("/a") is ss[0]
    load(ss, 1, 0, 0)
    assert sched.pick("/b") is ss[1]
    load(ss, 1, 1, 0)
    assert sched.pick("/a") is ss[0]  # touch /a: /b is now the least recently used
    assert sched.pick("/c") is ss[2]  # evicts /b
    assert sched.snapshot()["entries"] == 2
    load(ss, 1, 2, 1)
    assert sched.pick("/a") is ss[0]  # remembered
    assert sched.pick("/b") is ss[0]  # forgotten: least loaded again (not s1)
    load(ss, 0, 2, 1)
    assert sched.pick("/c") is ss[0]  # /c was evicted by /b in turn (else it would stay on s2)


def test_lblc_entries_expire_when_idle_longer_than_expiration() -> None:
    ss = servers(1, 1)
    clock = FakeClock()
    sched = make("lblc", ss, clock, expiration="10s")
    assert sched.pick("/a") is ss[0]
    load(ss, 1, 0)
    clock.now += 10
    assert sched.pick("/a") is ss[0]  # idle exactly 10 s: still there, and now refreshed
    clock.now += 9
    assert sched.pick("/a") is ss[0]
    assert sched.snapshot()["entries"] == 1
    clock.now += 10.5
    assert sched.snapshot()["entries"] == 0
    assert sched.pick("/a") is ss[1]  # expired: scheduled afresh


def test_key_table_sweeps_expired_entries_on_insert() -> None:
    table = KeyTable(max_entries=100, expiration=5)
    for i in range(20):
        table.add(f"k{i}", i, now=0)
    table.add("fresh", 0, now=10)
    assert len(table) == 21 - 8  # a bounded sweep per insert
    table.add("fresh2", 0, now=10)
    table.add("fresh3", 0, now=10)
    assert len(table) == 3
    assert table.get("k19", 10) is None and table.get("fresh", 10) == [0, 10]


# ---- lblcr ----------------------------------------------------------------------------------------

def test_lblcr_grows_the_set_under_overload_and_uses_its_least_loaded_member() -> None:
    ss = servers(1, 1, 1)
    clock = FakeClock()
    sched = make("lblcr", ss, clock, capacity=10)
    assert sched.pick("/a") is ss[0]
    load(ss, 11, 5, 3)
    assert sched.pick("/a") is ss[2]  # overloaded, s2 under half: s2 joins the set
    assert sched.snapshot()["mean_set_size"] == 2
    load(ss, 4, 0, 6)  # s1 is idle, but not a member: the least loaded member is s0
    assert sched.pick("/a") is ss[0]
    load(ss, 8, 0, 6)
    assert sched.pick("/a") is ss[2]
    load(ss, 11, 0, 11)  # both members overloaded: s1 joins
    assert sched.pick("/a") is ss[1]
    assert sched.snapshot()["mean_set_size"] == 3


def test_lblcr_drops_the_most_loaded_member_after_set_expiry_not_before() -> None:
    ss = servers(1, 1, 1)
    clock = FakeClock()
    sched = make("lblcr", ss, clock, capacity=10, set_expiry=60)
    assert sched.pick("/a") is ss[0]
    load(ss, 11, 0, 5)
    assert sched.pick("/a") is ss[1]  # set {s0, s1}, lastmod = t0
    load(ss, 7, 3, 0)
    clock.now += 60
    assert sched.pick("/a") is ss[1]
    assert sched.snapshot()["mean_set_size"] == 2  # 60 s is not more than set_expiry
    clock.now += 1
    assert sched.pick("/a") is ss[1]  # drops s0, the most loaded
    assert sched.snapshot()["mean_set_size"] == 1
    load(ss, 0, 3, 0)
    assert sched.pick("/a") is ss[1]  # s0 is no longer a member
    clock.now += 1000
    assert sched.pick("/a") is ss[1]  # a single member is never dropped


def test_lblcr_shrink_is_weighted_and_never_returns_the_dropped_server() -> None:
    ss = servers(4, 1)
    clock = FakeClock()
    sched = make("lblcr", ss, clock, capacity=2, set_expiry=10)
    load(ss, 9, 0)
    assert sched.pick("/a") is ss[1]  # new set {s1}
    load(ss, 0, 3)
    assert sched.pick("/a") is ss[0]  # s1 overloaded (3 > 2), s0 idle: {s1, s0}
    clock.now += 11
    load(ss, 6, 2)  # s0 6/4 = 1.5 < s1 2/1: the weighted most loaded is s1
    assert sched.pick("/a") is ss[0]
    assert sched.snapshot()["mean_set_size"] == 1
    assert sched.pick("/a") is ss[0]
    # Equal loads: the member to drop would also be the least loaded one; the older member stays.
    load(ss, 0, 5)
    assert sched.pick("/b") is ss[0]
    load(ss, 9, 0)
    assert sched.pick("/b") is ss[1]  # {s0, s1}
    clock.now += 11
    load(ss, 4, 1)
    assert sched.pick("/b") is ss[0]  # s1 (newest of two equals) is dropped, s0 returned
    load(ss, 4, 0)
    assert sched.pick("/b") is ss[0]


def test_lblcr_changes_reset_lastmod() -> None:
    ss = servers(1, 1, 1)
    clock = FakeClock()
    sched = make("lblcr", ss, clock, capacity=10, set_expiry=60)
    assert sched.pick("/a") is ss[0]  # created at t0
    clock.now += 50
    load(ss, 11, 0, 5)
    assert sched.pick("/a") is ss[1]  # grows at t0+50: lastmod = t0+50
    clock.now += 30  # 80 s after creation, 30 after the change
    load(ss, 5, 2, 0)
    assert sched.pick("/a") is ss[1]
    assert sched.snapshot()["mean_set_size"] == 2
    clock.now += 31  # 61 s after the change
    assert sched.pick("/a") is ss[1]
    assert sched.snapshot()["mean_set_size"] == 1


def test_lblcr_hit_does_not_reset_lastmod() -> None:
    ss = servers(1, 1)
    clock = FakeClock()
    sched = make("lblcr", ss, clock, capacity=10, set_expiry=60)
    sched.pick("/a")
    load(ss, 11, 0)
    assert sched.pick("/a") is ss[1]
    for _ in range(6):
        clock.now += 10
        load(ss, 5, 1)
        assert sched.pick("/a") is ss[1]  # unchanged set, lookups only
    clock.now += 1
    assert sched.pick("/a") is ss[1]
    assert sched.snapshot()["mean_set_size"] == 1


def test_most_loaded_is_weighted_skips_weight_zero_and_prefers_the_newest_on_ties() -> None:
    ss = servers(2, 1, 0, 1)
    load(ss, 4, 2, 50, 1)
    assert most_loaded(ss) is ss[1]  # 4/2 = 2/1; the later of the two
    assert most_loaded([ss[1], ss[0]]) is ss[0]
    assert most_loaded([ss[2]]) is None
    assert most_loaded([ss[3], ss[2]]) is ss[3]


# ---- lard ---------------------------------------------------------------------------------------

def test_lard_moves_when_over_t_high_and_some_node_is_under_t_low() -> None:
    ss = servers(1, 1, 1)
    sched = make("lard", ss, t_low=2, t_high=5)
    assert sched.pick("/a") is ss[0]
    load(ss, 6, 1, 3)
    assert sched.pick("/a") is ss[1]
    load(ss, 0, 5, 0)
    assert sched.pick("/a") is ss[1]  # the entry moved


def test_lard_stays_over_t_high_when_no_node_is_under_t_low() -> None:
    ss = servers(1, 1, 1)
    sched = make("lard", ss, t_low=2, t_high=5)
    assert sched.pick("/a") is ss[0]
    load(ss, 9, 2, 3)
    assert sched.pick("/a") is ss[0]
    load(ss, 5, 0, 0)  # a node under t_low, but s0 is not over t_high
    assert sched.pick("/a") is ss[0]


def test_lard_moves_at_twice_t_high_even_with_no_node_under_t_low() -> None:
    ss = servers(1, 1, 1)
    sched = make("lard", ss, t_low=2, t_high=5)
    assert sched.pick("/a") is ss[0]
    load(ss, 10, 3, 4)
    assert sched.pick("/a") is ss[1]


def test_lard_thresholds_scale_with_weight() -> None:
    ss = servers(2, 1)
    sched = make("lard", ss, t_low=2, t_high=5)
    assert sched.pick("/a") is ss[0]
    load(ss, 19, 3)  # below 2 * t_high * 2 = 20, and s1 is not under t_low
    assert sched.pick("/a") is ss[0]
    load(ss, 20, 3)
    assert sched.pick("/a") is ss[1]
    load(ss, 3, 6)  # s0 (weight 2) at 3 is under t_low * 2 = 4, s1 over t_high
    assert sched.pick("/a") is ss[0]


def test_lard_reschedules_an_unavailable_server() -> None:
    ss = servers(1, 1)
    sched = make("lard", ss)
    assert sched.pick("/a") is ss[0]
    ss[0].up = False
    assert sched.pick("/a") is ss[1]
    ss[0].up = True
    assert sched.pick("/a") is ss[1]


def test_lard_replicate_grows_a_set_and_shrinks_it_after_k() -> None:
    ss = servers(1, 1, 1)
    clock = FakeClock()
    sched = make("lard", ss, clock, t_low=2, t_high=5, replicate=True, set_expiry="20s")
    assert sched.pick("/a") is ss[0]
    load(ss, 6, 3, 1)
    assert sched.pick("/a") is ss[2]  # s0 over t_high, s2 under t_low: s2 joins
    load(ss, 4, 0, 5)
    assert sched.pick("/a") is ss[0]  # least loaded member; s1 is not one
    assert sched.snapshot() | {"options": None} == {
        "name": "lard", "options": None, "entries": 1, "placement": "load", "keys": {"s0": 1, "s2": 1}, "mean_set_size": 2.0}
    load(ss, 10, 6, 10)  # the least loaded member at 2 * t_high: the least loaded server joins
    assert sched.pick("/a") is ss[1]
    assert sched.snapshot()["mean_set_size"] == 3
    clock.now += 20
    load(ss, 1, 2, 3)
    assert sched.pick("/a") is ss[0]
    assert sched.snapshot()["mean_set_size"] == 3
    clock.now += 0.5
    assert sched.pick("/a") is ss[0]  # K passed: s2, the most loaded, is dropped
    assert sched.snapshot()["mean_set_size"] == 2
    clock.now += 21
    assert sched.pick("/a") is ss[0]  # then s1
    assert sched.snapshot()["mean_set_size"] == 1


def test_lard_set_expiry_is_ignored_without_replicate() -> None:
    ss = servers(1, 1)
    sched = make("lard", ss, set_expiry="1s")
    assert sched.pick("/a") is ss[0]
    assert "mean_set_size" not in sched.snapshot()


@pytest.mark.parametrize("t_low, t_high", [(65, 65), (70, 65)])
def test_lard_rejects_t_low_not_below_t_high(t_low: int, t_high: int) -> None:
    with pytest.raises(ValueError, match=rf"^t_low \({t_low}\) must be below t_high \({t_high}\)$"):
        make("lard", servers(1), t_low=t_low, t_high=t_high)
    with pytest.raises(ValueError, match=r"t_low \(70\) must be below t_high \(65\)"):
        make("lard", servers(1), t_low=70)


@pytest.mark.parametrize("name, options, message", [
    ("lblc", {"capacity": 0}, "expected an integer >= 1, found 0"),
    ("lblcr", {"set_expiry": "0s"}, "expected a duration greater than 0"),
    ("lard", {"replicate": "yes"}, "expected true or false"),
    ("lblc", {"max_entries": 0}, "expected an integer >= 1, found 0"),
    ("lblcr", {"expiration": "soon"}, "expected a duration"),
    ("lard", {"placement": "random"}, "expected one of auto, load, hash, found 'random'"),
    ("lard", {"hash_key": "path", "trust_forwarded": True}, "trust_forwarded only applies"),
])
def test_bad_options_are_rejected(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(name, servers(1), **options)


def test_defaults() -> None:
    assert make("lblc", servers(1)).opts == {
        "hash_key": "path", "trust_forwarded": False, "capacity": 65, "max_entries": 16384,
        "expiration": 86400.0, "placement": "auto"}
    assert make("lblcr", servers(1)).opts["set_expiry"] == 60.0
    lard = make("lard", servers(1)).opts
    assert (lard["t_low"], lard["t_high"], lard["replicate"], lard["set_expiry"]) == (25, 65, False, 20.0)


# ---- all three --------------------------------------------------------------------------------

LOCALITY = [("lblc", {}), ("lblcr", {}), ("lard", {}), ("lard", {"replicate": True})]


@pytest.mark.parametrize("name, options", LOCALITY)
def test_without_load_every_key_always_maps_to_one_server(name: str, options: dict[str, Any]) -> None:
    ss = servers(1, 1, 1, 1)
    clock = FakeClock()
    sched = make(name, ss, clock, **options)
    seen: dict[str, set[str]] = {}
    for rnd in range(10):
        for k in range(200):
            key = f"/obj/{k}"
            s = sched.pick(key)
            assert s is not None
            seen.setdefault(key, set()).add(s.name)
            if rnd == 0:
                s.inflight += 1  # spread the keys while they are first placed...
        if rnd == 0:
            load(ss, 0, 0, 0, 0)  # ...then no load at all
        clock.now += 1
    assert all(len(names) == 1 for names in seen.values())
    assert {next(iter(n)) for n in seen.values()} == {"s0", "s1", "s2", "s3"}
    assert sched.snapshot()["entries"] == 200


@pytest.mark.parametrize("name, options", LOCALITY)
def test_nothing_available_gives_none_and_the_key_comes_back(name: str, options: dict[str, Any]) -> None:
    ss = servers(1, 1)
    sched = make(name, ss, **options)
    assert sched.pick("/a") is ss[0]
    for s in ss:
        s.up = False
    assert sched.pick("/a") is None
    ss[0].up = True
    assert sched.pick("/a") is ss[0]


def test_new_keys_spread_over_an_idle_pool() -> None:
    """Ties in load are broken by the key's hash: on an idle pool keys do not pile onto s0."""
    for name in ("lblc", "lblcr", "lard"):
        ss = servers(1, 1, 1, 1)
        sched = make(name, ss)
        owners = {sched.pick(f"/k{i}") for i in range(40)}
        assert owners == set(ss), name



# ---- placement: workers that agree without sharing a table -----------------------------------

def _worker(name: str, placement: str, peers: int, **options: Any) -> tuple[Scheduler, list[Server]]:
    """One worker's view: its own Server objects (own in-flight counts) and its own table."""
    ss = servers(1, 1, 1, 1)
    sched = make(name, ss, placement=placement, **options)
    sched.shared(peers)
    return sched, ss


@pytest.mark.parametrize("name", ["lblc", "lblcr", "lard"])
def test_hash_placement_gives_a_key_the_same_server_in_every_worker_whatever_their_loads(name: str) -> None:
    """With ``placement: auto`` and 2 workers, each worker's loads differ (they serve different
    connections) but a new key still goes to the same server in both: the rendezvous winner.
    With ``load`` (the single-process default) they disagree on most keys."""
    def owners(placement: str, peers: int) -> tuple[list[str], list[str]]:
        (a, sa), (b, sb) = _worker(name, placement, peers), _worker(name, placement, peers)
        load(sa, 0, 3, 6, 9)
        load(sb, 9, 6, 3, 0)
        keys = [f"/obj/{i}" for i in range(400)]
        return [a.pick(k).name for k in keys], [b.pick(k).name for k in keys]  # type: ignore[union-attr]
    first, second = owners("auto", 2)
    assert first == second
    assert {n: first.count(n) for n in set(first)}.keys() == {"s0", "s1", "s2", "s3"}
    assert min(first.count(n) for n in set(first)) > 60  # ~100 each
    first, second = owners("auto", 1)  # alone: IPVS's least loaded, so they disagree
    assert sum(x == y for x, y in zip(first, second)) < 50
    first, second = owners("load", 2)
    assert sum(x == y for x, y in zip(first, second)) < 50


def test_hash_placement_follows_weights_and_moves_only_a_leaving_servers_keys() -> None:
    ss = [Server(f"s{i}", "127.0.0.1", 9000 + i, w, "p", i) for i, w in enumerate([1, 1, 2])]
    sched = make("lblc", ss, placement="hash")
    keys = [f"/k{i}" for i in range(3000)]
    before = {k: sched.pick(k) for k in keys}
    share = [sum(v is s for v in before.values()) / len(keys) for s in ss]
    assert share[0] == pytest.approx(0.25, abs=0.04) and share[2] == pytest.approx(0.5, abs=0.04)
    ss[2].up = False
    fresh = make("lblc", ss, placement="hash")  # another worker that never saw s2 up
    for k in keys:
        after = sched.pick(k)
        assert after is fresh.pick(k)  # both agree where s2's keys went
        if before[k] is not ss[2]:
            assert after is before[k]  # and no other key moved


def test_hash_placement_gives_way_to_the_least_loaded_when_the_home_is_overloaded() -> None:
    sched, ss = _worker("lblc", "hash", 1, capacity=10)
    home = sched.pick("/hot")
    assert home is not None
    for s in ss:
        s.inflight = 0 if s is home else 4
    home.inflight = 11  # over capacity, and others are under half: overloaded
    assert sched.pick("/hot") is not home
    sched2, ss2 = _worker("lblc", "hash", 1, capacity=10)
    for s in ss2:
        s.inflight = 11 if s.name == home.name else 4
    assert sched2.pick("/hot").name != home.name  # type: ignore[union-attr]  # a new key too


@pytest.mark.parametrize("name, options", [("lblc", {"capacity": 10}), ("lblcr", {"capacity": 10}),
                                           ("lard", {"t_low": 5, "t_high": 10})])
def test_with_workers_each_worker_judges_overload_on_its_share_of_the_load(name: str, options: dict[str, Any]) -> None:
    """Each of 2 workers sees about half of a server's requests in flight: 6 in one worker is
    ~12 at the server, over a capacity (or t_high) of 10, so the key moves; alone, 6 is not."""
    for peers, moves in ((1, False), (2, True)):
        sched, ss = _worker(name, "hash", peers, **options)
        home = sched.pick("/a")
        assert home is not None
        for s in ss:
            s.inflight = 6 if s is home else 0
        assert (sched.pick("/a") is not home) is moves, peers
