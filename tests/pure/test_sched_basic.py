"""The defining behaviour of wrr, lc, dh and sh (pure, no sockets)."""

from __future__ import annotations

import collections

import pytest

from l7switch.balance.schedulers import Scheduler, create
from l7switch.balance.schedulers.dh import TABLE_SIZE
from l7switch.balance.servers import Server


def servers(*weights: int) -> list[Server]:
    return [Server(f"s{i}", "127.0.0.1", 9000 + i, w, "p", i) for i, w in enumerate(weights)]


def chosen(sched: Scheduler, key: str | None) -> str:
    s = sched.pick(key)
    assert s is not None
    return s.name


def names(sched: Scheduler, n: int, key: str | None = None) -> list[str]:
    return [chosen(sched, key) for _ in range(n)]


# ---- wrr --------------------------------------------------------------------------------------

def test_wrr_interleaves_as_ip_vs_wrr() -> None:
    sched = create("wrr", servers(4, 3, 2))
    assert names(sched, 18) == ["s0", "s0", "s1", "s0", "s1", "s2", "s0", "s1", "s2"] * 2


def test_wrr_reduces_weights_by_their_gcd() -> None:
    # mw = 4 - (2 - 1) = 3, di = 2: one pass at cw 3, one at cw 1.
    assert names(create("wrr", servers(4, 2)), 6) == ["s0", "s0", "s1"] * 2


def test_wrr_shares_are_the_weights_exactly() -> None:
    sched = create("wrr", servers(4, 3, 2))
    counts = collections.Counter(names(sched, 9000))
    assert counts == {"s0": 4000, "s1": 3000, "s2": 2000}


def test_wrr_skips_a_down_server() -> None:
    ss = servers(4, 3, 2)
    sched = create("wrr", ss)
    ss[0].up = False  # even before the pool's hook has run
    assert "s0" not in names(sched, 50)
    sched.on_down(ss[0])
    assert collections.Counter(names(sched, 500)) == {"s1": 300, "s2": 200}
    ss[0].up = True
    sched.on_up(ss[0])
    # As ip_vs_wrr_dest_changed, the walk restarts at the head but keeps cw: the cycle resumes
    # mid-way, so shares are exact again from the next full cycle on.
    counts = collections.Counter(names(sched, 9000))
    assert all(abs(counts[n] - exact) <= 4 for n, exact in (("s0", 4000), ("s1", 3000), ("s2", 2000)))


def test_wrr_weight_change_takes_effect() -> None:
    ss = servers(1, 1)
    sched = create("wrr", ss)
    ss[1].weight = 3  # what ServerPool.set_weight does
    sched.on_weight(ss[1])
    assert collections.Counter(names(sched, 400)) == {"s0": 100, "s1": 300}
    ss[0].weight = 0
    sched.on_weight(ss[0])
    assert set(names(sched, 20)) == {"s1"}


def test_wrr_all_zero_weights_give_none() -> None:
    ss = servers(0, 0)
    sched = create("wrr", ss)
    assert sched.pick(None) is None
    ss[0].weight = 2
    sched.on_weight(ss[0])
    assert sched.pick(None) is ss[0]
    ss[0].up = False  # no hook: the walk must still end
    assert sched.pick(None) is None


# ---- lc ---------------------------------------------------------------------------------------

def test_lc_prefers_the_idle_server_and_ignores_weights() -> None:
    ss = servers(10, 1, 1)
    ss[0].inflight, ss[1].inflight, ss[2].inflight = 2, 1, 1
    sched = create("lc", ss)
    assert sched.pick(None) is ss[1]  # fewest in flight, first on ties; weight 10 counts for nothing
    ss[1].inflight = 5
    assert sched.pick(None) is ss[2]


def test_lc_skips_quiesced_servers() -> None:
    ss = servers(0, 1)
    ss[1].inflight = 9
    assert create("lc", ss).pick(None) is ss[1]


# ---- dh and sh --------------------------------------------------------------------------------

KEYS = [f"/obj/{i}.png" for i in range(20000)]


def placement(sched: Scheduler, keys: list[str]) -> dict[str, str]:
    return {k: chosen(sched, k) for k in keys}


