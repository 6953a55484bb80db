"""The hashing schedulers chash (bounded-load consistent hashing) and maglev (pure, no sockets)."""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest

from l7switch.balance.schedulers import SCHEDULERS, Scheduler, create
from l7switch.balance.schedulers.chash import point_hash
from l7switch.balance.schedulers.maglev import default_table_size, is_prime, populate
from l7switch.balance.servers import Server


def servers(*weights: int) -> list[Server]:
    return [Server(f"s{i}", "127.0.0.1", 9000 + i, w, "p", i) for i, w in enumerate(weights)]


KEYS = [f"/img/{i}.png" for i in range(20_000)]


def mapping(sched: Scheduler, keys: list[str] = KEYS) -> dict[str, str]:
    out = {}
    for k in keys:
        s = sched.pick(k)
        assert s is not None
        out[k] = s.name
    return out


def cap(ss: list[Server], s: Server, factor: float) -> int:
    """HAProxy's bound, computed independently: ceil((total + 1) * factor * w / W)."""
    avail = [x for x in ss if x.available]
    total = sum(x.inflight for x in avail)
    weights = sum(x.weight for x in avail)
    return math.ceil(Fraction(total + 1) * Fraction(str(factor)) * s.weight / weights)


# ---- chash ----------------------------------------------------------------------------------------

def test_chash_is_registered_with_its_options() -> None:
    cls = SCHEDULERS["chash"]
    assert {"hash_key", "trust_forwarded", "balance_factor", "points"} <= set(cls.options)
    sched = create("chash", servers(1, 2))
    assert sched.opts["hash_key"] == "path" and sched.opts["balance_factor"] == 1.25
    snap = sched.snapshot()
    assert snap["name"] == "chash" and snap["balance_factor"] == 1.25
    assert snap["ring_points"] == 3 * 160


def test_chash_same_key_same_server() -> None:
    ss = servers(1, 1, 1, 1)
    sched = create("chash", ss)
    first = mapping(sched, KEYS[:500])
    assert mapping(sched, KEYS[:500]) == first
    assert len(set(first.values())) == 4
    # Another instance (another worker, another process) agrees: positions are name hashes.
    assert mapping(create("chash", servers(1, 1, 1, 1)), KEYS[:500]) == first


def test_chash_does_not_depend_on_pool_order() -> None:
    ss = servers(1, 2, 1, 3)
    assert mapping(create("chash", ss), KEYS[:2000]) == mapping(create("chash", ss[::-1]), KEYS[:2000])


def test_chash_point_hash_is_stable() -> None:
    # BLAKE2b, not the per-process salted hash(): pinned so a change of function is noticed.
    assert point_hash("s0-0") == int.from_bytes(
        __import__("hashlib").blake2b(b"s0-0", digest_size=4).digest(), "big")


def test_chash_never_exceeds_the_bound_under_a_hot_key() -> None:
    rng = random.Random(7)
    ss = servers(1, 1, 2, 1, 3)
    sched = create("chash", ss, {"balance_factor": 1.25})
    busy: list[Server] = []
    hot_servers: set[str] = set()
    max_inflight = 0
    for _ in range(5000):
        if busy and rng.random() < 0.4:
            s = busy.pop(rng.randrange(len(busy)))
            s.inflight -= 1
            continue
        key = "/hot.mp4" if rng.random() < 0.5 else f"/cold/{rng.randrange(10_000)}"
        s = sched.pick(key)
        assert s is not None and s.available
        assert s.inflight + 1 <= cap(ss, s, 1.25), (key, s, [x.inflight for x in ss])
        if key == "/hot.mp4":
            hot_servers.add(s.name)
        s.inflight += 1
        busy.append(s)
        max_inflight = max(max_inflight, sum(x.inflight for x in ss))
    assert max_inflight > 100  # the load did build up
    assert len(hot_servers) > 1  # so the bound did bind: the hot key spilled over


def test_chash_balance_factor_zero_is_plain_consistent_hashing() -> None:
    ss = servers(1, 1, 1)
    plain = create("chash", ss, {"balance_factor": 0})
    bounded = create("chash", ss)
    home = plain.pick("/hot")
    assert home is not None and bounded.pick("/hot") is home
    home.inflight = 100
    assert plain.pick("/hot") is home
    assert bounded.pick("/hot") is not home
    # ...but unavailable servers are still skipped.
    home.up = False
    assert plain.pick("/hot") not in (home, None)


def test_chash_adding_a_server_moves_about_one_in_n_keys_all_to_it() -> None:
    before = mapping(create("chash", servers(1, 1, 1, 1, 1)))
    after = mapping(create("chash", servers(1, 1, 1, 1, 1, 1)))  # new objects, same names + s5
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.10 <= len(moved) / len(KEYS) <= 0.24
    assert {after[k] for k in moved} == {"s5"}


