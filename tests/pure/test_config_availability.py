"""Rule-file keys for availability: health, agent, passive, backup, init_state, maxconn, slow_start,
retries, retry_budget, queue and the queue/tunnel timeouts. What each reads into (the resolved
ServerSpec / PoolSpec values), the defaults, pool/server merging, and every error at its position."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from l7switch.balance.persistence import server_cookie_id
from l7switch.config import load_config, parse_config
from l7switch.errors import ConfigError
from l7switch.spec import (AgentSpec, HealthSpec, HttpCheckSpec, PassiveSpec, PoolSpec, QueueSpec,
                           ServerSpec, Timeouts)

HEAD = """\
listen: [{address: 127.0.0.1:8080}]
default_pool: web
pools:
  web:
"""
ONE = "    servers: [127.0.0.1:9001]\n"  # line 5; pool keys from line 6


def pool(keys: str = "", servers: str = ONE) -> str:
    return HEAD + servers + keys


def web(text: str) -> PoolSpec:
    return parse_config(text).pools["web"]


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "f.yaml")
    return [str(i) for i in exc.value.issues]


def one_issue(text: str) -> str:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


# ---- the whole grammar, and the defaults -----------------------------------------------------------

FULL = """\
listen: [{address: 127.0.0.1:8080}]
pools:
  html:
    servers:
      - 127.0.0.1:9001
      - {address: 127.0.0.1:9002, maxconn: 50, init_state: down,
         health: {port: 8082, http: {path: /ping}},
         agent: off}
    backup:
      - {address: 127.0.0.1:9009, name: sorry}
    health:
      http: {path: /health, method: GET, host: www.example.com, expect: 200-399, body: "ok"}
      interval: 2s
      timeout: 1s
      rise: 2
      fall: 3
      port: 8081
    init_state: up
    agent: {port: 9999, interval: 5s, timeout: 1s}
    passive: {observe: layer4, error_limit: 5, ejection: 30s, max_ejection: 5m}
    slow_start: 30s
    retries: 2
    retry_budget: 20%
    maxconn: 100
    queue: {timeout: 5s, max: 10000}
