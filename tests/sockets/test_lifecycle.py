"""`l7switch run` as a real process: serves, and on SIGTERM stops accepting but finishes
the request in flight before exiting 0."""

from __future__ import annotations

import gc
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import Conn, LoopThread, connect, get, read_response, wait_for

from l7switch.devtools.origin import OriginServer, standard_handler


@pytest.fixture
def origin_port() -> Iterator[int]:
    lt = LoopThread()
    origin = OriginServer(standard_handler("o1"))
    lt.run(origin.start())
    try:
        yield origin.port
    finally:
        lt.run(origin.stop())
        lt.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"l7switch exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("l7switch did not start listening")


def test_sigterm_finishes_in_flight_request_then_exits(tmp_path: Path, origin_port: int) -> None:
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"listen: [{{address: 127.0.0.1:{port}}}]\n"
                     f"pools: {{web: {{servers: [127.0.0.1:{origin_port}]}}}}\n"
                     "default_pool: web\n")
    proc = subprocess.Popen([sys.executable, "-m", "l7switch", "run", "-c", str(rules)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, proc)
        s = connect(port)
        s.sendall(b"GET /delay/700 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)  # the request is now in flight at the origin
        proc.send_signal(signal.SIGTERM)
        status, headers, body = read_response(s)
        assert status == 200 and body.startswith(b"o1")
        assert headers.get("connection") == "close"  # draining: no more requests on it
        s.close()
        assert proc.wait(10) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_every_listener_serves_and_stop_closes_them_all(origin_port: int) -> None:
    from l7switch.config import parse_config
    from l7switch.runtime.switch import Switch

    lt = LoopThread()
    try:
        sw = Switch(parse_config(
            "listen: [{address: 127.0.0.1:0}, {address: '127.0.0.2:0'}]\n"
            f"pools: {{web: {{servers: [127.0.0.1:{origin_port}]}}}}\ndefault_pool: web\n"))
        lt.run(sw.start())
        assert len(sw.addresses) == 2
        for host, port in sw.addresses:
            s = connect(port, host=host)
            s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_response(s)[0] == 200
            s.close()
        lt.run(sw.stop(grace=1))
        for host, port in sw.addresses:
            with pytest.raises(OSError):
                socket.create_connection((host, port), timeout=0.5)
    finally:
        lt.close()


# ---- (f) reference cycles ---------------------------------------------------------------------

CYCLE_TYPES = frozenset({"ClientConnection", "UpstreamConnection", "Exchange",
                         "HttpRequestParser", "HttpResponseParser"})


def _is_origin_parser(obj: object) -> bool:
    """The test origin (l7switch/origin.py) has its own protocol <-> parser cycle; not ours.
    (A parser refers to its protocol through the bound callback methods it holds.)"""
    return any(type(r).__name__ == "_OriginProtocol"
               or type(getattr(r, "__self__", None)).__name__ == "_OriginProtocol"
               for r in gc.get_referents(obj))


def test_closed_connections_need_no_cyclic_gc(lt, proxy):
    """(f) Client and upstream connections must be freed by reference counting once closed.

    Old code: ClientConnection <-> HttpRequestParser and UpstreamConnection <-> HttpResponseParser
    (and the Exchanges they hold) stay in reference cycles that only the cyclic GC frees, so with
    the GC disabled they show up as unreachable garbage under DEBUG_SAVEALL.
    """
    was_enabled = gc.isenabled()
    old_flags = gc.get_debug()
    gc.collect()
    # Objects of these types alive before the test are not ours: keep them reachable.
    preexisting = [o for o in gc.get_objects() if type(o).__name__ in CYCLE_TYPES]
    gc.disable()
    try:
        sw, o = proxy("upstream: {idle_timeout: 0.2s}\n")
        for i in range(3):
            with Conn(sw.port) as c:
                for j in range(3):
                    c.send(get(f"/echo?c={i}&r={j}"))
                    assert c.response().status == 200
                c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
                assert c.response().status == 200
        with Conn(sw.port) as c:
            c.send(get("/bytes/100", extra="Connection: close\r\n"))
            assert c.response().status == 200
            assert c.is_closed()

        def quiet() -> bool:
            snap = lt.call(sw.snapshot)
            idle = sum(p["idle"] for p in snap["connection_pools"].values())
            return snap["clients"] == 0 and idle == 0
        assert wait_for(quiet, timeout=3.0), lt.call(sw.snapshot)
        time.sleep(0.3)  # let connection_lost callbacks run on the loop thread

        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [g for g in gc.garbage if type(g).__name__ in CYCLE_TYPES
                  and not (type(g).__name__ == "HttpRequestParser" and _is_origin_parser(g))]
        counts = Counter(type(g).__name__ for g in leaked)
        del leaked
        assert not counts, f"objects only the cyclic GC can free: {dict(counts)}"
    finally:
        gc.set_debug(old_flags)
        gc.garbage.clear()
        del preexisting
        if was_enabled:
            gc.enable()
        gc.collect()
