"""``l7switch ctl`` against a running switch's admin socket (issue 11): show, drain / disable /
enable / set weight through the pools (kept across a reload unless the file changed that server),
reload and check, and the clear answers a mistake or an unreachable socket gets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from kit import Conn, PACKAGE_ROOT, get, wait_for

from l7switch.cli.ctl import call
from l7switch.config import load_config
from l7switch.runtime.reload import Reloader

ROOT = PACKAGE_ROOT  # subprocesses run the build under test (kit.py)


def ctl(sock: Path, *words: str, json_out: bool = False) -> tuple[int, str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "l7switch", "ctl", "--socket", str(sock), *(["--json"] if json_out else []), *words]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def _switch(tmp_path, origin_factory, switch_factory, lt, weight_o2: int = 1, sock: Path | None = None):
    o1, o2 = origin_factory("o1"), origin_factory("o2")
    sock = sock or tmp_path / "admin.sock"
    path = tmp_path / "site.yaml"

    def write(w2: int = weight_o2, extra_server: str = "") -> None:
        path.write_text("listen: [{address: 127.0.0.1:0}]\n"
                        f"pools:\n  web:\n    scheduler: wrr\n    servers:\n"
                        f"      - {{address: 127.0.0.1:{o1.port}, name: o1}}\n"
                        f"      - {{address: 127.0.0.1:{o2.port}, name: o2, weight: {w2}}}\n{extra_server}"
                        f"    persistence: {{source: {{timeout: 60s}}}}\n"
                        f"default_pool: web\nadmin: {{socket: {sock}}}\n")
    write()
    sw = switch_factory(load_config(str(path)))
    sw.reloader = Reloader(str(path), sw.apply)
    return sw, sock, write, o1, o2


def test_show_and_change_servers(lt, tmp_path, origin_factory, switch_factory):
    sw, sock, write, o1, o2 = _switch(tmp_path, origin_factory, switch_factory, lt)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"  # owner only
    code, out, err = ctl(sock, "show", "servers")
    assert code == 0, err
    assert out.splitlines()[0].split()[:4] == ["POOL", "SERVER", "ADDRESS", "STATE"]
    assert "web   o1" in out and "up" in out
    code, out, _ = ctl(sock, "show", "servers", "web", json_out=True)
    rows = json.loads(out)
    assert [r["server"] for r in rows] == ["o1", "o2"] and all(r["state"] == "up" for r in rows)

    assert ctl(sock, "drain", "web/o1")[0] == 0
    with Conn(sw.port) as c:
        for _ in range(4):
            c.send(get("/x"))
            assert c.response().header("x-server") == "o2"  # o1 drains: no new requests
    assert ctl(sock, "disable", "web/o2")[0] == 0
    code, out, _ = ctl(sock, "show", "servers", json_out=True)
    assert {r["server"]: r["state"] for r in json.loads(out)} == {"o1": "drain", "o2": "maint"}
    assert ctl(sock, "enable", "web/o1")[0] == 0
    assert ctl(sock, "enable", "web/o2")[0] == 0
    code, out, _ = ctl(sock, "set", "weight", "web/o2", "5", json_out=True)
    assert code == 0 and json.loads(out)["effective_weight"] == 5
    code, out, _ = ctl(sock, "set", "weight", "web/o2", "200%", json_out=True)
    assert json.loads(out)["weight"] == 2  # of the configured 1

    code, out, _ = ctl(sock, "show", "info", json_out=True)
    info = json.loads(out)
    assert info["pid"] == os.getpid() and info["workers"] == 1 and info["config"].endswith("site.yaml")
    code, out, _ = ctl(sock, "show", "pools")
    assert code == 0 and "wrr" in out


def test_runtime_changes_survive_a_reload_unless_the_file_changed_that_server(
        lt, tmp_path, origin_factory, switch_factory):
    sw, sock, write, o1, o2 = _switch(tmp_path, origin_factory, switch_factory, lt)
    ctl(sock, "drain", "web/o1")
    ctl(sock, "set", "weight", "web/o2", "7")
    code, out, err = ctl(sock, "reload", json_out=True)  # the same file
    assert code == 0, err
    code, out, _ = ctl(sock, "show", "servers", json_out=True)
    rows = {r["server"]: r for r in json.loads(out)}
    assert rows["o1"]["state"] == "drain" and rows["o2"]["weight"] == 7
    write(w2=3)  # the file now says something about o2: the file wins for it
    assert ctl(sock, "reload")[0] == 0
    rows = {r["server"]: r for r in json.loads(ctl(sock, "show", "servers", json_out=True)[1])}
    assert rows["o1"]["state"] == "drain" and rows["o2"]["weight"] == 3


def test_reload_and_check_report_a_broken_file(lt, tmp_path, origin_factory, switch_factory):
    sw, sock, write, o1, o2 = _switch(tmp_path, origin_factory, switch_factory, lt)
    path = tmp_path / "site.yaml"
    path.write_text(path.read_text().replace("scheduler: wrr", "scheduler: wrrr"))
    code, out, err = ctl(sock, "check")
    assert code == 1 and f"{path}:4:16: pools.web.scheduler: unknown scheduler 'wrrr'" in err, err
    code, out, err = ctl(sock, "reload")
    assert code == 1 and "reload refused" in err and f"{path}:4:16:" in err, err
    with Conn(sw.port) as c:  # still serving the old file
        c.send(get("/x"))
        assert c.response().status == 200


def test_persistence_table(lt, tmp_path, origin_factory, switch_factory):
    sw, sock, write, o1, o2 = _switch(tmp_path, origin_factory, switch_factory, lt)
    with Conn(sw.port) as c:
        c.send(get("/x"))
        server = c.response().header("x-server")
    rows = json.loads(ctl(sock, "show", "persistence", "web", json_out=True)[1])
    assert [(r["key"], r["server"]) for r in rows] == [("127.0.0.1", server)]
    assert json.loads(ctl(sock, "clear", "persistence", "web", json_out=True)[1]) == {"cleared": 1}
    assert json.loads(ctl(sock, "show", "persistence", "web", json_out=True)[1]) == []


def test_mistakes_get_a_clear_answer(lt, tmp_path, origin_factory, switch_factory):
    sw, sock, *_ = _switch(tmp_path, origin_factory, switch_factory, lt)
    code, _, err = ctl(sock, "show", "severs")
    assert code == 1 and "unknown command 'show severs'; did you mean 'show servers'?" in err
    code, _, err = ctl(sock, "drain", "web/o3")
    assert code == 1 and "unknown server 'o3' in pool 'web'" in err
    code, _, err = ctl(sock, "drain", "wbe/o1")
    assert code == 1 and "unknown pool 'wbe'; did you mean 'web'?" in err
    code, _, err = ctl(sock, "set", "weight", "web/o1", "heavy")
    assert code == 1 and "weight: expected a number" in err
    # garbage on the socket itself: an answer, and the switch keeps going
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"show servers\n")
        assert b'"ok": false' in s.recv(65536)
    assert ctl(sock, "show", "info")[0] == 0


def test_unreachable_socket(tmp_path):
    code, _, err = ctl(tmp_path / "none.sock", "show", "info")
    assert code == 1 and "no admin socket at" in err and "Traceback" not in err
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    code, _, err = ctl(stale, "show", "info")
    assert code == 1 and "nobody is listening" in err


def _call_as_nobody(sock: Path) -> str:
    """ctl's call() in a forked child that became nobody (the venv may not be readable by
    nobody, so no new interpreter): the line it would print, through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        message = "answered"
        try:
            os.setgid(65534)
            os.setuid(65534)
            call(str(sock), ["show", "info"])
        except SystemExit as exc:
            message = str(exc)
        except BaseException as exc:  # noqa: BLE001  (anything else is the failure to report)
            message = f"{type(exc).__name__}: {exc}"
        os.write(w, message.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode()
    os.waitpid(pid, 0)
    return err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run ctl as another user")
def test_a_socket_owned_by_someone_else(lt, tmp_path, origin_factory, switch_factory):
    """The socket is owner-only (0600) by default: another user's ctl is told whose it is, or
    which directory on the way is closed to it."""
    shared = Path(tempfile.mkdtemp(prefix="l7ctl-"))
    try:
        shared.chmod(0o755)
        sw, sock, *_ = _switch(tmp_path, origin_factory, switch_factory, lt, sock=shared / "admin.sock")
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        err = _call_as_nobody(sock)
        assert err.startswith("l7switch ctl: permission denied on") and "(root, mode 0600)" in err, err
        shared.chmod(0o700)
        err = _call_as_nobody(sock)
        assert f"its directory {shared} is closed to you: root, mode 0700" in err, err
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_second_switch_on_the_same_socket_refuses_to_start(lt, tmp_path, origin_factory, switch_factory):
    from l7switch.runtime.switch import ListenError, Switch

    sw, sock, *_ = _switch(tmp_path, origin_factory, switch_factory, lt)
    other = Switch(load_config(str(tmp_path / "site.yaml")))
    try:
        lt.run(other.start())
    except ListenError as exc:
        assert f"cannot open admin socket {sock}: another l7switch is using it" == str(exc)
    else:
        lt.run(other.stop(0.1))
        raise AssertionError("a second switch took the admin socket")
    assert wait_for(lambda: ctl(sock, "show", "info")[0] == 0, 3)  # the first still answers


def test_explain_live_says_whether_a_client_is_limited_now(lt, tmp_path, origin_factory, switch_factory):
    """explain --client ADDR --live asks the running switch's per-client table (issue 10's
    left-over): a client at its connection limit is told so."""
    o1 = origin_factory("o1")
    sock = tmp_path / "admin.sock"
    path = tmp_path / "site.yaml"
    path.write_text("listen: [{address: 127.0.0.1:0}]\n"
                    f"pools: {{web: {{servers: [127.0.0.1:{o1.port}]}}}}\ndefault_pool: web\n"
                    f"limits: {{per_client: {{connections: 2}}}}\nadmin: {{socket: {sock}}}\n")
    sw = switch_factory(load_config(str(path)))
    held = [Conn(sw.port) for _ in range(2)]
    try:
        assert wait_for(lambda: lt.call(lambda: len(sw.clients)) == 2, 3)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, "-m", "l7switch", "explain", str(path), "/x", "--client", "127.0.0.1",
                            "--live"], capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        assert "127.0.0.1: 2 connections open" in p.stdout
        assert "at its connection limit: new connections are closed" in p.stdout
        code, out, _ = ctl(sock, "show", "client", "10.9.8.7")
        assert code == 0 and "not in the table" in out
    finally:
        for c in held:
            c.close()