default_pool: html
timeouts: {queue: 5s, tunnel: 1h}
"""


def test_every_key_resolved_into_the_specs() -> None:
    c = parse_config(FULL)
    p = c.pools["html"]
    check = HttpCheckSpec(path="/health", method="GET", host="www.example.com", expect=((200, 399),),
                          body="ok")
    pool_health = HealthSpec(http=check, interval=2.0, timeout=1.0, rise=2, fall=3, port=8081)
    agent = AgentSpec(port=9999, interval=5.0, timeout=1.0)
    assert p.servers == (
        ServerSpec("127.0.0.1:9001", "127.0.0.1", 9001, health=pool_health, agent=agent, maxconn=100),
        # Its own port and path over the pool's check; method, host, expect and body inherited.
        ServerSpec("127.0.0.1:9002", "127.0.0.1", 9002,
                   health=dataclasses.replace(pool_health, http=dataclasses.replace(check, path="/ping"),
                                              port=8082),
                   agent=None, maxconn=50, init_down=True),
    )
    assert p.backup == (ServerSpec("sorry", "127.0.0.1", 9009, health=pool_health, agent=agent, maxconn=100,
                                   backup=True),)
    assert p.passive == PassiveSpec("layer4", 5, 30.0, 300.0)
    assert (p.slow_start, p.retries, p.retry_budget) == (30.0, 2, 0.2)
    assert p.queue == QueueSpec(timeout=5.0, max=10000)
    assert (c.timeouts.queue, c.timeouts.tunnel) == (5.0, 3600.0)


def test_defaults_without_any_availability_key() -> None:
    c = parse_config(pool())
    p = c.pools["web"]
    assert p.servers == (ServerSpec("127.0.0.1:9001", "127.0.0.1", 9001),)
    s = p.servers[0]
    assert (s.health, s.agent, s.maxconn, s.init_down, s.backup) == (None, None, 0, False, False)
    assert p.backup == () and p.passive == PassiveSpec() and p.queue == QueueSpec()
    assert (p.slow_start, p.retries, p.retry_budget) == (0.0, 2, 0.2)
    assert (c.timeouts.queue, c.timeouts.tunnel) == (5.0, 3600.0)


def test_timeouts_queue_and_tunnel() -> None:
    c = parse_config(pool() + "timeouts: {queue: 250ms, tunnel: 2h}\n")
    assert c.timeouts == Timeouts(queue=0.25, tunnel=7200.0)
    assert one_issue(pool() + "timeouts: {tunnel: 0s}\n") == (
        "f.yaml:6:20: timeouts.tunnel: expected a duration greater than 0, found '0s'")
    assert one_issue(pool() + "timeouts: {queue: soon}\n") == (
        "f.yaml:6:19: timeouts.queue: expected a duration such as '5s', '250ms', '2m', '1h' or seconds, "
        "found 'soon'")


# ---- health -------------------------------------------------------------------------------------------

def health_of(keys: str) -> HealthSpec | None:
    return web(pool(keys)).servers[0].health


def test_health_presence_and_defaults() -> None:
    """Absent: no checks. `{}`: TCP connect checks with HAProxy's defaults (inter 2s, rise 2, fall 3);
    `http: {}`: GET / expecting 2xx/3xx."""
    assert health_of("") is None
    assert health_of("    health: {}\n") == HealthSpec(None, 2.0, 1.0, 2, 3, None)
    assert health_of("    health: {http: {}}\n") == HealthSpec(
        http=HttpCheckSpec("/", "GET", None, ((200, 399),)))
    assert health_of("    health: off\n") is None


@pytest.mark.parametrize("interval,timeout", [("1s", 0.5), ("10s", 1.0), ("200ms", 0.1), ("2s", 1.0)])
def test_health_timeout_follows_a_short_interval(interval: str, timeout: float) -> None:
    """An interval without a timeout: min(1s, interval/2), so a check never outlives the next."""
    h = health_of(f"    health: {{interval: {interval}}}\n")
    assert h is not None and h.timeout == timeout


def test_health_explicit_values() -> None:
    h = health_of("    health: {interval: 10s, timeout: 3s, rise: 1, fall: 1, port: 65535,\n"
                  "             http: {path: '/status?full=1', method: OPTIONS, host: a.test, body: alive}}\n")
    assert h == HealthSpec(HttpCheckSpec("/status?full=1", "OPTIONS", "a.test", ((200, 399),), "alive"),
                           10.0, 3.0, 1, 1, 65535)


@pytest.mark.parametrize("written,ranges", [
    ("200", ((200, 200),)), ("'200-399'", ((200, 399),)), ("2xx", ((200, 299),)), ("2XX", ((200, 299),)),
    ("204 - 206", ((204, 206),)), ("[200, 3xx, 401-403]", ((200, 200), (300, 399), (401, 403))),
    ("599", ((599, 599),)), ("1xx", ((100, 199),)),
])
def test_health_expect_forms(written: str, ranges: tuple[tuple[int, int], ...]) -> None:
    h = health_of(f"    health: {{http: {{expect: {written}}}}}\n")
    assert h is not None and h.http is not None and h.http.expect == ranges


# ---- agent --------------------------------------------------------------------------------------------

def test_agent_defaults_and_values() -> None:
    assert web(pool("    agent: {port: 9999}\n")).servers[0].agent == AgentSpec(9999, 5.0, 1.0)
    assert web(pool("    agent: {port: 1, interval: 1s}\n")).servers[0].agent == AgentSpec(1, 1.0, 0.5)
    assert web(pool("    agent: {port: 7, interval: 30s, timeout: 2s}\n")).servers[0].agent == AgentSpec(
        7, 30.0, 2.0)
    assert web(pool("    agent: off\n")).servers[0].agent is None


def test_agent_port_may_come_from_each_server() -> None:
    p = web(pool("    agent: {interval: 3s}\n", servers="    servers:\n"
                 "      - {address: 127.0.0.1:9001, agent: {port: 7001}}\n"
                 "      - {address: 127.0.0.1:9002, agent: {port: 7002, timeout: 2s}}\n"))
    assert [s.agent for s in p.servers] == [AgentSpec(7001, 3.0, 1.0), AgentSpec(7002, 3.0, 2.0)]


# ---- merging the pool's settings with a server's -------------------------------------------------

MERGE = """\
    servers:
      - 127.0.0.1:9001
      - {address: 127.0.0.1:9002, health: {rise: 5, http: {expect: 2xx}}}
      - {address: 127.0.0.1:9003, health: {http: off}}
      - {address: 127.0.0.1:9004, health: off, agent: {port: 7777}}
      - {address: 127.0.0.1:9005, agent: off, maxconn: 7, init_state: up}
