"""Self-protection on real sockets: the connection cap (listeners pause with the backlog kept,
and resume), per-client connection limits, the per-client request rate (429 + Retry-After),
trusted networks, TLS listeners under the cap, and tls-passthrough under a per-client limit.

Other addresses are other clients: sockets bound to 127.0.0.2 (all of 127.0.0.0/8 is loopback).
Every wait is bounded.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import pytest
from kit import Conn, TLSOrigin, get, wait_for
from test_passthrough import client_context, origin_context, passthrough_yaml
from test_tls import TLSConn, client_ctx, tls_config


class BoundConn(Conn):
    """A Conn from another client address."""

    def __init__(self, port: int, source: str, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.eof = False


def served(c: Conn, path: str = "/") -> int:
    c.send(get(path))
    return c.response().status


def lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def protection(sw) -> dict:
    return sw.snapshot()["protection"]


# ---- the connection cap --------------------------------------------------------------------------

def test_at_the_cap_new_connections_wait_in_the_backlog_and_are_served_after(proxy, caplog) -> None:
    caplog.set_level(logging.INFO, logger="l7switch")
    sw, _ = proxy("limits: {max_connections: 4}\n")
    first = [Conn(sw.port) for _ in range(4)]
    pending: list[Conn] = []
    try:
        assert all(served(c) == 200 for c in first)
        assert wait_for(lambda: not protection(sw)["accepting"])
        snap = protection(sw)
        assert snap["clients"] == 4 and snap["max_connections"] == 4
        # 20 more: the kernel completes their handshakes (backlog); the switch does not accept.
        pending = [Conn(sw.port, timeout=10) for _ in range(20)]
        for c in pending:
            c.send(get("/"))
        time.sleep(0.3)
        assert all(c.is_open(0.01) for c in pending)  # neither answered nor refused
        assert len(sw.clients) == 4
        assert lines(caplog, "connection cap reached") == 1  # one line, not one per connection
        assert lines(caplog, "connection cap cleared") == 0
        for c in first:
            c.close()
        # Each waiting connection is accepted and answered, none reset.
        for c in pending:
            resp = c.response()
            assert resp.status == 200
            c.close()
        assert wait_for(lambda: protection(sw)["accepting"] and not sw.clients)
        assert lines(caplog, "connection cap cleared") == lines(caplog, "connection cap reached") >= 1
    finally:
        for c in first + pending:
            c.close()


def test_the_cap_counts_connections_not_requests(proxy) -> None:
    """Five requests on one connection are one connection. A second one takes the switch to 80%
    of the cap, so the idle keep-alive connection is closed first (oldest idle first) to make
    room, and accepting goes on."""
    sw, _ = proxy("limits: {max_connections: 2}\n")
    with Conn(sw.port) as a:
        for _ in range(5):
            assert served(a) == 200
        with Conn(sw.port) as b:
            assert served(b) == 200
            assert a.read_to_close(limit=3) == b""  # a, idle, made room (silently)
            assert wait_for(lambda: protection(sw)["clients"] == 1)
        assert wait_for(lambda: protection(sw)["accepting"])
        with Conn(sw.port) as c:
            assert served(c) == 200


def test_default_cap_is_derived_from_the_fd_limit(proxy) -> None:
    import resource

    from l7switch.runtime.switch import FD_RESERVE
    sw, _ = proxy()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = protection(sw)["max_connections"]
    assert cap == max((nofile - FD_RESERVE - 64) // 2, nofile // 4, 1)  # one server, max_idle 64
    assert protection(sw)["accepting"] is True


def test_a_tls_listener_waits_at_the_cap_too(pki, origin_factory, switch_factory) -> None:
    oa, ob = origin_factory("oa"), origin_factory("ob")
    sw = switch_factory(tls_config(pki, oa.port, ob.port, extra="limits: {max_connections: 2}\n"))
    port = sw.addresses[1][1]
    ctx = client_ctx(pki)
    first = [TLSConn(port, ctx) for _ in range(2)]
    done: dict[str, object] = {}

    def late() -> None:
        try:
            with TLSConn(port, ctx, timeout=10) as c:  # its handshake waits for the accept
                done["status"] = served(c)
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            done["error"] = exc

    t = threading.Thread(target=late)
    try:
        assert all(served(c) == 200 for c in first)
        assert wait_for(lambda: not protection(sw)["accepting"])
        t.start()
        time.sleep(0.4)
        assert done == {} and len(sw.clients) == 2  # not accepted yet, not refused
        first[0].close()
        t.join(10)
        assert done == {"status": 200}
    finally:
        for c in first:
            c.close()
        t.join(10)


# ---- per-client limits ---------------------------------------------------------------------------

def test_per_client_connection_limit_closes_the_next_at_once(proxy, caplog) -> None:
    caplog.set_level(logging.INFO, logger="l7switch")
    sw, _ = proxy("limits: {per_client: {connections: 2}}\n")
    a, b = Conn(sw.port), Conn(sw.port)
    try:
        assert served(a) == 200 and served(b) == 200
        refused = []
        for _ in range(5):
            c = Conn(sw.port)
            c.send(get("/"))
            refused.append(c.is_closed(2.0) and not c.buf)  # closed, not a byte answered
            c.close()
        assert refused == [True] * 5
        # Another address is another client.
        with BoundConn(sw.port, "127.0.0.2") as other, BoundConn(sw.port, "127.0.0.2") as other2:
            assert served(other) == 200 and served(other2) == 200
        assert served(a) == 200  # the first two are untouched
        per = protection(sw)["per_client"]
        assert per["refused_connections"] == 5
        assert per["top"][0]["client"] == "127.0.0.1" and per["top"][0]["refused"] == 5
        assert 1 <= lines(caplog, "per-client limit: connection from 127.0.0.1 closed") <= 2  # paced
        b.close()
        assert wait_for(lambda: len(sw.clients) == 1)
        with Conn(sw.port) as c:
            assert served(c) == 200  # room again
    finally:
        a.close()
        b.close()


def test_per_client_rate_gives_429_with_retry_after_and_keeps_the_connection(proxy) -> None:
    sw, _ = proxy("limits: {per_client: {requests_per_second: 1, burst: 2}}\n")
    with Conn(sw.port) as c:
        # Pipelined: answered in order, the third refused without closing.
        c.send(get("/") * 3)
        got = [c.response() for _ in range(3)]
        assert [r.status for r in got] == [200, 200, 429]
        assert got[2].header("retry-after") == "1"
        assert got[2].header("connection") is None
        assert b"Too Many Requests" in got[2].body
        # Other clients are unaffected.
        with BoundConn(sw.port, "127.0.0.2") as other:
            assert [served(other) for _ in range(2)] == [200, 200]
        time.sleep(1.05)
        assert served(c) == 200  # a token again, on the same connection
    assert protection(sw)["per_client"]["limited_requests"] == 1


def test_a_limited_request_with_a_body_is_answered_then_closed(proxy) -> None:
    sw, _ = proxy("limits: {per_client: {requests_per_second: 1, burst: 1}}\n")
    with Conn(sw.port) as c:
        assert served(c) == 200
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")  # body not yet sent
        r = c.response()
        assert r.status == 429 and r.header("connection") == "close"
        assert c.is_closed()


def test_trusted_networks_are_exempt(proxy) -> None:
    sw, _ = proxy("limits: {per_client: {connections: 1, requests_per_second: 1, burst: 1, "
                  "trusted: [127.0.0.2/32]}}\n")
    trusted = [BoundConn(sw.port, "127.0.0.2") for _ in range(3)]
    try:
        assert [served(t) for t in trusted for _ in range(3)] == [200] * 9
        with Conn(sw.port) as a, Conn(sw.port) as b:
            assert served(a) == 200
            b.send(get("/"))
            assert b.is_closed() and not b.buf  # loopback is not trusted by default
            assert served(a) == 429
        assert "127.0.0.2" not in {e["client"] for e in protection(sw)["per_client"]["top"]}
    finally:
        for t in trusted:
            t.close()


def test_passthrough_respects_the_per_client_connection_limit(lt, switch_factory) -> None:
    o = TLSOrigin("api", origin_context())
    lt.run(o.start())
    try:
        _passthrough_limit(o, switch_factory)
    finally:
        lt.run(o.stop(), timeout=10)


def _passthrough_limit(o: TLSOrigin, switch_factory) -> None:
    sw = switch_factory(passthrough_yaml({"p": [o.port]}, default_pool="p",
                                         extra="limits: {per_client: {connections: 1}}\n"))
    ctx = client_context()
    held = ctx.wrap_socket(socket.create_connection(("127.0.0.1", sw.port), timeout=5),
                           server_hostname="api.example.test")
    try:
        # The second from the same address: closed before its hello is read.
        raw = socket.create_connection(("127.0.0.1", sw.port), timeout=5)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(raw, server_hostname="api.example.test")
        raw.close()
        # Another address: tunnelled as usual.
        raw2 = socket.create_connection(("127.0.0.1", sw.port), timeout=5, source_address=("127.0.0.2", 0))
        with ctx.wrap_socket(raw2, server_hostname="api.example.test") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
        assert protection(sw)["per_client"]["refused_connections"] == 1
    finally:
        held.close()


def test_out_of_fds_on_resume_pauses_briefly_and_retries(proxy, lt, caplog) -> None:
    import errno

    from l7switch.runtime import listeners
    caplog.set_level(logging.INFO, logger="l7switch")
    sw, _ = proxy("limits: {max_connections: 1}\n")
    accept = sw.accept
    real = accept._serve
    failures = [0]

    async def emfile_twice(lst):
        if failures[0] < 2:
            failures[0] += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await real(lst)

    a = Conn(sw.port)
    try:
        assert served(a) == 200
        assert wait_for(lambda: not protection(sw)["accepting"])
        accept._serve = emfile_twice  # the dup() of the resume fails twice
        a.close()
        t0 = time.monotonic()
        with Conn(sw.port, timeout=5) as b:  # waits in the backlog through both retries
            assert served(b) == 200
        assert failures[0] == 2 and time.monotonic() - t0 >= 2 * listeners.RETRY * 0.9
        assert lines(caplog, "out of file descriptors") == 1  # at most one line a second
    finally:
        accept._serve = real
        a.close()


def test_a_storm_of_new_connections_is_paced_and_all_answered(proxy, lt) -> None:
    """300 connections whose first requests arrive together: some wait for a later loop turn
    (state.FirstBytes), none is lost, and a keep-alive client's next request is not held up."""
    import socket as socket_mod

    from l7switch.proxy.state import FIRST_PER_TURN
    sw, _ = proxy()
    with Conn(sw.port) as keep:
        assert served(keep) == 200
        socks = [socket_mod.create_connection(("127.0.0.1", sw.port)) for _ in range(300)]
        try:
            assert wait_for(lambda: protection(sw)["clients"] >= 301, timeout=5)
            for i, s in enumerate(socks):
                s.sendall(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            assert served(keep) == 200
            for i, s in enumerate(socks):
                s.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(65536)
                    assert chunk, f"connection {i} closed"
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200"), (i, data[:60])
        finally:
            for s in socks:
                s.close()
    assert FIRST_PER_TURN < 300
