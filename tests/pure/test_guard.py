"""guard/clients.py: the per-client table with a fake clock — connection counts, the token
bucket and its Retry-After, keys by prefix, trusted networks, the LRU bound, log pacing, describe."""

from __future__ import annotations

import math

from l7switch.config import parse_config
from l7switch.guard.clients import ClientTable, describe
from l7switch.spec import PerClientSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: FakeClock | None = None, **kw: object) -> ClientTable:
    return ClientTable(PerClientSpec(**kw), clock or FakeClock())  # type: ignore[arg-type]


def test_connections_are_counted_in_and_out_and_refused_at_the_limit() -> None:
    t = table(connections=2)
    k = t.key("192.0.2.7")
    assert k == "192.0.2.7"
    assert t.connect(k) and t.connect(k)
    assert not t.connect(k)  # the third
    assert t.refused == 1 and t.get(k).refused == 1  # type: ignore[union-attr]
    assert t.get(k).conns == 2  # type: ignore[union-attr]  # a refused one is not counted
    t.disconnect(k)
    assert t.connect(k)  # room again
    other = t.key("192.0.2.8")
    assert other is not None and t.connect(other) and t.connect(other)


def test_disconnect_never_goes_below_zero_and_ignores_unknown_keys() -> None:
    t = table(connections=1)
    t.disconnect("198.51.100.1")
    k = t.key("198.51.100.1")
    assert k is not None
    t.connect(k)
    t.disconnect(k)
    t.disconnect(k)
    assert t.get(k).conns == 0  # type: ignore[union-attr]


def test_token_bucket_burst_then_rate_and_retry_after() -> None:
    clock = FakeClock()
    t = table(clock, requests_per_second=8, burst=5)  # (powers of two: exact float steps)
    k = "192.0.2.1"
    assert [t.request(k) for _ in range(5)] == [0.0] * 5  # the burst
    wait = t.request(k)
    assert wait == 0.125  # one token per 1/8 s
    assert t.limited == 1
    clock.now += 0.0625
    assert t.request(k) == 0.0625  # still half a token
    clock.now += 0.0625
    assert t.request(k) == 0.0
    clock.now += 100  # refills up to the burst, not beyond
    assert [t.request(k) for _ in range(6)].count(0.0) == 5


def test_burst_defaults_to_one_seconds_worth() -> None:
    t = table(requests_per_second=2.5)
    assert t.burst == 3
    k = "192.0.2.1"
    assert [t.request(k) == 0.0 for _ in range(4)] == [True, True, True, False]
    assert table(requests_per_second=0.5).burst == 1


def test_a_slow_rate_gives_a_long_retry_after() -> None:
    t = table(requests_per_second=0.2, burst=1)
    k = "192.0.2.1"
    assert t.request(k) == 0.0
    assert math.ceil(t.request(k)) == 5


def test_no_rate_counts_requests_and_never_limits() -> None:
    t = table(connections=3)
    assert all(t.request("192.0.2.1") == 0.0 for _ in range(1000))
    assert t.get("192.0.2.1").requests == 1000  # type: ignore[union-attr]


def test_keys_are_prefixes_as_source_persistence() -> None:
    t = table(connections=1, netmask=24, netmask6=64)
    assert t.key("192.0.2.7") == t.key("192.0.2.200") == "192.0.2.0/24"
    assert t.key("2001:db8:1:2::5") == t.key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert t.key("::ffff:192.0.2.9") == "192.0.2.0/24"  # IPv4-mapped counts as IPv4
    assert t.key("/run/sock") is None
    k = t.key("192.0.2.7")
    assert k is not None and t.connect(k)
    assert not t.connect(t.key("192.0.2.8") or "")  # the same /24: one client


def test_trusted_networks_are_exempt_and_loopback_is_not_by_default() -> None:
    t = table(connections=1, trusted=("10.0.0.0/8", "2001:db8::/32", "192.0.2.5/32"))
    assert t.key("10.1.2.3") is None
    assert t.key("::ffff:10.1.2.3") is None
    assert t.key("2001:db8:ffff::1") is None
    assert t.key("192.0.2.5") is None
    assert t.key("192.0.2.6") == "192.0.2.6"
    assert t.key("11.0.0.1") == "11.0.0.1"
    assert table(connections=1).key("127.0.0.1") == "127.0.0.1"