"""


def test_server_overrides_merge_key_by_key() -> None:
    p = web(pool("    health: {http: {path: /h, host: h.test}, interval: 4s, fall: 2}\n"
                 "    agent: {port: 9999}\n    maxconn: 10\n    init_state: down\n", servers=MERGE))
    base = HealthSpec(HttpCheckSpec("/h", "GET", "h.test"), 4.0, 1.0, 2, 2)
    agent = AgentSpec(9999)
    assert [(s.health, s.agent, s.maxconn, s.init_down) for s in p.servers] == [
        (base, agent, 10, True),
        # rise overridden; the http check keeps path and host, with its own expect
        (HealthSpec(HttpCheckSpec("/h", "GET", "h.test", ((200, 299),)), 4.0, 1.0, 5, 2), agent, 10, True),
        (HealthSpec(None, 4.0, 1.0, 2, 2), agent, 10, True),  # http: off -> a TCP connect check
        (None, AgentSpec(7777), 10, True),  # health off; its own agent port (a whole new port)
        (base, None, 7, False),
    ]


def test_a_server_may_have_checks_the_pool_has_not() -> None:
    p = web(pool(servers="    servers:\n      - 127.0.0.1:9001\n"
                 "      - {address: 127.0.0.1:9002, health: {port: 8080}, init_state: down}\n"))
    assert [(s.health, s.init_down) for s in p.servers] == [(None, False), (HealthSpec(port=8080), True)]


def test_server_timeout_derived_from_the_merged_interval() -> None:
    """The pool's interval with no timeout written anywhere: the server's derived timeout follows
    the interval that applies to it."""
    p = web(pool("    health: {interval: 10s}\n", servers="    servers:\n      - 127.0.0.1:9001\n"
                 "      - {address: 127.0.0.1:9002, health: {interval: 600ms}}\n"))
    assert [(s.health.interval, s.health.timeout) for s in p.servers if s.health] == [(10.0, 1.0), (0.6, 0.3)]


# ---- pool-only keys --------------------------------------------------------------------------------

@pytest.mark.parametrize("written,spec", [
    ("off", PassiveSpec(observe="off")),
    ("{observe: layer7}", PassiveSpec(observe="layer7")),
    ("{observe: OFF}", PassiveSpec(observe="off")),
    ("{error_limit: 1, ejection: 10s}", PassiveSpec(error_limit=1, ejection=10.0)),
    ("{ejection: 5m, max_ejection: 5m}", PassiveSpec(ejection=300.0, max_ejection=300.0)),
    ("{max_ejection: 1h}", PassiveSpec(max_ejection=3600.0)),
])
def test_passive(written: str, spec: PassiveSpec) -> None:
    assert web(pool(f"    passive: {written}\n")).passive == spec


@pytest.mark.parametrize("written,share", [("20%", 0.2), ("0%", 0.0), ("100%", 1.0), ("12.5%", 0.125),
                                           ("0.25", 0.25), ("0", 0.0), ("1", 1.0), ("'5 %'", 0.05)])
def test_retry_budget(written: str, share: float) -> None:
    assert web(pool(f"    retry_budget: {written}\n")).retry_budget == share


def test_slow_start_retries_queue() -> None:
    p = web(pool("    slow_start: 0\n    retries: 0\n    queue: {max: 1}\n"))
    assert (p.slow_start, p.retries, p.queue) == (0.0, 0, QueueSpec(None, 1))
    p = web(pool("    slow_start: 1m\n    retries: 5\n    queue: {timeout: 250ms}\n"))
    assert (p.slow_start, p.retries, p.queue) == (60.0, 5, QueueSpec(0.25, 10_000))


# ---- backup servers --------------------------------------------------------------------------------

def test_backup_servers_parsed_like_servers() -> None:
    p = web(pool("    maxconn: 3\n    backup:\n      - 127.0.0.1:9100\n"
                 "      - {address: sorry.example:80, name: sorry, weight: 2, cookie: s1, resolve: later,\n"
                 "         maxconn: 1, health: {}}\n"))
    assert p.backup == (
        ServerSpec("127.0.0.1:9100", "127.0.0.1", 9100, maxconn=3, backup=True),
        ServerSpec("sorry", "sorry.example", 80, 2, "s1", True, health=HealthSpec(), maxconn=1, backup=True),
    )
    assert all(not s.backup for s in p.servers)


@pytest.mark.parametrize("written", ["", " []", " ~"])
def test_backup_may_be_empty(written: str) -> None:
    assert web(pool(f"    backup:{written}\n")).backup == ()


# ---- errors, one at a time, at their position ---------------------------------------------------------

S2 = "    servers:\n      - 127.0.0.1:9001\n      - {address: 127.0.0.1:9002, name: two}\n"  # lines 5-7
ERRORS = [
    # unknown keys, with a did-you-mean
    (pool("    helth: {}\n"), "f.yaml:6:5: pools.web: unknown key 'helth'; did you mean 'health'?"),
    (pool("    retry: 1\n"), "f.yaml:6:5: pools.web: unknown key 'retry'; did you mean 'retries'?"),
    (pool("    health: {intreval: 1s}\n"),
     "f.yaml:6:14: pools.web.health: unknown key 'intreval'; did you mean 'interval'?"),
    (pool("    health: {http: {pth: /}}\n"),
     "f.yaml:6:21: pools.web.health.http: unknown key 'pth'; did you mean 'path'?"),
    (pool("    agent: {port: 1, intervl: 1s}\n"),
     "f.yaml:6:22: pools.web.agent: unknown key 'intervl'; did you mean 'interval'?"),
    (pool("    passive: {observ: layer7}\n"),
     "f.yaml:6:15: pools.web.passive: unknown key 'observ'; did you mean 'observe'?"),
    (pool("    queue: {maxx: 5}\n"), "f.yaml:6:13: pools.web.queue: unknown key 'maxx'; did you mean 'max'?"),
    (pool(servers="    servers: [{address: 127.0.0.1:1, maxcon: 5}]\n"),
     "f.yaml:5:38: pools.web.servers[0]: unknown key 'maxcon'; did you mean 'maxconn'?"),
    # counts
    (pool("    health: {rise: 0}\n"),
     "f.yaml:6:20: pools.web.health.rise: expected an integer >= 1, found '0'"),
    (pool("    health: {fall: 0}\n"),
     "f.yaml:6:20: pools.web.health.fall: expected an integer >= 1, found '0'"),
    (pool("    passive: {error_limit: 0}\n"),
     "f.yaml:6:28: pools.web.passive.error_limit: expected an integer >= 1, found '0'"),
    (pool("    maxconn: 0\n"), "f.yaml:6:14: pools.web.maxconn: expected an integer >= 1, found '0'"),
    (pool(servers="    servers: [{address: 127.0.0.1:1, maxconn: 0}]\n"),
     "f.yaml:5:47: pools.web.servers[0].maxconn: expected an integer >= 1, found '0'"),
    (pool("    queue: {max: 0}\n"), "f.yaml:6:18: pools.web.queue.max: expected an integer >= 1, found '0'"),
    (pool("    retries: -1\n"), "f.yaml:6:14: pools.web.retries: expected an integer >= 0, found '-1'"),
    # ports
    (pool("    health: {port: 0}\n"),
     "f.yaml:6:20: pools.web.health.port: expected an integer >= 1, found '0'"),
    (pool("    health: {port: 65536}\n"),
     "f.yaml:6:20: pools.web.health.port: expected a port from 1 to 65535, found '65536'"),
    (pool("    agent: {port: http}\n"),
     "f.yaml:6:19: pools.web.agent.port: expected an integer >= 1, found 'http'"),
    # timeouts below intervals
    (pool("    health: {interval: 1s, timeout: 1s}\n"),
     "f.yaml:6:37: pools.web.health.timeout: timeout '1s' must be shorter than interval '1s' (line 6), "
     "so a check ends before the next"),
    (pool("    health: {timeout: 3s}\n"),
     "f.yaml:6:23: pools.web.health.timeout: timeout '3s' must be shorter than the default interval 2s, "
     "so a check ends before the next"),
    (pool("    agent: {port: 1, interval: 2s, timeout: 5s}\n"),
     "f.yaml:6:45: pools.web.agent.timeout: timeout '5s' must be shorter than interval '2s' (line 6), "
     "so a check ends before the next"),
    (pool("    health: {timeout: 1s}\n",
          servers="    servers: [{address: 127.0.0.1:1, health: {interval: 500ms}}]\n"),
     "f.yaml:5:57: pools.web.servers[0].health.interval: interval '500ms' must be longer than the timeout "
     "'1s' (line 6), so a check ends before the next"),
    # passive ejection times
    (pool("    passive: {ejection: 10m}\n"),
     "f.yaml:6:25: pools.web.passive.ejection: ejection '10m' is longer than the default max_ejection 300s"),
    (pool("    passive: {ejection: 1m, max_ejection: 30s}\n"),
     "f.yaml:6:25: pools.web.passive.ejection: ejection '1m' is longer than max_ejection '30s' (line 6)"),
    (pool("    passive: {max_ejection: 10s}\n"),
     "f.yaml:6:29: pools.web.passive.max_ejection: max_ejection '10s' is shorter than the default "
     "ejection 30s"),
    (pool("    passive: {observe: layr7}\n"),
     "f.yaml:6:24: pools.web.passive.observe: expected off or layer4 or layer7, found 'layr7'; "
     "did you mean 'layer7'?"),
    # the http check
    (pool("    health: {http: {expect: 600}}\n"),
     "f.yaml:6:29: pools.web.health.http.expect: status codes are 100 to 599, found '600'"),
    (pool("    health: {http: {expect: 099}}\n"),
     "f.yaml:6:29: pools.web.health.http.expect: status codes are 100 to 599, found '099'"),
    (pool("    health: {http: {expect: 399-200}}\n"),
     "f.yaml:6:29: pools.web.health.http.expect: range '399-200' is empty; write the lower status first"),
    (pool("    health: {http: {expect: [200, 2xz]}}\n"),
     "f.yaml:6:35: pools.web.health.http.expect[1]: expected a status such as 200, a range such as "
     "'200-399' or a class such as '2xx', found '2xz'"),
    (pool("    health: {http: {expect: []}}\n"),
     "f.yaml:6:29: pools.web.health.http.expect: expected a status, a range or a list of them, "
     "found an empty list"),
    (pool("    health: {http: {method: get}}\n"),
     "f.yaml:6:29: pools.web.health.http.method: methods are case-sensitive; did you mean 'GET'?"),
    (pool("    health: {http: {method: 'GE T'}}\n"),
     "f.yaml:6:29: pools.web.health.http.method: expected an HTTP method such as 'GET', found 'GE T'"),
    (pool("    health: {http: {path: health}}\n"),
     "f.yaml:6:27: pools.web.health.http.path: expected a path starting with '/' and without spaces or "
     "control characters (it is sent in the request line), found 'health'"),
    (pool("    health: {http: {path: '/a b'}}\n"),
     "f.yaml:6:27: pools.web.health.http.path: expected a path starting with '/' and without spaces or "
     "control characters (it is sent in the request line), found '/a b'"),
    (pool("    health: {http: {host: ''}}\n"),
     "f.yaml:6:27: pools.web.health.http.host: expected a host name, found an empty string"),
    (pool("    health: {http: {host: 'a b'}}\n"),
     "f.yaml:6:27: pools.web.health.http.host: expected a Host header value without spaces or control "
     "characters, found 'a b'"),
    (pool("    health: {http: {body: ''}}\n"),
     "f.yaml:6:27: pools.web.health.http.body: expected a text, found an empty string"),
    # shapes
    (pool("    health:\n"),
     "f.yaml:6:12: pools.web.health: expected a mapping ({} for TCP connect checks) or off, found nothing"),
    (pool("    health: yes\n"),
     "f.yaml:6:13: pools.web.health: expected a mapping ({} for TCP connect checks) or off, found 'yes'"),
    (pool("    health: {http: [GET]}\n"),
     "f.yaml:6:20: pools.web.health.http: expected a mapping, found a list"),
    (pool("    queue: off\n"),
     "f.yaml:6:12: pools.web.queue: a queue cannot be turned off; without maxconn nothing waits in it"),
    (pool("    agent: {}\n"),
     "f.yaml:6:12: pools.web.agent: missing required key 'port' (the agent's port on each server's host)"),
    (pool("    backup: 127.0.0.1:9\n"),
     "f.yaml:6:13: pools.web.backup: expected a list, found '127.0.0.1:9'"),
    # single values
    (pool("    retry_budget: 20\n"),
     "f.yaml:6:19: pools.web.retry_budget: expected a percentage from 0% to 100% or a fraction from 0 to 1, "
     "found '20'; did you mean '20%'?"),
    (pool("    retry_budget: 150%\n"),
     "f.yaml:6:19: pools.web.retry_budget: expected a percentage from 0% to 100% or a fraction from 0 to 1, "
     "found '150%'"),
    (pool("    retry_budget: lots\n"),
     "f.yaml:6:19: pools.web.retry_budget: expected a percentage from 0% to 100% or a fraction from 0 to 1, "
     "found 'lots'"),
    (pool("    slow_start: -1s\n"),
     "f.yaml:6:17: pools.web.slow_start: expected a duration such as '5s', '250ms', '2m', '1h' or seconds, "
     "found '-1s'"),
    (pool("    queue: {timeout: 0s}\n"),
     "f.yaml:6:22: pools.web.queue.timeout: expected a duration greater than 0, found '0s'"),
    (pool("    init_state: sideways\n"),
     "f.yaml:6:17: pools.web.init_state: expected up or down, found 'sideways'; expected one of: down, up"),
    (pool("    init_state: dwon\n    health: {}\n"),
     "f.yaml:6:17: pools.web.init_state: expected up or down, found 'dwon'; did you mean 'down'?"),
    # servers that would never come up
    (pool(servers="    servers: [{address: 127.0.0.1:1, init_state: down}]\n"),
     "f.yaml:5:50: pools.web.servers[0].init_state: server '127.0.0.1:1' starts down but has no health: or "
     "agent: checks; it would never come up: add health: or agent:"),
    (pool("    init_state: down\n", servers=S2),  # two servers, reported once at the pool's key
     "f.yaml:8:17: pools.web.init_state: servers start down but the pool has no health: or agent: checks; "
     "it would never come up: add health: or agent:"),
    (pool("    init_state: down\n    health: {}\n",
          servers="    servers: [127.0.0.1:1, {address: 127.0.0.1:2, health: off}]\n"),
     "f.yaml:5:28: pools.web.servers[1]: server '127.0.0.1:2' starts down (init_state: down at line 6) but "
     "its checks are off; it would never come up: add health: or agent:"),
    # backups against primaries
    (pool("    backup: [127.0.0.1:9001]\n"),
     "f.yaml:6:14: pools.web.backup[0]: backup server 127.0.0.1:9001 is also a primary server of pool "
     "'web' (line 5)"),
    (pool("    backup: [{address: 127.0.0.1:9100, name: two}]\n", servers=S2),
     "f.yaml:8:46: pools.web.backup[0]: backup server name 'two' is also a primary server of pool 'web' "
     "(line 7)"),
    (pool("    backup: [127.0.0.1:9100, 127.0.0.1:9100]\n"),
     "f.yaml:6:30: pools.web.backup[1]: duplicate server address '127.0.0.1:9100' in pool 'web' "
     "(first at line 6)"),
    (pool("    backup: [{address: 127.0.0.1:9100, cookie: c1}]\n",
          servers="    servers: [{address: 127.0.0.1:1, cookie: c1}]\n"),
     "f.yaml:6:48: pools.web.backup[0].cookie: duplicate cookie value 'c1' in this pool (first at line 5); "
     "each server needs its own"),
]


@pytest.mark.parametrize("text,expected", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_error(text: str, expected: str) -> None:
    assert one_issue(text) == expected


def test_a_pool_default_mistake_is_reported_once_for_all_its_servers() -> None:
    """The pool's timing mistake and its agent without a port apply to every server (and backup)
    that inherits them: each is reported once, at the pool's key."""
    found = issues(pool("    health: {interval: 1s, timeout: 2s}\n    agent: {interval: 9s}\n"
                        "    backup: [127.0.0.1:9100]\n", servers=S2))
    assert found == [
        "f.yaml:8:37: pools.web.health.timeout: timeout '2s' must be shorter than interval '1s' (line 8), "
        "so a check ends before the next",
        "f.yaml:9:12: pools.web.agent: missing required key 'port' (the agent's port on each server's host)",
    ]


