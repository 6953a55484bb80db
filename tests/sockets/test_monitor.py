"""The monitor and /metrics on real sockets (issue 12): login over HTTPS with its cookie flags,
the live state and the admin actions through the JSON API, CSRF, roles, every kind of bad input
the issue names, the brake on failed logins, and /metrics parsed by prometheus-client."""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import ssl
from urllib.parse import urlencode

import pytest
from kit import wait_for
from prometheus_client.parser import text_string_to_metric_families

from l7switch.config.users import set_user
from l7switch.devtools.origin import OriginResponse


class Client:
    """A browser's worth of HTTP for tests: one connection at a time, cookies kept by name."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None = None, source: str = "127.0.0.1") -> None:
        self.port, self.ctx, self.source = port, ctx, source
        self.cookies: dict[str, str] = {}
        self.set_cookie: list[str] = []

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        if self.ctx is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "localhost", self.port, context=self.ctx, timeout=10, source_address=(self.source, 0))
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(self.source, 0))
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        self.set_cookie = r.headers.get_all("Set-Cookie") or []
        for line in self.set_cookie:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        conn.close()
        return r.status, {k.lower(): v for k, v in r.headers.items()}, data

    def login(self, user: str, password: str) -> int:
        status, _, page = self.request("GET", "/login")
        assert status == 200, page
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
        status, _, _ = self.request("POST", "/login", urlencode({"user": user, "password": password,
                                                                  "csrf": csrf}).encode(),
                                    {"Content-Type": "application/x-www-form-urlencoded"})
        return status

    def csrf(self) -> str:
        status, _, page = self.request("GET", "/")
        assert status == 200
        return re.search(rb'<meta name="csrf" content="([^"]+)">', page).group(1).decode()  # type: ignore[union-attr]

    def state(self) -> dict:
        status, _, body = self.request("GET", "/api/state")
        assert status == 200, body
        return json.loads(body)

    def act(self, payload: dict, token: str | None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["X-CSRF-Token"] = token
        status, _, body = self.request("POST", "/api/action", json.dumps(payload).encode(), headers)
        return status, json.loads(body)


def _cache_origin(name: str):
    """An origin that says whether its (imaginary) cache hit: /hit and /miss."""
    async def handler(req):
        hit = req.path.startswith("/hit")
        return OriginResponse(200, [("X-Server", name), ("X-Cache", "HIT" if hit else "MISS")], b"ok")
    return handler


@pytest.fixture
def monitored(tmp_path, pki, origin_factory, switch_factory):
    """``monitored(tls=True, extra="")`` -> (switch, monitor port, metrics port, TLS client context)."""
    set_user(str(tmp_path / "users"), "alice", "admin", "alice-pass")
    set_user(str(tmp_path / "users"), "bob", "viewer", "bob-pass")

    def make(tls: bool = True, extra: str = ""):
        o1, o2 = origin_factory("o1", _cache_origin("o1")), origin_factory("o2", _cache_origin("o2"))
        d = pki[1]
        mon_tls = f"tls: {{cert: {d}/site.pem, key: {d}/site.key}}" if tls else "insecure: true"
        sw = switch_factory(
            "listen: [{address: 127.0.0.1:0}]\n"
            f"pools:\n  web:\n    scheduler: lblc\n    servers:\n"
            f"      - {{address: 127.0.0.1:{o1.port}, name: o1}}\n      - {{address: 127.0.0.1:{o2.port}, name: o2}}\n"
            "default_pool: web\n"
            f"monitor: {{listen: 127.0.0.1:0, users: {tmp_path}/users, {mon_tls}}}\n"
            "metrics: {listen: 127.0.0.1:0}\n" + extra)
        ctx = ssl.create_default_context()
        pki[0].configure_trust(ctx)
        obs = sw.observers
        assert obs.monitor is not None and obs.metrics is not None
        return sw, obs.monitor.port, obs.metrics.port, ctx if tls else None
    return make


def _traffic(port: int, paths: list[str]) -> None:
    for p in paths:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass


def test_login_state_actions_and_logout_over_https(lt, monitored):
    sw, port, _, ctx = monitored()
    c = Client(port, ctx)
    status, headers, _ = c.request("GET", "/")
    assert status == 303 and headers["location"] == "/login"  # not logged in
    assert c.login("alice", "wrong") == 401
    assert c.login("nobody", "alice-pass") == 401
    assert c.login("alice", "alice-pass") == 303
    session = next(line for line in c.set_cookie if line.startswith("l7s_session="))
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Max-Age=28800", "Path=/"):
        assert flag in session, session
    _traffic(sw.port, ["/hit/1", "/hit/2", "/miss/3"] * 4)
    assert wait_for(lambda: c.state()["stats"] and sum(
        s["traffic"]["requests"] for s in c.state()["stats"]["pools"]["web"]["servers"].values()) == 12, 5)
    st = c.state()
    assert st["user"] == "alice" and st["role"] == "admin"
    servers = st["stats"]["pools"]["web"]["servers"]
    assert set(servers) == {"o1", "o2"} and all(s["state"] == "up" for s in servers.values())
    assert sum(s["traffic"]["hits"] for s in servers.values()) == 8
    assert st["stats"]["pools"]["web"]["scheduler"] == "lblc (load placement)"
    assert sum(st["stats"]["pools"]["web"]["keys"].values()) == 3  # the key table, by server
    token = c.csrf()
    assert c.act({"action": "drain", "server": "web/o1"}, None)[0] == 403  # no CSRF token
    assert c.act({"action": "drain", "server": "web/o1"}, "forged")[0] == 403
    status, reply = c.act({"action": "drain", "server": "web/o1"}, token)
    assert status == 200 and reply["ok"], reply
    assert sw.state.current.pools["web"].servers[0].state == "drain"  # what ctl show servers reads
    assert c.state()["stats"]["pools"]["web"]["servers"]["o1"]["state"] == "drain"
    status, reply = c.act({"action": "weight", "server": "web/o2", "weight": "3"}, token)
    assert status == 200 and sw.state.current.pools["web"].servers[1].base_weight == 3
    status, reply = c.act({"action": "enable", "server": "web/o9"}, token)
    assert status == 400 and "unknown server 'o9'" in reply["error"]
    assert c.act({"action": "enable", "server": "web/o1"}, token)[0] == 200
    status, _, _ = c.request("POST", "/logout", urlencode({"csrf": token}).encode(),
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and "l7s_session" not in c.cookies
    c.cookies["l7s_session"] = session.split(";")[0].split("=", 1)[1]  # the old cookie, replayed
    assert c.request("GET", "/api/state")[0] == 401


def test_a_viewer_sees_and_cannot_act(lt, monitored):
    sw, port, _, ctx = monitored()
    c = Client(port, ctx)
    assert c.login("bob", "bob-pass") == 303
    assert c.state()["role"] == "viewer"
    status, reply = c.act({"action": "disable", "server": "web/o1"}, c.csrf())
    assert status == 403 and "viewer" in reply["error"]
    assert sw.state.current.pools["web"].servers[0].state == "up"


def test_bad_input_gets_a_clear_answer(lt, monitored):
    sw, port, _, ctx = monitored()
    c = Client(port, ctx)
    status, _, page = c.request("GET", "/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    huge = urlencode({"user": "alice", "password": "x" * 1_000_000, "csrf": csrf}).encode()
    assert c.request("POST", "/login", huge, form)[0] == 400  # a 1 MB password
    assert c.request("POST", "/login", json.dumps({"user": "alice"}).encode(),
                     {"Content-Type": "application/json"})[0] == 400  # wrong content type
    assert c.request("POST", "/login", b"user=alice", form)[0] == 400  # missing fields
    assert c.request("POST", "/login", b"\xff\xfe=\x00", form)[0] == 400
    assert c.request("POST", "/login", urlencode({"user": "alice", "password": "alice-pass",
                                                  "csrf": "forged"}).encode(), form)[0] == 403
    assert c.request("POST", "/login", b"x" * (3 * 1024 * 1024), form)[0] == 413  # beyond any form
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/index.html",
                 "/static/", "/../../etc/passwd", "/static/monitor.css/../../sessions.py"):
        assert c.request("GET", path)[0] == 404, path
    assert c.request("GET", "/static/monitor.js")[0] == 200
    assert c.request("DELETE", "/login")[0] == 405
    assert c.login("alice", "alice-pass") == 303
    token = c.csrf()
    assert c.act({"action": "explode", "server": "web/o1"}, token)[0] == 400
    assert c.request("POST", "/api/action", b"not json", {"Content-Type": "application/json",
                                                          "X-CSRF-Token": token})[0] == 400
    assert c.request("POST", "/api/action", b"{}", {"Content-Type": "text/plain", "X-CSRF-Token": token})[0] == 400


def test_a_silent_or_slow_connection_is_bounded_by_the_header_timeout(lt, monitored):
    sw, port, metrics_port, _ = monitored(tls=False, extra="timeouts: {header: 1s}\n")
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
    assert idle.recv(100) == b""  # closed without a word
    reply = slow.recv(1000)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    idle.close()
    slow.close()
    c = Client(port)
    assert c.request("GET", "/login")[0] == 200  # serving others meanwhile


def test_fifty_failed_logins_are_slowed_and_logged_and_others_are_served(lt, monitored, caplog):
    sw, port, _, ctx = monitored(tls=False)
    monitor = sw.observers.monitor
    monitor.throttle.max_delay = 0.05  # the test's patience; the default holds up to 30 s
    caplog.set_level(logging.WARNING, logger="l7switch")
    attacker = Client(port, None, source="127.0.0.2")
    statuses = [attacker.login("alice", f"guess-{i}") for i in range(50)]
    assert set(statuses) <= {401, 429} and statuses.count(401) >= 45
    assert monitor.throttle.failures("127.0.0.2") == statuses.count(401)
    lines = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert len(lines) == statuses.count(401) and "held 0.05s" in lines[-1], lines[-1]
    user = Client(port, None, source="127.0.0.3")
    assert user.login("bob", "bob-pass") == 303 and user.state()["user"] == "bob"


def test_metrics_parse_with_prometheus_client_and_follow_the_traffic(lt, monitored):
    sw, _, metrics_port, _ = monitored(tls=False)
    _traffic(sw.port, ["/hit/a", "/miss/b", "/hit/c", "/nope"])
    c = Client(metrics_port)
    status, headers, body = c.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = [s for f in families.values() for s in f.samples]

    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
    assert total("l7switch_server_requests_total", pool="web", code="2xx") == 4
    assert total("l7switch_listener_requests_total", code="2xx") == 4
    assert total("l7switch_listener_connections_total") == 4
    assert total("l7switch_server_request_duration_seconds_count", pool="web") == 4
    assert total("l7switch_server_cache_hits_total") == 2 and total("l7switch_server_cache_misses_total") == 2
    assert total("l7switch_pool_cache_hit_ratio", pool="web") == 0.5
    assert total("l7switch_server_up", pool="web") == 2
    assert total("l7switch_pool_keys", pool="web") == 4
    assert c.request("GET", "/")[0] == 404 and c.request("POST", "/metrics")[0] == 405


def test_a_reload_keeps_sessions_moves_the_monitor_or_is_refused_whole(lt, tmp_path, monitored):
    from l7switch.config import parse_config
    from l7switch.runtime.switch import ListenError

    sw, port, metrics_port, _ = monitored(tls=False)
    c = Client(port)
    assert c.login("alice", "alice-pass") == 303
    lt.run(sw.apply(sw.file_config))  # the same file again: same socket, same sessions
    assert sw.observers.monitor.port == port and c.state()["user"] == "alice"

    def config(monitor_port: int, metrics: bool = True):
        return parse_config(
            "listen: [{address: 127.0.0.1:0}]\npools: {web: {servers: [{address: 127.0.0.1:9, name: o1}]}}\n"
            f"default_pool: web\nmonitor: {{listen: 127.0.0.1:{monitor_port}, users: {tmp_path}/users, "
            "insecure: true}\n" + ("metrics: {listen: 127.0.0.1:0}\n" if metrics else ""), "<test>")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with pytest.raises(ListenError, match="cannot open the monitor or metrics listener: address already in use"):
        lt.run(sw.apply(config(busy.getsockname()[1])))
    busy.close()
    assert sw.observers.monitor.port == port and "web" in sw.state.current.pools  # nothing changed
    assert c.state()["user"] == "alice"
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    new_port = free.getsockname()[1]
    free.close()
    lt.run(sw.apply(config(new_port, metrics=False)))  # moved: the login goes with it
    assert sw.observers.monitor.port == new_port and sw.observers.metrics is None
    c.port = new_port
    assert c.state()["user"] == "alice"
    assert wait_for(lambda: _refused(port), 5)
    bare = parse_config("listen: [{address: 127.0.0.1:0}]\npools: {web: {servers: [127.0.0.1:9]}}\n"
                        "default_pool: web\n", "<test>")
    lt.run(sw.apply(bare))
    assert sw.observers.monitor is None and wait_for(lambda: _refused(new_port), 5)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False