def test_the_table_is_bounded_under_a_flood_of_addresses() -> None:
    t = table(connections=5, requests_per_second=10, max_entries=1000)
    for i in range(50_000):
        k = t.key(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        assert k is not None
        t.connect(k)
        t.request(k)
        t.disconnect(k)
    assert len(t) == 1000
    assert t.evicted == 49_000
    # The most recent ones are the ones kept (LRU).
    assert t.get("10.0.195.79") is not None and t.get("10.0.0.1") is None


def test_eviction_passes_over_clients_with_open_connections() -> None:
    t = table(connections=2, max_entries=4)
    t.connect("192.0.2.1")  # oldest, but holds a connection
    for i in range(2, 6):
        t.connect(f"192.0.2.{i}")
        t.disconnect(f"192.0.2.{i}")
    assert t.get("192.0.2.1") is not None  # passed over; 192.0.2.2 went instead
    assert t.get("192.0.2.2") is None
    # Every entry in use: the bound still holds (an entry is dropped after PIN_TRIES).
    u = table(connections=2, max_entries=3)
    for i in range(20):
        u.connect(f"192.0.2.{i}")
    assert len(u) == 3


def test_log_lines_are_paced_per_kind_with_a_count_of_the_rest(monkeypatch, caplog) -> None:
    """The refusal lines (proxy/state.py) go through one net/ratelog limiter per kind."""
    import logging

    from l7switch.net import ratelog
    from l7switch.proxy.state import SwitchState
    now = [100.0]
    monkeypatch.setattr(ratelog.time, "monotonic", lambda: now[0])
    config = parse_config("listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:9]}}\ndefault_pool: p\n"
                          "limits: {per_client: {connections: 1, requests_per_second: 1, burst: 1}}\n")
    state = SwitchState(config)
    with caplog.at_level(logging.WARNING, logger="l7switch"):
        assert state.refusals_log.warning("conn %d", 1)
        assert not state.refusals_log.warning("conn %d", 2)
        assert not state.refusals_log.warning("conn %d", 3)
        assert state.rate_log.warning("rate %d", 1)  # another kind has its own pace
        now[0] += state.refusals_log.interval
        assert state.refusals_log.warning("conn %d", 4)
    assert [r.getMessage() for r in caplog.records] == ["conn 1", "rate 1", "conn 4 (2 more like it suppressed)"]


def test_configure_keeps_counts_and_applies_the_new_bound() -> None:
    t = table(connections=1, max_entries=10)
    for i in range(10):
        t.request(f"192.0.2.{i}")
    t.configure(PerClientSpec(connections=2, max_entries=4))
    assert len(t) == 4 and t.max_conns == 2


def test_snapshot_lists_top_talkers_first() -> None:
    t = table(connections=3, requests_per_second=1, burst=2)
    for _ in range(3):
        t.connect("192.0.2.9")
    t.connect("192.0.2.9")  # refused
    for _ in range(5):
        t.request("192.0.2.1")
    snap = t.snapshot(n=1)
    assert snap["clients"] == 2 and snap["refused_connections"] == 1 and snap["limited_requests"] == 3
    assert snap["top"] == [{"client": "192.0.2.9", "connections": 3, "requests": 0, "refused": 1,
                            "limited": 0, "tokens": 2.0}]


def test_describe_tells_the_key_the_limits_and_the_state() -> None:
    clock = FakeClock()
    spec = PerClientSpec(connections=1, requests_per_second=1, burst=1, netmask=24, trusted=("10.0.0.0/8",))
    t = ClientTable(spec, clock)
    assert describe(None, None, "192.0.2.1") == ["per-client limits: off (limits.per_client)"]
    assert describe(t, spec, "10.0.0.1") == ["per-client limits: 10.0.0.1 is in a trusted network: not limited"]
    lines = describe(None, spec, "192.0.2.1")
    assert lines == ["per-client limits: 1 connections, 1 requests/s (burst 1) per 192.0.2.0/24 (netmask 24/64)"]
    assert "not in the table" in describe(t, spec, "192.0.2.1")[1]
    t.connect("192.0.2.0/24")
    t.request("192.0.2.0/24")
    t.request("192.0.2.0/24")
    text = "\n".join(describe(t, spec, "192.0.2.77"))
    assert "1 connections open, 2 requests" in text
    assert "at its connection limit" in text
    assert "over its request rate: 429 for the next 1.00 s" in text
    clock.now += 1
    assert "1 requests may pass at once now" in describe(t, spec, "192.0.2.77")[-1]