def test_chash_removing_a_server_moves_only_its_keys() -> None:
    ss = servers(1, 1, 1, 1, 1)
    sched = create("chash", ss)
    before = mapping(sched)
    ss[2].up = False
    sched.on_down(ss[2])
    after = mapping(sched)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "s2"}
    assert "s2" not in after.values()
    ss[2].up = True
    sched.on_up(ss[2])
    assert mapping(sched) == before  # and back


def test_chash_weights_give_proportional_key_shares() -> None:
    sched = create("chash", servers(1, 3))
    counts = collections.Counter(mapping(sched).values())
    assert counts["s1"] / counts["s0"] == pytest.approx(3, rel=0.15)


def test_chash_weight_change_rebuilds_the_ring() -> None:
    ss = servers(1, 1)
    sched = create("chash", ss, {"points": 10})
    assert sched.snapshot()["ring_points"] == 20
    ss[1].weight = 3
    sched.on_weight(ss[1])
    assert sched.snapshot()["ring_points"] == 40
    ss[0].weight = 0
    sched.on_weight(ss[0])
    assert sched.snapshot()["ring_points"] == 30
    assert set(mapping(sched, KEYS[:200]).values()) == {"s1"}


def test_chash_without_a_key_balances_by_load() -> None:
    ss = servers(1, 1, 1)
    ss[0].inflight, ss[1].inflight, ss[2].inflight = 4, 1, 3
    assert create("chash", ss).pick(None) is ss[1]


@pytest.mark.parametrize("options,message", [
    ({"balance_factor": 0.5}, r"expected 0 \(no bound\) or a factor >= 1.0 .*found 0.5"),
    ({"balance_factor": 125}, "use 1.25 for hash-balance-factor 125"),
    ({"balance_factor": "1.25"}, "expected a number"),
    ({"balance_factor": True}, "expected a number"),
    ({"points": 0}, "expected an integer from 1 to 10000"),
    ({"points": 20000}, "expected an integer from 1 to 10000"),
])
def test_chash_option_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create("chash", servers(1), options)


def test_chash_accepts_the_edges() -> None:
    assert create("chash", servers(1), {"balance_factor": 1}).opts["balance_factor"] == 1.0
    assert create("chash", servers(1), {"balance_factor": 0}).opts["balance_factor"] == 0.0


# ---- maglev ---------------------------------------------------------------------------------------

def slot_counts(sched: Scheduler) -> collections.Counter[str]:
    return collections.Counter(s.name for s in sched._slots)  # type: ignore[attr-defined]


def owners(sched: Scheduler) -> list[str]:
    return [s.name for s in sched._slots]  # type: ignore[attr-defined]


def test_maglev_default_table_sizes() -> None:
    assert default_table_size(1) == 4093  # IPVS's default
    assert default_table_size(40) == 4093
    assert default_table_size(41) == 8191
    assert default_table_size(1000) == 131071
    assert default_table_size(2000) == 200003 and is_prime(200003)
    sched = create("maglev", servers(1, 1, 1))
    assert sched.snapshot()["table_size"] == 4093 and len(sched._slots) == 4093  # type: ignore[attr-defined]


@pytest.mark.parametrize("n", [5, 10])
def test_maglev_balances_within_one_percent(n: int) -> None:
    sched = create("maglev", servers(*[1] * n))
    m = sched.snapshot()["table_size"]
    assert m > 100 * n
    counts = slot_counts(sched)
    assert len(counts) == n and sum(counts.values()) == m
    for c in counts.values():
        assert abs(c - m / n) <= 0.01 * m / n


def test_maglev_removing_one_of_ten_disrupts_about_one_in_n() -> None:
    ss = servers(*[1] * 10)
    sched = create("maglev", ss)
    before = owners(sched)
    ss[3].up = False
    sched.on_down(ss[3])
    after = owners(sched)
    changed = sum(a != b for a, b in zip(before, after))
    assert changed / len(before) <= 1.5 / 10
    assert "s3" not in after
    assert changed >= before.count("s3")  # all of s3's slots were reassigned


def test_maglev_adding_one_disrupts_about_one_in_n() -> None:
    before = owners(create("maglev", servers(*[1] * 10), {"table_size": 4093}))
    after = owners(create("maglev", servers(*[1] * 11), {"table_size": 4093}))
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) / len(before) <= 1.5 / 11
    to_new = sum(b == "s10" for _, b in changed)
    assert to_new == after.count("s10") and to_new >= 0.9 * len(changed)


def test_maglev_weights_give_proportional_slot_shares() -> None:
    counts = slot_counts(create("maglev", servers(1, 2)))
    assert counts["s1"] / counts["s0"] == pytest.approx(2, rel=0.01)
    counts = slot_counts(create("maglev", servers(2, 4, 6)))  # gcd 2: turns 1, 2, 3
    assert counts["s1"] / counts["s0"] == pytest.approx(2, rel=0.01)
    assert counts["s2"] / counts["s0"] == pytest.approx(3, rel=0.01)


