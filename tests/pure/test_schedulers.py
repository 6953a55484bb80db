"""Scheduler interface conformance and the defining behaviour of rr and wlc (pure, no sockets)."""

from __future__ import annotations

import collections

import pytest
from kit import pool_config

from l7switch.balance.schedulers import SCHEDULERS, Scheduler, create, register
from l7switch.balance.servers import Server
from l7switch.config import parse_config
from l7switch.errors import ConfigError


def servers(*weights: int) -> list[Server]:
    return [Server(f"s{i}", "127.0.0.1", 9000 + i, w, "p", i) for i, w in enumerate(weights)]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_skips_down_and_quiesced_servers(name: str) -> None:
    ss = servers(1, 1, 0)
    ss[0].up = False
    sched = create(name, ss)
    picks = {sched.pick(f"/k{i}") for i in range(50)}
    assert picks == {ss[1]}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_returns_none_when_nothing_is_available(name: str) -> None:
    ss = servers(1, 1)
    for s in ss:
        s.up = False
    assert create(name, ss).pick("/x") is None


def test_rr_cycles_in_order_and_ignores_weights() -> None:
    ss = servers(1, 5, 1)
    sched = create("rr", ss)
    assert [sched.pick(None).name for _ in range(6)] == ["s0", "s1", "s2", "s0", "s1", "s2"]


def test_rr_passes_a_masked_servers_turn_on() -> None:
    ss = servers(1, 1, 1)
    sched = create("rr", ss)
    assert sched.pick(None) is ss[0]
    ss[1].up = False
    assert sched.pick(None) is ss[2]
    assert sched.pick(None) is ss[0]


def test_wlc_prefers_the_idle_server() -> None:
    ss = servers(1, 1, 1)
    ss[0].inflight, ss[1].inflight, ss[2].inflight = 3, 0, 2
    assert create("wlc", ss).pick(None) is ss[1]


def test_wlc_weighs_load_by_weight() -> None:
    ss = servers(1, 4)
    ss[0].inflight, ss[1].inflight = 1, 3  # overheads 1/1 vs 3/4
    assert create("wlc", ss).pick(None) is ss[1]


def test_wlc_spreads_in_proportion_to_weight_under_sustained_load() -> None:
    ss = servers(1, 3)
    sched = create("wlc", ss)
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(400):  # requests that stay in flight
        s = sched.pick(None)
        assert s is not None
        s.inflight += 1
        counts[s.name] += 1
    assert counts["s1"] == 3 * counts["s0"]


def test_registry_rejects_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError):
        @register
        class Again(Scheduler):
            name = "rr"
    with pytest.raises(ValueError, match="unknown scheduler"):
        create("nope", servers(1))


def test_scheduler_option_errors_fail_the_load(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(pool_config([1, 2], "lard", "{t_low: 70, t_high: 65}"), "f.yaml")
    assert "t_low (70) must be below t_high (65)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(pool_config([1, 2], "maglev", "{table_size: 100}"), "f.yaml")
    assert "table_size" in str(e.value)


def test_pool_calls_take_and_drop_hooks_only_where_a_scheduler_has_them() -> None:
    """ServerPool.begin/end skip the base class's no-op hooks (they run for every request) but
    call a scheduler's own (HAProxy's lbprm.server_take_conn/server_drop_conn)."""
    from l7switch.balance.pool import ServerPool
    from l7switch.spec import PoolSpec, ServerSpec

    calls: list[str] = []

    class Counting(Scheduler):
        name = "counting-test"

        def pick(self, key: str | None) -> Server | None:
            return self.servers[0]

        def on_start(self, server: Server) -> None:
            calls.append(f"start {server.name}")

        def on_end(self, server: Server) -> None:
            calls.append(f"end {server.name}")

    spec = PoolSpec("p", "rr", (ServerSpec("a", "127.0.0.1", 1),), {})
    servers = [Server("a", "127.0.0.1", 1)]
    plain = ServerPool(spec, servers, create("rr", servers))
    assert plain._on_start is None and plain._on_end is None
    plain.begin(servers[0])
    plain.end(servers[0])
    counting = ServerPool(spec, servers, Counting(servers))
    counting.begin(servers[0])
    counting.end(servers[0])
    assert calls == ["start a", "end a"] and servers[0].inflight == 0 and servers[0].total == 2
