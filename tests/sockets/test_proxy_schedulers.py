"""Every scheduler from a rule file, end to end: real origins, real sockets, the X-Server header
telling which origin answered."""

from __future__ import annotations

import collections

import pytest
from kit import Conn, get, pool_config

from l7switch.balance.schedulers import SCHEDULERS

KEYED = sorted(name for name, cls in SCHEDULERS.items() if "hash_key" in cls.options)


@pytest.fixture
def three(origin_factory):
    return [origin_factory(f"o{i}") for i in range(3)]


def served_by(port: int, paths: list[str], extra: str = "") -> list[str]:
    out = []
    with Conn(port) as c:
        for p in paths:
            c.send(get(p, extra=extra))
            r = c.response()
            assert r.status == 200, r
            out.append(r.header("x-server"))
    return out


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_serves_from_a_rule_file(name, three, switch_factory, lt):
    sw = switch_factory(pool_config([o.port for o in three], name))
    got = served_by(sw.port, [f"/echo/{i}" for i in range(30)])
    assert set(got) <= {"o0", "o1", "o2"} and len(got) == 30
    snap = lt.call(sw.snapshot)
    pool = next(p for p in snap["pools"].values()) if isinstance(snap["pools"], dict) else snap["pools"][0]
    assert pool["scheduler"]["name"] == name
    assert sum(s["total"] for s in pool["servers"]) == 30
    assert all(s["inflight"] == 0 for s in pool["servers"])


@pytest.mark.parametrize("name", KEYED)
def test_keyed_schedulers_send_the_same_path_to_the_same_server(name, three, switch_factory):
    sw = switch_factory(pool_config([o.port for o in three], name))
    paths = [f"/echo/obj{i}" for i in range(12)]
    first = served_by(sw.port, paths)
    again = served_by(sw.port, paths * 2)
    assert again == first * 2
    if name != "sh":  # sh keys on the client address: one client, one server
        assert len(set(first)) >= 2, "twelve paths all hashed to one server"


def test_sh_keys_on_the_client_or_the_trusted_forwarded_address(three, switch_factory):
    ports = [o.port for o in three]
    sw = switch_factory(pool_config(ports, "sh"))
    assert len(set(served_by(sw.port, [f"/echo/{i}" for i in range(10)]))) == 1
    sw = switch_factory(pool_config(ports, "sh", "{trust_forwarded: true}"))
    seen = collections.defaultdict(set)
    for i in range(16):
        xff = f"X-Forwarded-For: 203.0.113.9, 10.1.{i}.1\r\n"
        for server in served_by(sw.port, ["/echo/a", "/echo/b"], extra=xff):
            seen[i].add(server)
    assert all(len(s) == 1 for s in seen.values())  # one client address, one server
    assert len(set().union(*seen.values())) >= 2  # different addresses spread


def test_hash_key_header_and_missing_header_falls_back(three, switch_factory):
    sw = switch_factory(pool_config([o.port for o in three], "chash", "{hash_key: 'header:X-User'}"))
    for user in ("alice", "bob", "carol"):
        got = served_by(sw.port, [f"/echo/{i}" for i in range(6)], extra=f"X-User: {user}\r\n")
        assert len(set(got)) == 1
    # Without the header the request is still served (balanced by load), never refused.
    assert len(served_by(sw.port, ["/echo/x"] * 4)) == 4


def test_wrr_interleaves_by_weight_end_to_end(three, switch_factory):
    sw = switch_factory(pool_config([o.port for o in three], "wrr", weights=[4, 3, 2]))
    got = served_by(sw.port, ["/echo"] * 18)
    assert got[:9] == ["o0", "o0", "o1", "o0", "o1", "o2", "o0", "o1", "o2"]
    assert collections.Counter(got) == {"o0": 8, "o1": 6, "o2": 4}


@pytest.mark.parametrize("name", ["dh", "chash", "maglev", "lblc", "lard"])
def test_a_dead_servers_keys_move_and_the_rest_stay(name, three, switch_factory, lt):
    sw = switch_factory(pool_config([o.port for o in three], name))
    paths = [f"/echo/k{i}" for i in range(24)]
    before = dict(zip(paths, served_by(sw.port, paths)))
    victim = before[paths[0]]
    lt.run(three[int(victim[1:])].stop())
    after = dict(zip(paths, served_by(sw.port, paths)))  # refused connects are redispatched: all 200
    for p in paths:
        if before[p] == victim:
            assert after[p] != victim
        else:
            assert after[p] == before[p], p