def test_dh_same_key_same_server() -> None:
    sched = create("dh", servers(1, 1, 1, 1))
    assert len(set(names(sched, 1000, "/a.png"))) == 1


def test_dh_spreads_keys_evenly_and_ignores_weights() -> None:
    sched = create("dh", servers(1, 5, 1, 1))
    counts = collections.Counter(placement(sched, KEYS).values())
    share = len(KEYS) / 4
    assert all(0.75 * share <= counts[f"s{i}"] <= 1.25 * share for i in range(4)), counts


@pytest.mark.parametrize("name", ["dh", "sh"])
def test_a_down_servers_keys_spread_and_no_other_key_moves(name: str) -> None:
    ss = servers(1, 1, 1, 1)
    sched = create(name, ss, {"hash_key": "path"})
    before = placement(sched, KEYS)
    ss[2].up = False
    sched.on_down(ss[2])
    after = placement(sched, KEYS)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "s2"}
    assert moved  # s2 had keys
    landed = collections.Counter(after[k] for k in moved)
    assert len(landed) >= 2 and "s2" not in landed
    assert placement(sched, sorted(moved)) == {k: after[k] for k in sorted(moved)}  # still sticky
    ss[2].up = True
    sched.on_up(ss[2])
    assert placement(sched, KEYS) == before


def test_dh_without_fallback_gives_none_for_a_down_servers_keys() -> None:
    ss = servers(1, 1, 1)
    sched = create("dh", ss, {"fallback": False})
    before = placement(sched, KEYS[:2000])
    ss[0].up = False
    for k, name in before.items():
        got = sched.pick(k)
        assert (got is None) if name == "s0" else (got is not None and got.name == name)


@pytest.mark.parametrize("name", ["dh", "sh"])
def test_a_request_without_key_goes_to_the_least_loaded(name: str) -> None:
    ss = servers(1, 1, 1)
    ss[0].inflight, ss[1].inflight, ss[2].inflight = 4, 1, 3
    assert create(name, ss).pick(None) is ss[1]


def test_dh_keeps_buckets_for_quiesced_servers_and_reports_its_table() -> None:
    ss = servers(0, 1)
    sched = create("dh", ss)
    assert sched._table.count(ss[0]) == TABLE_SIZE // 2  # dealt, but unavailable
    assert sched.pick("/x") is ss[1]
    assert sched.snapshot()["table_size"] == TABLE_SIZE


def test_sh_keys_on_the_source_by_default() -> None:
    sched = create("sh", servers(1, 1))
    assert sched.opts["hash_key"] == "source"
    assert create("dh", servers(1)).opts["hash_key"] == "path"
    assert create("sh", servers(1), {"hash_key": "source", "trust_forwarded": True}).opts[
        "trust_forwarded"] is True


@pytest.mark.parametrize("weights", [(1, 3), (10, 30)])
def test_sh_deals_buckets_by_weight(weights: tuple[int, int]) -> None:
    ss = servers(*weights)
    sched = create("sh", ss)
    assert (sched._table.count(ss[0]), sched._table.count(ss[1])) == (64, 192)
    clients = [f"10.0.{i // 256}.{i % 256}" for i in range(20000)]
    counts = collections.Counter(placement(sched, clients).values())
    assert 2.5 <= counts["s1"] / counts["s0"] <= 3.5, counts


def test_sh_gives_no_buckets_to_weight_zero_and_rebuilds_on_weight_change() -> None:
    ss = servers(1, 0)
    sched = create("sh", ss)
    assert ss[1] not in sched._table
    ss[1].weight = 1
    sched.on_weight(ss[1])
    assert sched._table.count(ss[1]) == TABLE_SIZE // 2


# ---- options ----------------------------------------------------------------------------------

def test_options_are_validated() -> None:
    ss = servers(1, 1)
    with pytest.raises(ValueError, match="true or false"):
        create("dh", ss, {"fallback": "yes"})
    for name in ("wrr", "lc"):
        with pytest.raises(ValueError, match="unknown option"):
            create(name, ss, {"x": 1})
    with pytest.raises(ValueError, match="trust_forwarded"):
        create("dh", ss, {"trust_forwarded": True})