def test_a_pool_timing_mistake_is_reported_even_if_every_server_overrides_it() -> None:
    assert issues(pool("    health: {interval: 1s, timeout: 2s}\n",
                       servers="    servers: [{address: 127.0.0.1:1, health: {interval: 5s}}]\n")) == [
        "f.yaml:6:37: pools.web.health.timeout: timeout '2s' must be shorter than interval '1s' (line 6), "
        "so a check ends before the next"]


def test_several_errors_in_one_pass() -> None:
    text = """\
listen: [{address: 127.0.0.1:8080}]
default_pool: web
pools:
  web:
    servers:
      - {address: 127.0.0.1:9001, maxconn: 0}
      - {address: 127.0.0.1:9002, init_state: down}
    backup:
      - 127.0.0.1:9001
    helth: {}
    health: {rise: 0, http: {expect: 2xz, method: get}}
    agent: {port: 70000}
    passive: {observe: layer9, ejection: 10m}
    retry_budget: 200%
    queue: {max: 0}
"""
    found = issues(text)
    assert [":".join(f.split(":")[1:3]) for f in found] == [
        "6:44", "9:9", "10:5", "11:20", "11:38", "11:51", "12:19", "13:24", "14:19", "15:18"]
    assert found[2] == "f.yaml:10:5: pools.web: unknown key 'helth'; did you mean 'health'?"
    assert found[1] == ("f.yaml:9:9: pools.web.backup[0]: backup server 127.0.0.1:9001 is also a primary "
                        "server of pool 'web' (line 6)")