def test_maglev_same_key_same_server_and_order_independent() -> None:
    ss = servers(1, 1, 1, 1)
    a = mapping(create("maglev", ss), KEYS[:2000])
    assert mapping(create("maglev", ss[::-1]), KEYS[:2000]) == a
    assert len(set(a.values())) == 4


def test_maglev_populate_fills_every_slot_deterministically() -> None:
    table = populate([("a", 1), ("b", 1), ("c", 2)], 251)
    assert len(table) == 251 and set(table) == {0, 1, 2}
    assert populate([("a", 1), ("b", 1), ("c", 2)], 251) == table
    assert populate([], 251) == []


def test_maglev_without_a_key_balances_by_load_and_none_when_empty() -> None:
    ss = servers(1, 1)
    ss[0].inflight = 2
    sched = create("maglev", ss)
    assert sched.pick(None) is ss[1]
    for s in ss:
        s.up = False
        sched.on_down(s)
    assert sched._slots == []  # type: ignore[attr-defined]
    assert sched.pick("/x") is None and sched.pick(None) is None
    ss[0].up = True
    sched.on_up(ss[0])
    assert sched.pick("/x") is ss[0]


@pytest.mark.parametrize("size,message", [
    (1000, "table_size 1000 is not a prime .* the smallest valid size for 5 servers is 503"),
    (499, "table_size 499 is too small for 5 servers: it must be a prime > 100 x 5 = 500 .* "
          "the smallest valid size is 503"),
    (0, "expected an integer from 2 to"),
    ("big", "expected an integer"),
])
def test_maglev_table_size_validation(size: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create("maglev", servers(*[1] * 5), {"table_size": size})


def test_maglev_check_names_the_smallest_valid_prime() -> None:
    cls = SCHEDULERS["maglev"]
    opts = {name: opt.default for name, opt in cls.options.items()}
    assert cls.check(opts, 50) == []  # default size
    assert cls.check(opts | {"table_size": 5003}, 50) == []
    (problem,) = cls.check(opts | {"table_size": 4093}, 50)
    assert "too small for 50 servers" in problem and "5003" in problem
    (problem,) = cls.check(opts | {"table_size": 6000}, 50)
    assert "not a prime" in problem and "5003" in problem
    assert create("maglev", servers(*[1] * 5), {"table_size": 503}).snapshot()["table_size"] == 503


def test_maglev_deferred_rebuild_old_table_skips_the_down_server() -> None:
    ss = servers(1, 1, 1, 1)
    sched = create("maglev", ss)
    pending: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []
    sched.defer = lambda build, install: pending.append((build, install))
    before = mapping(sched, KEYS[:3000])
    ss[1].up = False
    sched.on_down(ss[1])
    assert len(pending) == 1
    # The old table still answers; s1's keys are walked on to the next available server.
    during = mapping(sched, KEYS[:3000])
    assert "s1" not in during.values()
    assert all(during[k] == before[k] for k in before if before[k] != "s1")
    build, install = pending.pop()
    install(build())
    assert "s1" not in owners(sched)
    assert "s1" not in mapping(sched, KEYS[:3000]).values()


def test_maglev_a_later_rebuild_wins() -> None:
    ss = servers(1, 1, 1, 1)
    sched = create("maglev", ss)
    pending: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []
    sched.defer = lambda build, install: pending.append((build, install))
    ss[1].up = False
    sched.on_down(ss[1])  # generation 1: without s1
    ss[2].up = False
    sched.on_down(ss[2])  # generation 2: without s1 and s2
    (b1, i1), (b2, i2) = pending
    i2(b2())
    assert set(owners(sched)) == {"s0", "s3"}
    i1(b1())  # finishes late: ignored
    assert set(owners(sched)) == {"s0", "s3"}


def test_maglev_fallback_when_every_server_in_the_old_table_is_gone() -> None:
    ss = servers(1, 1, 1)
    ss[2].up = False
    sched = create("maglev", ss)  # table of s0, s1
    sched.defer = lambda build, install: None  # rebuilds never land
    ss[0].up = ss[1].up = False
    ss[2].up = True
    assert sched.pick("/x") is ss[2]  # by load, not by walking a table of the dead
    ss[2].up = False
    assert sched.pick("/x") is None


def test_maglev_weight_change_and_quiesce_rebuild() -> None:
    ss = servers(1, 1)
    sched = create("maglev", ss)
    ss[0].weight = 3
    sched.on_weight(ss[0])
    counts = slot_counts(sched)
    assert counts["s0"] / counts["s1"] == pytest.approx(3, rel=0.01)
    ss[1].weight = 0
    sched.on_weight(ss[1])
    assert set(owners(sched)) == {"s0"}