def test_add_and_remove_servers_at_run_time(lt, tmp_path, origin_factory, switch_factory):
    """add server: in service at once and kept across a reload of a file that does not name it;
    remove server: drained, then gone, and kept gone across reloads until the file changes that
    server."""
    sw, sock, write, o1, o2 = _switch(tmp_path, origin_factory, switch_factory, lt)
    o3 = origin_factory("o3")
    code, out, err = ctl(sock, "add", "server", "web", "o3", f"127.0.0.1:{o3.port}", "--weight", "10",
                         json_out=True)
    assert code == 0, err
    assert json.loads(out)["weight"] == 10

    def names() -> set[str]:
        return {r["server"] for r in json.loads(ctl(sock, "show", "servers", json_out=True)[1])}

    def reach(n: int = 24) -> dict[str, int]:
        seen: dict[str, int] = {}
        for _ in range(n):
            with Conn(sw.port) as c:  # (new connections from new ports: source persistence is per address,
                c.send(get("/x"))      # so clear it between requests)
                name = c.response().header("x-server")
            seen[name] = seen.get(name, 0) + 1
            ctl(sock, "clear", "persistence", "web")
        return seen
    assert names() == {"o1", "o2", "o3"}
    assert "o3" in reach(12)
    assert ctl(sock, "reload")[0] == 0
    assert names() == {"o1", "o2", "o3"}  # the file does not name o3: the addition stays
    code, out, err = ctl(sock, "remove", "server", "web/o1", json_out=True)
    assert code == 0 and json.loads(out)["state"] == "drain", err
    assert wait_for(lambda: names() == {"o2", "o3"}, 3)
    assert ctl(sock, "reload")[0] == 0
    assert names() == {"o2", "o3"}  # removed stays removed
    write(w2=1, extra_server=f"      - {{address: 127.0.0.1:{o3.port}, name: o3}}\n")
    assert ctl(sock, "reload")[0] == 0
    rows = {r["server"]: r for r in json.loads(ctl(sock, "show", "servers", json_out=True)[1])}
    assert set(rows) == {"o2", "o3"} and rows["o3"]["weight"] == 1  # the file names o3 now: the file wins
    code, _, err = ctl(sock, "add", "server", "web", "o2", "127.0.0.1:1")
    assert code == 1 and "taken" in err
    code, _, err = ctl(sock, "add", "server", "web", "o9", "nohost")
    assert code == 1 and "address: expected host:port" in err
