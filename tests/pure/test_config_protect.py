"""The self-protection keys: limits.max_connections, limits.per_client, limits.min_body_rate,
limits.buffer_body and timeouts.keepalive — values, defaults, and every mistake at its line."""

from __future__ import annotations

import pytest

from l7switch.config import parse_config
from l7switch.errors import ConfigError
from l7switch.spec import Limits, PerClientSpec, Timeouts

HEAD = "listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:1]}}\ndefault_pool: p\n"  # 3 lines


def limits(text: str) -> Limits:
    return parse_config(HEAD + text).limits


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(HEAD + text, "f.yaml")
    return [str(i) for i in exc.value.issues]


def test_defaults() -> None:
    d = limits("")
    assert d.max_connections is None and d.per_client is None and d.min_body_rate == 500
    assert parse_config(HEAD).timeouts.keepalive == Timeouts().keepalive == 5.0


def test_values() -> None:
    got = limits("limits:\n  max_connections: 500\n  min_body_rate: 1KiB/s\n"
                 "  per_client: {connections: 10, requests_per_second: 2.5, burst: 5, netmask: 24,\n"
                 "               netmask6: 48, max_entries: 1000, trusted: [10.0.0.0/8, '::1', 192.0.2.7]}\n")
    assert got.max_connections == 500 and got.min_body_rate == 1024
    assert got.per_client == PerClientSpec(10, 2.5, 5, 24, 48, 1000,
                                           ("10.0.0.0/8", "::1/128", "192.0.2.7/32"))
    assert parse_config(HEAD + "timeouts: {keepalive: 750ms}\n").timeouts.keepalive == 0.75


@pytest.mark.parametrize("written,value", [("500", 500), ("500B/s", 500), ("2k/s", 2048),
                                           ("0", 0), ("off", 0), ("1 KiB / s", 1024)])
def test_min_body_rate_forms(written: str, value: int) -> None:
    assert limits(f"limits: {{min_body_rate: '{written}'}}\n").min_body_rate == value


@pytest.mark.parametrize("written", ["auto", "~"])
def test_max_connections_auto(written: str) -> None:
    assert limits(f"limits: {{max_connections: {written}}}\n").max_connections is None


def test_per_client_off_and_connections_only() -> None:
    assert limits("limits: {per_client: off}\n").per_client is None
    assert limits("limits: {per_client: {connections: 3}}\n").per_client == PerClientSpec(connections=3)


def test_every_mistake_in_one_pass() -> None:
    found = issues(
        "limits:\n"                                             # 4
        "  max_connections: 0\n"                                # 5
        "  min_body_rate: fast\n"                               # 6
        "  per_client:\n"                                       # 7
        "    conections: 5\n"                                   # 8
        "    requests_per_second: -1\n"                         # 9
        "    trusted: [10.0.0.300/8]\n"                         # 10
        "    netmask6: 129\n")                                  # 11
    text = "\n".join(found)
    assert "f.yaml:5:20: limits.max_connections: expected an integer >= 1" in text
    assert "f.yaml:6:18: limits.min_body_rate: expected bytes per second" in text
    assert "f.yaml:8:5:" in text and "did you mean 'connections'" in text
    assert "f.yaml:9:26: limits.per_client.requests_per_second: expected requests per second" in text
    assert "f.yaml:10:15: limits.per_client.trusted: '10.0.0.300/8' is not a network" in text
    assert "f.yaml:11:15: limits.per_client.netmask6: expected a prefix length from 0 to 128" in text


def test_per_client_that_limits_nothing_and_burst_without_rate() -> None:
    assert "sets no limit" in issues("limits: {per_client: {netmask: 24}}\n")[0]
    found = issues("limits: {per_client: {connections: 5, burst: 10}}\n")
    assert len(found) == 1 and "limits.per_client.burst: a burst needs requests_per_second" in found[0]
    assert "expected a mapping" in issues("limits: {per_client: [1]}\n")[0]


@pytest.mark.parametrize("written,value", [("64KiB", 65536), ("16k", 16384), ("0", 0), ("off", 0),
                                           ("1000", 1000)])
def test_buffer_body_forms(written: str, value: int) -> None:
    assert limits(f"limits: {{buffer_body: '{written}'}}\n").buffer_body == value
    assert limits("").buffer_body == 65536  # on by default, as nginx's proxy_request_buffering


def test_buffer_body_mistakes() -> None:
    found = "\n".join(issues("limits:\n  buffer_body: 1MiB\n  bufer_body: 1k\n"))
    assert "f.yaml:5:16: limits.buffer_body: at most 64KiB" in found
    assert "f.yaml:6:3:" in found and "did you mean 'buffer_body'" in found
    assert "limits.buffer_body: expected a size" in "\n".join(issues("limits: {buffer_body: lots}\n"))
