"""`l7switch run` as a real process: serves, and on SIGTERM stops accepting but finishes
the request in flight before exiting 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from l7switch.devtools.origin import OriginServer, standard_handler
from helpers import LoopThread, connect, read_response


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