def test_cookie_ids_cover_the_backup_servers() -> None:
    """A backup is sticky like a primary: an explicit cookie value equal to a backup's derived id
    would make the two one server, and is refused as between primaries."""
    sorry_id = server_cookie_id("web", "sorry")
    text = pool("    backup: [{address: 127.0.0.1:9100, name: sorry}]\n"
                "    persistence: {cookie: {name: SRV}}\n",
                servers=f"    servers: [{{address: 127.0.0.1:1, cookie: {sorry_id}}}]\n")
    assert issues(text) == [
        f"f.yaml:7:19: pools.web.persistence: server '127.0.0.1:1' has cookie {sorry_id!r}, the id derived "
        "for server 'sorry'; choose another value"]
    p = web(pool("    backup: [{address: 127.0.0.1:9100, name: sorry}]\n    persistence: {cookie: {}}\n"))
    assert p.persistence is not None and [s.name for s in p.backup] == ["sorry"]


def test_the_example_rule_file_shows_the_availability_keys() -> None:
    c = load_config(Path(__file__).resolve().parents[2] / "rules" / "example.yaml")
    html = c.pools["html"]
    html3 = html.servers[-1]
    assert html3.name == "html3" and html3.init_down and html3.agent is None and html3.maxconn == 50
    assert html3.health is not None and html3.health.port == 8082 and html3.health.http is not None
    assert (html3.health.http.path, html3.health.http.host) == ("/ping", "www.example.com")
    assert [s.name for s in html.backup] == ["sorry"] and html.retry_budget == 0.2
    assert (c.timeouts.queue, c.timeouts.tunnel) == (5.0, 3600.0)


def test_head_check_with_a_body_to_match_is_refused() -> None:
    """A HEAD answer carries no body (RFC 9110 §9.3.2): such a check could never pass."""
    found = issues(pool("    health: {http: {method: HEAD, body: ok}}\n"))
    assert len(found) == 1 and "a HEAD check gets no body to match" in found[0], found
