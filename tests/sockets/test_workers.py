"""``workers: N`` (issue 11): a master and N workers on SO_REUSEPORT sockets steered by client
address — persistence holds across workers, a dead worker is replaced in its slot, the master's
SIGTERM/SIGHUP reach every worker, and a master that dies takes its workers with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kit import PACKAGE_ROOT, wait_for

from l7switch.runtime.workers import merge, steering_program
from test_passthrough import tls_origin  # noqa: F401  (the fixture)

ROOT = PACKAGE_ROOT  # subprocesses run the build under test (kit.py)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _get(port: int, source: str = "127.0.0.1", path: str = "/x") -> str:
    """One request on a new connection from ``source``; the answering origin's name."""
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 200"), head
    return next(ln.split(b":", 1)[1].strip().decode() for ln in head.split(b"\r\n")
                if ln.lower().startswith(b"x-server:"))


def ctl(sock: Path, *words: str) -> dict | list:
    p = subprocess.run([sys.executable, "-m", "l7switch", "ctl", "--socket", str(sock), "--json", *words],
                       capture_output=True, text=True, timeout=30, env=_env(), cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _spawn(rules: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "l7switch", "run", str(rules)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


@pytest.fixture
def master(tmp_path, origin_factory, free_port):
    """``master(extra="")`` -> (process, port, admin socket, rule file, origins)."""
    started: list[subprocess.Popen] = []

    def start(extra: str = "", workers: int = 2, scheduler: str = "wlc",
              persistence: str = "{source: {timeout: 60s}}"):
        origins = [origin_factory(f"o{i}") for i in range(3)]
        sock = tmp_path / "admin.sock"
        rules = tmp_path / "site.yaml"
        servers = "".join(f"      - {{address: 127.0.0.1:{o.port}, name: o{i}}}\n" for i, o in enumerate(origins))
        rules.write_text(f"listen: [{{address: 127.0.0.1:{free_port}}}]\npools:\n  web:\n    servers:\n{servers}"
                         f"    scheduler: {scheduler}\n" + (f"    persistence: {persistence}\n" if persistence else "") +
                         "default_pool: web\n"
                         f"admin: {{socket: {sock}}}\nworkers: {workers}\nhard_stop_after: 2s\n{extra}")
        p = _spawn(rules)
        started.append(p)

        def ready() -> bool:
            if p.poll() is not None:
                return True
            try:
                return len([x for x in ctl(sock, "show", "info")["worker_pids"] if x]) == workers and \
                    _get(free_port) is not None
            except (AssertionError, OSError, ValueError):
                return False
        assert wait_for(ready, 15, step=0.1) and p.poll() is None, p.stderr.read() if p.poll() is not None else ""
        return p, free_port, sock, rules, origins
    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_each_client_stays_on_its_server_across_workers(master):
    """6 client addresses x 100 new connections each, source persistence, 2 workers: every client
    always reaches one server (its connections always reach one worker, whose table it is in)."""
    p, port, sock, *_ = master()
    seen: dict[str, set[str]] = {}
    for i in range(2, 8):
        src = f"127.0.0.{i}"
        seen[src] = {_get(port, src) for _ in range(100)}
    assert all(len(servers) == 1 for servers in seen.values()), seen
    rows = ctl(sock, "show", "servers")
    assert sum(r["total"] for r in rows) >= 600  # the workers' counters, summed by the master
    per_worker = [sum(r["total"] for r in ctl(Path(f"{sock}.w{w}"), "show", "servers")) for w in (0, 1)]
    assert all(n >= 100 for n in per_worker), per_worker  # the clients are spread over both
    info = ctl(sock, "show", "info")
    assert info["workers"] == 2 and len(info["worker_pids"]) == 2


def test_a_killed_worker_is_replaced_and_the_others_serve_on(master):
    p, port, sock, *_ = master()
    pids = ctl(sock, "show", "info")["worker_pids"]
    stop = threading.Event()
    errors: list[str] = []
    done = [0]

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                _get(port, f"127.0.1.{i % 50 + 1}")
                done[0] += 1
            except (OSError, AssertionError) as exc:
                errors.append(repr(exc))
            i += 1
    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.3)
        os.kill(pids[0], signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_for(lambda: ctl(sock, "show", "info")["worker_restarts"] == 1
                        and all(ctl(sock, "show", "info")["worker_pids"]), 5, step=0.05)
        replaced_in = time.monotonic() - t0
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(10)
    new_pids = ctl(sock, "show", "info")["worker_pids"]
    assert new_pids[1] == pids[1] and new_pids[0] != pids[0]
    assert replaced_in < 2.0
    # Only what the dead worker had in flight may fail (one request at a time here).
    assert len(errors) <= 1, errors
    assert done[0] > 20


def test_sighup_reloads_every_worker_and_a_broken_file_changes_nothing(master):
    p, port, sock, rules, origins = master()
    text = rules.read_text()
    rules.write_text(text.replace("default_pool: web\n", "rules:\n  - {match: {path_prefix: /only/}, pool: one}\n"
                                  "default_pool: web\n").replace(
        "pools:\n", f"pools:\n  one: {{servers: [{{address: 127.0.0.1:{origins[2].port}, name: o2}}]}}\n"))
    p.send_signal(signal.SIGHUP)
    assert wait_for(lambda: all(_get(port, f"127.0.0.{i}", "/only/x") == "o2" for i in range(2, 8)), 5, step=0.1)
    rules.write_text(rules.read_text().replace("default_pool: web", "default_pool: wbe"))
    p.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert all(_get(port, f"127.0.0.{i}", "/only/x") == "o2" for i in range(2, 8))
    assert ctl(sock, "show", "info")["reloads_refused"] == 1


def test_sigterm_stops_all_and_a_dead_master_takes_its_workers(master):
    p, port, sock, *_ = master()
    pids = ctl(sock, "show", "info")["worker_pids"]
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert wait_for(lambda: not any(_alive(x) for x in pids), 5)
    # and SIGKILL to a master: its workers stop by themselves (PR_SET_PDEATHSIG)
    p2, port2, sock2, *_ = master()
    pids2 = ctl(sock2, "show", "info")["worker_pids"]
    p2.kill()
    p2.wait(5)
    assert wait_for(lambda: not any(_alive(x) for x in pids2), 10), "workers outlived their master"


def test_steering_program_and_merge() -> None:
    prog = steering_program(4, ipv6=False)
    assert len(prog) == 24  # three 8-byte instructions
    merged = merge([[{"pool": "p", "server": "a", "total": 2, "inflight": 1, "state": "up"}],
                    [{"pool": "p", "server": "a", "total": 3, "inflight": 0, "state": "up"}]])
    assert merged == [{"pool": "p", "server": "a", "total": 5, "inflight": 1, "state": "up"}]


def test_connection_steering_spreads_one_address_over_the_workers(master):
    """worker_steering: connection — the kernel's 4-tuple hash: one client address (a load
    balancer in front, or a benchmark) still uses every worker."""
    p, port, sock, *_ = master(extra="worker_steering: connection\n")
    for _ in range(40):
        _get(port)
    per_worker = [sum(r["total"] for r in ctl(Path(f"{sock}.w{w}"), "show", "servers")) for w in (0, 1)]
    assert all(n > 0 for n in per_worker) and sum(per_worker) >= 40, per_worker


def test_locality_keys_get_one_server_in_every_worker(master):
    """lblc with 2 workers places keys by rendezvous hash (placement: auto), so a path meets
    the same server whichever worker its client lands on, even while the workers' loads differ.
    Here 12 slow requests for one key from 127.0.0.2 load one server in worker 0 only (the
    steering takes the address modulo 2); then 30 paths are asked from 127.0.0.2 and 127.0.0.3,
    one per worker. By least load (IPVS's placement) worker 0 would avoid the loaded server
    and worker 1 would not, and a third of the paths would have a server in each."""
    p, port, sock, _rules, origins = master(scheduler="lblc", persistence="")
    rows = ctl(Path(f"{sock}.w0"), "show", "pools")
    assert rows[0]["scheduler"] == "lblc (hash placement)", rows  # type: ignore[index]
    assert ctl(sock, "show", "pools")[0]["scheduler"] == "lblc (hash placement)"  # type: ignore[index]
    slow = [threading.Thread(target=_get, args=(port, "127.0.0.2", "/delay/2500"), daemon=True)
            for _ in range(12)]
    for t in slow:
        t.start()
    assert wait_for(lambda: sum(r["inflight"] for r in ctl(Path(f"{sock}.w0"), "show", "servers")) == 12, 5)
    seen: dict[str, set[str]] = {}
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"):
        for i in range(30):
            seen.setdefault(f"/k{i}", set()).add(_get(port, source, f"/k{i}"))
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len({n for names in seen.values() for n in names}) == 3
    per_worker = [sum(r["total"] for r in ctl(Path(f"{sock}.w{w}"), "show", "servers")) for w in (0, 1)]
    assert per_worker[0] >= 60 and per_worker[1] >= 60, per_worker
    for t in slow:
        t.join(5)


def test_checks_run_once_in_the_master_and_every_worker_agrees(tmp_path, origin_factory, free_port):
    """One probe per server and interval whatever the number of workers (the master probes and
    sends the results); a dead server is down in every worker."""
    alive = origin_factory("alive")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: checks are refused
    sock = tmp_path / "admin.sock"
    rules = tmp_path / "site.yaml"
    rules.write_text(f"listen: [{{address: 127.0.0.1:{free_port}}}]\npools:\n  web:\n"
                     f"    health: {{interval: 200ms, timeout: 100ms, rise: 1, fall: 1, http: {{path: /health}}}}\n"
                     f"    servers:\n      - {{address: 127.0.0.1:{alive.port}, name: alive}}\n"
                     f"      - {{address: 127.0.0.1:{dead_port}, name: dead}}\n"
                     f"default_pool: web\nadmin: {{socket: {sock}}}\nworkers: 3\n")
    p = _spawn(rules)
    try:
        def states(w: int) -> dict[str, str]:
            return {r["server"]: r["state"] for r in ctl(Path(f"{sock}.w{w}"), "show", "servers")}
        assert wait_for(lambda: all(os.path.exists(f"{sock}.w{w}") for w in range(3)), 15, step=0.1)
        assert wait_for(lambda: all(states(w) == {"alive": "up", "dead": "down"} for w in range(3)), 10, step=0.1)
        before, t0 = alive.requests, time.monotonic()
        time.sleep(1.0)
        probes = (alive.requests - before) / (time.monotonic() - t0) * 0.2  # per interval
        assert 0.5 <= probes <= 1.6, probes  # one prober, not three
        assert all(_get(free_port, f"127.0.0.{i}") == "alive" for i in range(2, 8))
    finally:
        _stop(p)


def test_ssl_session_resumption_returns_to_the_issuing_server_with_workers(tmp_path, tls_origin, free_port):  # noqa: F811
    """tls-passthrough with ssl_session persistence and 2 workers: a resumed session goes back
    to the server that issued it (its client's connections reach one worker, whose table has it)."""
    from test_passthrough import client_context, fetch, passthrough_yaml

    a, b = tls_origin("a", tls12_no_tickets=True), tls_origin("b", tls12_no_tickets=True)
    sock = tmp_path / "admin.sock"
    rules = tmp_path / "pt.yaml"
    rules.write_text(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p",
                                      pool_extra={"p": "persistence: {ssl_session: {timeout: 300s}}"},
                                      extra=f"admin: {{socket: {sock}}}\nworkers: 2\n")
                     .replace("127.0.0.1:0", f"127.0.0.1:{free_port}"))
    p = _spawn(rules)
    try:
        assert wait_for(lambda: all(os.path.exists(f"{sock}.w{w}") for w in range(2)), 15, step=0.1), \
            p.stderr.read() if p.poll() is not None else ""
        ctx = client_context()
        first, session, reused = fetch(free_port, "api.example.test", ctx=ctx)
        assert not reused and session is not None
        for _ in range(6):  # round robin alone would alternate
            again, _, reused = fetch(free_port, "api.example.test", session, ctx)
            assert again == first and reused
    finally:
        _stop(p)


def test_reload_that_adds_and_removes_a_listener_replaces_the_workers(master):
    """With workers, a listener added or removed: new sockets first, new workers on them, the
    old workers finish and go; the unchanged listener never stops answering."""
    p, port, sock, rules, origins = master()
    with socket.socket() as probe:  # another free port
        probe.bind(("127.0.0.1", 0))
        extra_port = probe.getsockname()[1]
    text = rules.read_text()
    old_pids = ctl(sock, "show", "info")["worker_pids"]
    rules.write_text(text.replace(f"listen: [{{address: 127.0.0.1:{port}}}]",
                                  f"listen: [{{address: 127.0.0.1:{port}}}, {{address: 127.0.0.1:{extra_port}}}]"))
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                _get(port, "127.0.0.9")
            except (OSError, AssertionError) as exc:
                errors.append(f"{time.time():.3f} {exc!r}")
    t = threading.Thread(target=load)
    t.start()
    try:
        result = ctl(sock, "reload")
        assert result["opened"] == [f"127.0.0.1:{extra_port}"]
        assert wait_for(lambda: _get(extra_port) in {"o0", "o1", "o2"}, 5, step=0.1)
        assert wait_for(lambda: not any(_alive(x) for x in old_pids), 10)
        rules.write_text(text)  # and the extra listener removed again
        assert ctl(sock, "reload")["closed"] == [f"127.0.0.1:{extra_port}"]
        assert wait_for(lambda: _refused(extra_port), 5, step=0.1)
    finally:
        stop.set()
        t.join(10)
    if errors:
        p.send_signal(signal.SIGTERM)
        print(p.communicate(timeout=10)[1][-6000:])
    assert not errors, errors[:3]
    info = ctl(sock, "show", "info")
    assert info["reloads"] == 2 and all(info["worker_pids"])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_the_master_serves_the_monitor_and_metrics_for_all_workers(tmp_path, master):
    """With workers the master runs the monitor and /metrics and adds every worker's counters up:
    40 requests spread by the kernel over 2 workers are 40 in /metrics and on the monitor."""
    from prometheus_client.parser import text_string_to_metric_families
    from test_monitor import Client

    from l7switch.config.users import set_user

    set_user(str(tmp_path / "users"), "alice", "admin", "alice-pass")
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    p, port, sock, *_ = master(extra=f"worker_steering: connection\nmonitor: {{listen: 127.0.0.1:{ports[0]}, "
                                     f"users: {tmp_path}/users, insecure: true}}\n"
                                     f"metrics: {{listen: 127.0.0.1:{ports[1]}}}\n")
    for _ in range(40):
        _get(port)
    per_worker = [sum(r["total"] for r in ctl(Path(f"{sock}.w{w}"), "show", "servers")) for w in (0, 1)]
    assert all(n > 0 for n in per_worker), per_worker  # both workers served some
    status, _, body = Client(ports[1]).request("GET", "/metrics")
    assert status == 200
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    served = sum(s.value for s in samples if s.name == "l7switch_server_requests_total" and s.labels["code"] == "2xx")
    assert served >= 40 and [s.value for s in samples if s.name == "l7switch_workers"] == [2]
    c = Client(ports[0])
    assert c.login("alice", "alice-pass") == 303
    assert wait_for(lambda: c.state()["stats"].get("workers") == 2, 5)
    servers = c.state()["stats"]["pools"]["web"]["servers"]
    assert sum(s["traffic"]["requests"] for s in servers.values()) >= 40
    status, reply = c.act({"action": "drain", "server": "web/o0"}, c.csrf())
    assert status == 200, reply
    assert all(r["state"] == "drain" for w in (0, 1)
               for r in ctl(Path(f"{sock}.w{w}"), "show", "servers") if r["server"] == "o0")
