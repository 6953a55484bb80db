"""Hot reload (issue 11): the rule file read again and applied whole or not at all, under
traffic, without a failed request; what is kept (server state, warm connections, listeners,
keep-alive clients) and what a broken file gets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from kit import Conn, get, wait_for

from l7switch.config import load_config
from l7switch.runtime.reload import Reloader


def _write(path, origins: dict[str, int], default: str, extra: str = "", listen: str = "127.0.0.1:0",
           more_listeners: str = "") -> None:
    servers = ", ".join(f"{{address: 127.0.0.1:{port}, name: {name}}}" for name, port in origins.items())
    path.write_text(f"listen:\n  - {{address: {listen}}}\n{more_listeners}"
                    f"pools:\n  web: {{servers: [{servers}]}}\n"
                    f"  other: {{servers: [127.0.0.1:{origins[default]}]}}\n"
                    f"default_pool: web\n{extra}")


def _setup(tmp_path, origin_factory, switch_factory, lt, **kw):
    o1, o2 = origin_factory("o1"), origin_factory("o2")
    path = tmp_path / "site.yaml"
    _write(path, {"o1": o1.port}, "o1", **kw)
    sw = switch_factory(load_config(str(path)))
    return path, sw, o1, o2, Reloader(str(path), sw.apply)


def test_reload_under_traffic_fails_nothing_and_switches_servers(lt, origin_factory, switch_factory, tmp_path):
    """Four keep-alive clients send requests back to back while the file alternates between
    two pools' worth of servers, ten reloads: no request fails, no client connection closes,
    and the requests after the last reload reach the server it names."""
    path, sw, o1, o2, reloader = _setup(tmp_path, origin_factory, switch_factory, lt)
    stop = threading.Event()
    failures: list[str] = []
    served: dict[str, int] = {}
    conns_opened = [0]

    def client() -> None:
        c = Conn(sw.port, timeout=5)
        conns_opened[0] += 1
        try:
            while not stop.is_set():
                c.send(get("/bytes/100"))
                r = c.response()
                if r.status != 200:
                    failures.append(f"{r.status} {r.body[:80]!r}")
                served[r.header("x-server")] = served.get(r.header("x-server"), 0) + 1
        except Exception as exc:  # noqa: BLE001 - a test records any failure
            failures.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            time.sleep(0.05)
            _write(path, {"o2": o2.port} if i % 2 == 0 else {"o1": o1.port}, "o2" if i % 2 == 0 else "o1")
            result = lt.run(reloader.reload())
            assert result.ok, result.errors
        _write(path, {"o2": o2.port}, "o2")
        assert lt.run(reloader.reload()).ok
        time.sleep(0.1)  # (the requests in flight at the reload finish on the old servers)
        before = dict(served)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not failures, failures[:5]
    assert conns_opened[0] == 4  # the keep-alive connections lived through every reload
    assert served.get("o2", 0) > before.get("o2", 0) and served.get("o1", 0) == before.get("o1", 0)
    assert reloader.count == 11


def test_broken_file_keeps_the_old_configuration(lt, origin_factory, switch_factory, tmp_path, caplog):
    path, sw, o1, o2, reloader = _setup(tmp_path, origin_factory, switch_factory, lt)
    path.write_text(path.read_text().replace("default_pool: web", "default_pool: wbe"))
    result = lt.run(reloader.reload())
    assert not result.ok
    assert result.errors == [f"{path}:6:15: default_pool: unknown pool 'wbe'; did you mean 'web'?"] or \
        any(f"{path}:6:" in e and "did you mean 'web'" in e for e in result.errors), result.errors
    assert any("reload refused" in r.getMessage() for r in caplog.records)
    with Conn(sw.port) as c:
        c.send(get("/x"))
        r = c.response()
        assert r.status == 200 and r.header("x-server") == "o1"
    assert reloader.failed == 1 and reloader.count == 0


def test_server_state_and_warm_connections_carry_over(lt, origin_factory, switch_factory, tmp_path):
    """A server kept by the new file (same pool, name, address) keeps its admin state and its
    idle keep-alive connection; a server the file drops has its idle connection closed."""
    o1, o2, o3 = origin_factory("o1"), origin_factory("o2"), origin_factory("o3")
    path = tmp_path / "site.yaml"
    _write(path, {"o1": o1.port, "o3": o3.port}, "o1")
    sw = switch_factory(load_config(str(path)))
    reloader = Reloader(str(path), sw.apply)
    with Conn(sw.port) as c:
        for _ in range(4):  # rr over o1 and o3: each gets a pooled connection
            c.send(get("/x"))
            assert c.response().status == 200
    assert wait_for(lambda: len(o1._conns) == 1 and len(o3._conns) == 1, 2)
    o1_conn = next(iter(o1._conns))
    pool = sw.pools["web"]
    lt.call(pool.set_admin, next(s for s in pool.servers if s.name == "o3"), "drain")
    # o3 kept (drained), o1 dropped, o2 added
    _write(path, {"o3": o3.port, "o2": o2.port}, "o2")
    assert lt.run(reloader.reload()).ok
    new_pool = sw.pools["web"]
    assert new_pool is not pool
    states = {s.name: s.state for s in new_pool.servers}
    assert states == {"o3": "drain", "o2": "up"}
    assert wait_for(lambda: len(o1._conns) == 0, 2), "the dropped server's idle connection stays open"
    with Conn(sw.port) as c:
        c.send(get("/x"))
        assert c.response().header("x-server") == "o2"  # o3 drains: no new requests
    assert o1_conn not in o1._conns
    assert len(o3._conns) == 1  # kept, still warm (reused if o3 is enabled again)
    lt.call(new_pool.set_admin, next(s for s in new_pool.servers if s.name == "o3"), "ready")
    o3_conn = next(iter(o3._conns))
    with Conn(sw.port) as c:
        for _ in range(2):
            c.send(get("/x"))
            c.response()
    assert next(iter(o3._conns)) is o3_conn and len(o3._conns) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_listeners_added_removed_and_kept(lt, origin_factory, switch_factory, tmp_path):
    o1 = origin_factory("o1")
    path = tmp_path / "site.yaml"
    main_port, extra_port = _free_port(), _free_port()
    _write(path, {"o1": o1.port}, "o1", listen=f"127.0.0.1:{main_port}")
    sw = switch_factory(load_config(str(path)))
    reloader = Reloader(str(path), sw.apply)
    kept = Conn(main_port)
    kept.send(get("/a"))
    assert kept.response().status == 200
    _write(path, {"o1": o1.port}, "o1", listen=f"127.0.0.1:{main_port}",
           more_listeners=f"  - {{address: 127.0.0.1:{extra_port}}}\n")
    result = lt.run(reloader.reload())
    assert result.ok and result.changes["opened"] == [f"127.0.0.1:{extra_port}"]
    with Conn(extra_port) as c:
        c.send(get("/b"))
        assert c.response().status == 200
    _write(path, {"o1": o1.port}, "o1", listen=f"127.0.0.1:{main_port}")
    result = lt.run(reloader.reload())
    assert result.ok and result.changes["closed"] == [f"127.0.0.1:{extra_port}"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", extra_port), timeout=2).close()
    kept.send(get("/c"))  # the connection accepted before both reloads is still served
    assert kept.response().status == 200
    kept.close()


def test_listener_that_cannot_open_refuses_the_whole_reload(lt, origin_factory, switch_factory, tmp_path):
    o1, o2 = origin_factory("o1"), origin_factory("o2")
    path = tmp_path / "site.yaml"
    _write(path, {"o1": o1.port}, "o1")
    sw = switch_factory(load_config(str(path)))
    reloader = Reloader(str(path), sw.apply)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    _write(path, {"o2": o2.port}, "o2", more_listeners=f"  - {{address: 127.0.0.1:{busy}}}\n")
    try:
        result = lt.run(reloader.reload())
    finally:
        taken.close()
    assert not result.ok and "address already in use" in result.errors[0]
    with Conn(sw.port) as c:  # nothing of the new file applied: still o1
        c.send(get("/x"))
        assert c.response().header("x-server") == "o1"


def test_reload_storm_is_coalesced(lt, origin_factory, switch_factory, tmp_path):
    """Ten SIGHUPs: those before the reload has read the file are one reload; those while it
    runs are one more after it — never ten, never two at once."""
    path, sw, o1, o2, _ = _setup(tmp_path, origin_factory, switch_factory, lt)
    loads: list[float] = []

    def slow_load(p: str):
        loads.append(time.monotonic())
        time.sleep(0.2)
        return load_config(p)
    reloader = Reloader(str(path), sw.apply, load=slow_load)

    async def storm(gap: float) -> None:
        for i in range(10):
            reloader.request()
            if i == 0 and gap:
                await asyncio.sleep(gap)
        while reloader.running is not None:
            await asyncio.sleep(0.01)
    lt.run(storm(0.0))
    assert reloader.count == 1
    lt.run(storm(0.05))  # nine arrive while the first reads the file
    assert reloader.count == 3 and reloader.failed == 0
    assert loads[2] - loads[1] >= 0.2  # one after the other, never overlapping


def test_a_file_whose_own_tests_fail_is_refused(lt, origin_factory, switch_factory, tmp_path):
    path, sw, o1, o2, reloader = _setup(tmp_path, origin_factory, switch_factory, lt)
    _write(path, {"o2": o2.port}, "o2",
           extra="rules:\n  - {name: small, match: {path_prefix: /small/}, pool: other}\n"
                 "tests:\n  - {url: /small/x, pool: web}\n")
    result = lt.run(reloader.reload())
    assert not result.ok
    assert result.errors == [f"{path}:10:5: test 1: GET /small/x went to pool other by rule 'small' (line 8); "
                             "expected pool web"]
    with Conn(sw.port) as c:
        c.send(get("/small/x"))
        assert c.response().header("x-server") == "o1"  # the old file, whole


def test_hard_stop_after_cuts_what_is_left_on_the_old_configuration(lt, origin_factory, switch_factory,
                                                                    tmp_path):
    """A request still on the replaced configuration hard_stop_after the reload is cut; a
    keep-alive client between requests is not, and new requests are served."""
    path, sw, o1, o2, reloader = _setup(tmp_path, origin_factory, switch_factory, lt,
                                        extra="hard_stop_after: 300ms\n")
    idle = Conn(sw.port)
    idle.send(get("/x"))
    assert idle.response().status == 200
    slow = Conn(sw.port, timeout=5)
    slow.send(get("/delay/3000"))
    time.sleep(0.1)
    _write(path, {"o2": o2.port}, "o2", extra="hard_stop_after: 300ms\n")
    t0 = time.monotonic()
    assert lt.run(reloader.reload()).ok
    assert slow.is_closed(wait=2.0) and time.monotonic() - t0 < 1.5
    idle.send(get("/x"))  # between requests at the cut: kept, and now on the new file
    assert idle.response().header("x-server") == "o2"
    idle.close()
    slow.close()
