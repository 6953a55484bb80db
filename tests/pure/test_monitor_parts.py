"""The monitor's pure parts: users file and password hashes, sessions and the login brake, rates
from counters, the Prometheus exposition, and the rule file's monitor/metrics sections."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from l7switch.config import parse_config
from l7switch.config.users import User, hash_password, parse_users, set_user, verify_password
from l7switch.errors import ConfigError
from l7switch.monitor.history import History
from l7switch.monitor.metrics import exposition
from l7switch.monitor.sessions import FREE_FAILURES, LoginThrottle, Sessions
from l7switch.stats import BOUNDS, Traffic, count


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_password_hashes_are_salted_scrypt_and_verify() -> None:
    a, b = hash_password("s3cret"), hash_password("s3cret")
    assert a != b and a.startswith("scrypt$16384$8$1$")  # a fresh salt each time
    assert verify_password("s3cret", a) and verify_password("s3cret", b)
    assert not verify_password("s3cret!", a)
    assert not verify_password("s3cret", "scrypt$16384$8$1$not-base64$x") and not verify_password("x", "md5$abc")


def test_users_file_problems_are_reported_at_their_lines(tmp_path) -> None:
    good = hash_password("pw")
    text = (f"# comment\nalice:admin:{good}\nbob:root:{good}\nno colons here\nalice:viewer:{good}\n"
            f"carol:viewer:plaintext\nbad name:viewer:{good}\n")
    users, problems = parse_users(text, "users")
    assert list(users) == ["alice"] and users["alice"].admin
    assert problems == [
        "users:3: role 'root' of 'bob': expected admin or viewer",
        "users:4: expected user:role:hash (made by l7switch passwd)",
        "users:5: 'alice' again (each user once)",
        "users:6: the password of 'carol' is not a hash l7switch passwd made",
        "users:7: a user name is 1-64 letters, digits, '_', '.', '@' or '-', found 'bad name'",
    ]
    path = str(tmp_path / "u")
    assert set_user(path, "dave", "viewer", "one") is True
    assert set_user(path, "dave", "admin", "two") is False  # changed in place
    users, problems = parse_users(open(path).read(), path)
    assert not problems and users["dave"].role == "admin" and verify_password("two", users["dave"].hash)
    assert oct((tmp_path / "u").stat().st_mode & 0o777) == "0o600"


def test_sessions_expire_when_unused_and_end_on_logout() -> None:
    clock = Clock()
    s = Sessions(60.0, clock)
    alice = s.create(User("alice", "admin", "x"))
    assert s.get(alice.token) is alice and alice.admin and len(alice.csrf) > 30
    clock.now += 59
    assert s.get(alice.token) is alice  # used: another 60 s
    clock.now += 61
    assert s.get(alice.token) is None
    bob = s.create(User("bob", "viewer", "x"))
    s.end(bob.token)
    assert s.get(bob.token) is None and s.get("") is None and s.get("forged") is None


def test_login_brake_grows_per_client_and_per_user_and_forgets() -> None:
    clock = Clock()
    t = LoginThrottle(clock, max_delay=30.0)
    delays = []
    for _ in range(FREE_FAILURES + 6):
        d = t.begin("10.0.0.1", "alice")
        assert d is not None
        delays.append(d)
        t.end("10.0.0.1", "alice", ok=False)
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16, 30]
    assert t.begin("10.0.0.2", "alice") == 30.0  # another address guessing the same user
    t.end("10.0.0.2", "alice", ok=False)
    assert t.begin("10.0.0.3", "bob") == 0  # others are not slowed
    t.end("10.0.0.3", "bob", ok=True)
    # While one attempt of a throttled client waits, its next is refused at once (429).
    assert t.begin("10.0.0.1", "x") == 30.0 and t.begin("10.0.0.1", "y") is None
    t.end("10.0.0.1", "x", ok=False)
    clock.now += 16 * 60
    assert t.begin("10.0.0.1", "zed") == 0  # quiet for 15 minutes: forgotten
    t.end("10.0.0.1", "zed", ok=True)
    assert t.failures("10.0.0.1") == 0


def _stats(requests: int, errors: int, hits: int, misses: int, slow: int) -> dict:
    t = Traffic()
    for i in range(requests):
        count(t, Traffic(), 500 if i < errors else 200, 0, 10, 0.5 if i < slow else 0.002,
              1 if i < hits else 2 if i < hits + misses else 0)
    return {"pools": {"web": {"unserved": Traffic().snapshot(), "servers": {"a": {"traffic": t.snapshot(),
                                                                                  "retries": 0}}}}}


def test_history_turns_counters_into_rates_and_chart_points() -> None:
    h = History()
    h.add(1000.0, _stats(0, 0, 0, 0, 0))
    h.add(1001.0, _stats(100, 5, 30, 10, 2))
    recent = h.recent()
    assert recent["web"]["rps"] == 100.0 and recent["web/a"]["error_rate"] == 0.05
    assert recent["web"]["hit_ratio"] == 0.75 and recent["web"]["p50_ms"] < 2.5 < 400 < recent["web"]["p99_ms"]
    points = h.charts()["web"]
    assert len(points) == 1 and points[0][1:3] == [100.0, 5.0] and points[0][4] == 0.75


def test_exposition_parses_and_adds_up() -> None:
    stats = _stats(10, 1, 4, 4, 0)
    stats.update(version="0.1.0", uptime_s=5.0, workers=2, clients=3,
                 listeners={"127.0.0.1:80": {"connections": 4, "classes": [0, 0, 9, 0, 0, 1],
                                             "bytes_in": 0, "bytes_out": 100}})
    stats["pools"]["web"].update(queued=0, retries=2, persistence_entries=0, keys={"a": 7})
    stats["pools"]["web"]["servers"]["a"].update(state="up", up=True, weight=1, effective_weight=1,
                                                 inflight=1, queued=0, failures=0, conns=2, idle_conns=1,
                                                 check={"ms": 1.5})
    families = {f.name: f for f in text_string_to_metric_families(exposition(stats).decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("l7switch_server_requests_total", (("code", "2xx"), ("pool", "web"), ("server", "a")))] == 9
    assert samples[("l7switch_server_requests_total", (("code", "5xx"), ("pool", "web"), ("server", "a")))] == 1
    assert samples[("l7switch_pool_cache_hit_ratio", (("pool", "web"),))] == 0.5
    assert samples[("l7switch_server_request_duration_seconds_count", (("pool", "web"), ("server", "a")))] == 10
    assert samples[("l7switch_server_request_duration_seconds_bucket",
                    (("le", "+Inf"), ("pool", "web"), ("server", "a")))] == 10
    assert samples[("l7switch_server_state", (("pool", "web"), ("server", "a"), ("state", "up")))] == 1
    assert samples[("l7switch_pool_keys", (("pool", "web"), ("server", "a")))] == 7
    assert samples[("l7switch_workers", ())] == 2
    assert families["l7switch_server_request_duration_seconds"].type == "histogram"
    assert len([s for s in families["l7switch_server_request_duration_seconds"].samples
                if s.name.endswith("_bucket")]) == len(BOUNDS) + 1


BASE = "listen: [{address: 127.0.0.1:0}]\npools: {web: {servers: [{address: 127.0.0.1:9}]}}\ndefault_pool: web\n"


def test_monitor_section_needs_tls_and_a_users_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + "monitor: {listen: 127.0.0.1:9443, users: none}\nmetrics: {listen: nowhere}\n",
                     str(tmp_path / "site.yaml"))
    text = [str(i) for i in e.value.issues]
    assert text[0].startswith(f"{tmp_path}/site.yaml:4:11: monitor: the monitor needs tls: {{cert: FILE, key: FILE}}")
    assert text[1] == (f"{tmp_path}/site.yaml:4:42: monitor.users: {tmp_path}/none: no such file; make it "
                       f"with: l7switch passwd {tmp_path}/none USER --role admin")
    assert text[2] == f"{tmp_path}/site.yaml:5:19: metrics.listen: expected host:port, found 'nowhere'"
    (tmp_path / "users").write_text(f"alice:admin:{hash_password('pw')}\n")
    cfg = parse_config(BASE + "monitor: {listen: 127.0.0.1:9443, users: users, insecure: true, session_timeout: 1h}\n"
                       "metrics: {listen: 127.0.0.1:9100}\n", str(tmp_path / "site.yaml"))
    assert cfg.monitor is not None and cfg.monitor.users == str(tmp_path / "users")
    assert cfg.monitor.session_timeout == 3600 and cfg.monitor.tls is None
    assert cfg.metrics is not None and (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9100)
    with pytest.raises(ConfigError, match="monitor: unknown key 'listne'; did you mean 'listen'"):
        parse_config(BASE + "monitor: {listne: x, listen: 127.0.0.1:1, users: users, insecure: true}\n",
                     str(tmp_path / "site.yaml"))
