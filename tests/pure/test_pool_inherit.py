"""ServerPool.inherit (a reload): what a new pool takes over from the one it replaces — health,
admin state unless the file changed that server, counters, and the locality schedulers' key
tables (so the caches lblc, lblcr and LARD keep warm stay in use)."""

from __future__ import annotations

import pytest
from kit import avail_config

from l7switch.balance.build import build_pool
from l7switch.config import parse_config

from test_avail_core import FakeClock, by_name


def pool_of(text: str, clock: FakeClock):
    return build_pool(parse_config(text, "t.yaml").pools["p"], clock=clock)


@pytest.mark.parametrize("scheduler", ["lblc", "lblcr", "lard"])
def test_locality_tables_carry_over(scheduler: str) -> None:
    clock = FakeClock()
    text = avail_config([9001, 9002, 9003], scheduler)
    old = pool_of(text, clock)
    # Load the servers unevenly so that keys land on different servers.
    owners = {}
    for key in ("/a", "/b", "/c", "/d", "/e", "/f"):
        s = old.pick(key)
        assert s is not None
        owners[key] = s.name
        old.begin(s)  # stays in flight: the next key goes elsewhere
    assert len(set(owners.values())) > 1
    new = pool_of(text, clock)
    new.inherit(old)
    for key, name in owners.items():
        got = new.pick(key)
        assert got is not None and got.name == name, (key, name, got)
        assert got is by_name(new, name)  # the new pool's own Server objects, never the old


def test_locality_keys_of_a_removed_server_are_dropped() -> None:
    clock = FakeClock()
    old = pool_of(avail_config([9001, 9002], "lblc"), clock)
    s1 = old.pick("/a")
    assert s1 is not None
    old.begin(s1)
    s2 = old.pick("/b")
    assert s2 is not None and s2 is not s1
    new = pool_of(avail_config([s1.port], "lblc"), clock)
    new.inherit(old)
    got = new.pick("/b")
    assert got is not None and got.port == s1.port  # /b's server is gone: chosen afresh
