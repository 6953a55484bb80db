"""tls-passthrough end to end: real TLS origins (Python ssl, certificates from trustme) behind a
switch that routes on the ClientHello and relays the encrypted bytes untouched."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import time

import pytest
import trustme
from kit import TLSOrigin, connect, recv_until_close

from l7switch.net import tunnel
from l7switch.runtime.switch import Switch

NAMES = ["api.example.test", "*.example.test", "example.test", "other.test"]
CA = trustme.CA()
CERT = CA.issue_cert(*NAMES)


# ---- TLS origins ---------------------------------------------------------------------------------

def origin_context(tls12_no_tickets: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    CERT.configure_cert(ctx)
    if tls12_no_tickets:
        # Resumption by session ID only: no TLS 1.3 PSKs, no RFC 5077 tickets.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


@pytest.fixture
def tls_origin(lt):
    started: list[TLSOrigin] = []

    def make(name: str, tls12_no_tickets: bool = False) -> TLSOrigin:
        o = TLSOrigin(name, origin_context(tls12_no_tickets))
        lt.run(o.start())
        started.append(o)
        return o

    yield make
    for o in started:
        lt.run(o.stop(), timeout=10)


@pytest.fixture
def pt_switch(switch_factory):
    """``pt_switch(yaml)`` -> a started Switch (conftest's switch_factory)."""
    return switch_factory


def passthrough_yaml(pools: dict[str, list[int]], sni: dict[str, str] | None = None,
                     default_pool: str | None = None, pool_extra: dict[str, str] | None = None,
                     extra: str = "") -> str:
    lines = ["listen:", "  - address: 127.0.0.1:0", "    mode: tls-passthrough"]
    if sni:
        lines.append("    sni: {" + ", ".join(f'"{k}": {v}' for k, v in sni.items()) + "}")
    if default_pool:
        lines.append(f"    default_pool: {default_pool}")
    lines.append("pools:")
    for name, ports in pools.items():
        servers = ", ".join(f"{{address: 127.0.0.1:{p}, name: s{p}}}" for p in ports)
        more = (pool_extra or {}).get(name, "")
        lines.append(f"  {name}: {{servers: [{servers}]{', ' + more if more else ''}}}")
    return "\n".join(lines) + "\n" + extra


# ---- clients -------------------------------------------------------------------------------------

def client_context(max_tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    CA.configure_trust(ctx)
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def fetch(port: int, sni: str | None, session: ssl.SSLSession | None = None,
          ctx: ssl.SSLContext | None = None, body: bytes | None = None
          ) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """One HTTPS request through the switch: (response body, session, session_reused)."""
    ctx = ctx or client_context()
    if sni is None:
        ctx.check_hostname = False  # nothing to check a certificate against
    raw = connect(port)
    raw.settimeout(10)
    with ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
        if body is None:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        data = read_http(s)
        reused, sess = s.session_reused, s.session
        s.unwrap()  # close_notify both ways: the session stays resumable
    return data, sess, reused


def read_http(s: ssl.SSLSocket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before the response head: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                 .split(b":")[1])
    while len(body) < length:
        chunk = s.recv(1 << 20)
        assert chunk
        body += chunk
    return body


def refused(port: int, sni: str | None, ctx: ssl.SSLContext | None = None) -> bool:
    """The switch closed (or alerted) instead of passing the handshake through."""
    ctx = ctx or client_context()
    if sni is None:
        ctx.check_hostname = False
    raw = connect(port)
    raw.settimeout(5)
    try:
        with ctx.wrap_socket(raw, server_hostname=sni):
            return False
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        raw.close()


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def settle(sw: Switch) -> None:
    """Every tunnel closed and every in-flight count back to 0."""
    wait_for(lambda: not sw.clients and all(
        s.inflight == 0 and s.conns == 0 for p in sw.pools.values() for s in p.servers))


# ---- routing -------------------------------------------------------------------------------------

def test_sni_routing(tls_origin, pt_switch) -> None:
    api, wild, web = tls_origin("api"), tls_origin("wild"), tls_origin("web")
    sw = pt_switch(passthrough_yaml({"api": [api.port], "wild": [wild.port], "web": [web.port]},
                                    {"api.example.test": "api", "*.example.test": "wild"}, "web"))
    assert fetch(sw.port, "api.example.test")[0] == b"api"
    assert fetch(sw.port, "API.Example.Test")[0] == b"api"  # SNI is case-insensitive
    assert fetch(sw.port, "img.example.test")[0] == b"wild"
    assert fetch(sw.port, "a.b.example.test", ctx=_no_verify())[0] == b"wild"
    assert fetch(sw.port, "example.test")[0] == b"web"  # the apex is not *.example.test
    assert fetch(sw.port, "other.test")[0] == b"web"
    assert fetch(sw.port, None)[0] == b"web"
    # The origin saw the client's own SNI: the switch relays the hello untouched.
    assert api.sni == ["api.example.test", "API.Example.Test"]
    settle(sw)
    assert sw.pools["api"].servers[0].total == 2


def _no_verify() -> ssl.SSLContext:
    ctx = client_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_unknown_sni_without_default_is_closed(tls_origin, pt_switch) -> None:
    api = tls_origin("api")
    sw = pt_switch(passthrough_yaml({"api": [api.port]}, {"api.example.test": "api"}))
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        ctx = client_context()
        raw = connect(sw.port)
        with ctx.wrap_socket(raw, server_hostname="other.test"):
            pass
    assert refused(sw.port, None)  # no SNI, no default: closed as well
    assert fetch(sw.port, "api.example.test")[0] == b"api"  # and the switch keeps serving
    assert api.handshakes == 1
    settle(sw)


def test_no_server_up_is_closed(tls_origin, pt_switch) -> None:
    api = tls_origin("api")
    sw = pt_switch(passthrough_yaml({"api": [api.port]}, default_pool="api"))
    sw.pools["api"].mark_down(sw.pools["api"].servers[0])
    assert refused(sw.port, "api.example.test")
    settle(sw)


def test_refused_connect_is_redispatched(tls_origin, pt_switch, free_port) -> None:
    api = tls_origin("api")
    sw = pt_switch(passthrough_yaml({"api": [free_port, api.port]}, default_pool="api"))
    for _ in range(4):
        assert fetch(sw.port, "api.example.test")[0] == b"api"
    dead = sw.pools["api"].servers[0]
    # The redispatch's own pick moves rr's cursor on to the live server, so every connection's
    # first pick is the dead one again.
    assert dead.failures == 4
    settle(sw)


def test_all_refusing_is_closed(pt_switch, free_port) -> None:
    sw = pt_switch(passthrough_yaml({"api": [free_port]}, default_pool="api"))
    assert refused(sw.port, "api.example.test")
    settle(sw)


# ---- ssl_session persistence ---------------------------------------------------------------------

SSL_SESSION = "persistence: {ssl_session: {timeout: 300s}}"


def test_session_resumption_returns_to_issuing_server(tls_origin, pt_switch) -> None:
    a, b = tls_origin("a", tls12_no_tickets=True), tls_origin("b", tls12_no_tickets=True)
    sw = pt_switch(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p",
                                    pool_extra={"p": SSL_SESSION}))
    ctx = client_context()  # a session resumes only through the context that made it
    first, session, reused = fetch(sw.port, "api.example.test", ctx=ctx)
    assert not reused and session is not None and len(session.id) == 32
    table = sw.tables.table("ssl_session:p")
    wait_for(lambda: table.get(session.id.hex()) is not None)
    assert table.get(session.id.hex()) == f"s{(a if first == b'a' else b).port}"
    for _ in range(6):  # rr alone would alternate a, b, a, ...
        again, session2, reused = fetch(sw.port, "api.example.test", session, ctx)
        assert again == first and reused
        assert session2.id == session.id
    # A new client (no session) still goes round robin.
    assert {fetch(sw.port, "api.example.test")[0] for _ in range(2)} == {b"a", b"b"}
    settle(sw)


def test_without_persistence_resumption_goes_elsewhere(tls_origin, pt_switch) -> None:
    a, b = tls_origin("a", tls12_no_tickets=True), tls_origin("b", tls12_no_tickets=True)
    sw = pt_switch(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p"))
    ctx = client_context()
    first, session, _ = fetch(sw.port, "api.example.test", ctx=ctx)
    second, _, reused = fetch(sw.port, "api.example.test", session, ctx)
    assert second != first and not reused  # the other server cannot resume it: full handshake
    settle(sw)


def test_unknown_session_is_scheduled_normally(tls_origin, pt_switch) -> None:
    a, b = tls_origin("a", tls12_no_tickets=True), tls_origin("b", tls12_no_tickets=True)
    yaml_text = passthrough_yaml({"p": [a.port, b.port]}, default_pool="p", pool_extra={"p": SSL_SESSION})
    sw = pt_switch(yaml_text)
    ctx = client_context()
    first, session, _ = fetch(sw.port, "api.example.test", ctx=ctx)
    table = sw.tables.table("ssl_session:p")
    wait_for(lambda: len(table) == 1)
    table.delete(session.id.hex())
    second, _, reused = fetch(sw.port, "api.example.test", session, ctx)
    assert second != first and not reused  # rr's next pick; that server issues a new session
    assert len(table) == 1  # ... which is learnt
    # A session learnt by another switch (this one never saw it) is balanced as well: the other
    # switch's second connection gets its session from b; here rr's next pick is a, which
    # cannot resume it.
    other = pt_switch(yaml_text)
    fetch(other.port, "api.example.test", ctx=ctx)
    issuer, foreign, _ = fetch(other.port, "api.example.test", ctx=ctx)
    assert issuer == b"b"
    third, _, reused = fetch(sw.port, "api.example.test", foreign, ctx)
    assert third == b"a" and not reused
    settle(sw)


def test_sticky_server_down_goes_elsewhere(tls_origin, pt_switch) -> None:
    a, b = tls_origin("a", tls12_no_tickets=True), tls_origin("b", tls12_no_tickets=True)
    sw = pt_switch(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p", pool_extra={"p": SSL_SESSION}))
    ctx = client_context()
    first, session, _ = fetch(sw.port, "api.example.test", ctx=ctx)
    pool = sw.pools["p"]
    wait_for(lambda: len(sw.tables.table("ssl_session:p")) == 1)
    sticky = next(s for s in pool.servers if f"s{(a if first == b'a' else b).port}" == s.name)
    pool.mark_down(sticky)
    second, _, reused = fetch(sw.port, "api.example.test", session, ctx)
    assert second != first and not reused
    settle(sw)


def test_sticky_server_down_without_redispatch_is_closed(tls_origin, pt_switch) -> None:
    a, b = tls_origin("a", tls12_no_tickets=True), tls_origin("b", tls12_no_tickets=True)
    sw = pt_switch(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p",
                                    pool_extra={"p": "persistence: {ssl_session: {redispatch: false}}"}))
    ctx = client_context()
    first, session, _ = fetch(sw.port, "api.example.test", ctx=ctx)
    wait_for(lambda: len(sw.tables.table("ssl_session:p")) == 1)
    pool = sw.pools["p"]
    pool.mark_down(next(s for s in pool.servers if s.name == f"s{(a if first == b'a' else b).port}"))
    raw = connect(sw.port)
    raw.settimeout(5)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with ctx.wrap_socket(raw, server_hostname="api.example.test", session=session):
            pass
    raw.close()
    assert fetch(sw.port, "api.example.test", ctx=ctx)[0] != first  # new sessions go elsewhere
    settle(sw)


def test_quiesced_sticky_server_keeps_its_sessions(tls_origin, pt_switch) -> None:
    a, b = tls_origin("a", tls12_no_tickets=True), tls_origin("b", tls12_no_tickets=True)
    sw = pt_switch(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p", pool_extra={"p": SSL_SESSION}))
    ctx = client_context()
    first, session, _ = fetch(sw.port, "api.example.test", ctx=ctx)
    wait_for(lambda: len(sw.tables.table("ssl_session:p")) == 1)
    pool = sw.pools["p"]
    pool.set_weight(next(s for s in pool.servers if s.name == f"s{(a if first == b'a' else b).port}"), 0)
    for _ in range(2):
        assert fetch(sw.port, "api.example.test", session, ctx)[:3:2] == (first, True)
        assert fetch(sw.port, "api.example.test", ctx=ctx)[0] != first  # no new sessions for it
    settle(sw)


def test_tls13_stores_nothing(tls_origin, pt_switch) -> None:
    """TLS 1.3's legacy_session_id is a random echo (RFC 8446 §4.1.3): nothing to learn."""
    a, b = tls_origin("a"), tls_origin("b")
    sw = pt_switch(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p", pool_extra={"p": SSL_SESSION}))
    for _ in range(3):
        fetch(sw.port, "api.example.test")
    settle(sw)
    assert len(sw.tables.table("ssl_session:p")) == 0


# ---- hello edge cases ----------------------------------------------------------------------------

def test_fragmented_client_hello_routes(tls_origin, pt_switch) -> None:
    api, web = tls_origin("api"), tls_origin("web")
    sw = pt_switch(passthrough_yaml({"api": [api.port], "web": [web.port]},
                                    {"api.example.test": "api"}, "web"))
    sock = connect(sw.port)
    sock.settimeout(10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="api.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    for i in range(len(hello)):  # one TCP segment per byte (TCP_NODELAY)
        sock.sendall(hello[i:i + 1])
        if i % 50 == 0:
            time.sleep(0.001)
    response = _drive(sock, obj, incoming, outgoing, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.endswith(b"\r\n\r\napi")
    sock.close()


def _drive(sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
           request: bytes) -> bytes:
    """Finish a MemoryBIO handshake over a blocking socket, send ``request``, read to close."""
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
    obj.write(request)
    sock.sendall(outgoing.read())
    out = b""
    while b"\r\n\r\n" not in out or not out.endswith((b"api", b"web")):
        try:
            out += obj.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            assert data
            incoming.write(data)
    return out


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    bytes(range(256)),
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello sent by a client
    b"\x16\x03\x01\x48\x01" + b"x" * 64,  # a record over 2^14 + 2048
], ids=["http", "garbage", "server-hello", "huge-record"])
def test_malformed_hello_is_closed(tls_origin, pt_switch, junk: bytes) -> None:
    web = tls_origin("web")
    sw = pt_switch(passthrough_yaml({"web": [web.port]}, default_pool="web"))
    s = connect(sw.port)
    s.sendall(junk)
    got = recv_until_close(s, 5)
    s.close()
    # At most a fatal alert (content type 21), never an HTTP answer, never a byte from a server.
    assert got == b"" or got[:1] == b"\x15", got
    if junk.startswith(b"GET"):
        assert got == b""  # an HTTP client could not read a TLS alert anyway
    assert web.handshakes == 0
    assert fetch(sw.port, "www.example.test")[0] == b"web"  # the switch keeps serving
    settle(sw)


def test_slow_hello_is_closed_after_header_timeout(tls_origin, pt_switch) -> None:
    web = tls_origin("web")
    sw = pt_switch(passthrough_yaml({"web": [web.port]}, default_pool="web",
                                    extra="timeouts: {header: 0.3s}\n"))
    idle, partial = connect(sw.port), connect(sw.port)
    partial.sendall(b"\x16\x03\x01\x02\x00\x01")  # a hello that never finishes
    t0 = time.monotonic()
    assert recv_until_close(idle, 5) == b""
    assert recv_until_close(partial, 5) == b""
    assert time.monotonic() - t0 < 2.0
    idle.close()
    partial.close()
    assert web.handshakes == 0
    settle(sw)


# ---- the tunnel ----------------------------------------------------------------------------------

@pytest.mark.parametrize("splice,persist", [(True, False), (False, False), (True, True), (False, True)],
                         ids=["splice", "python", "splice-after-serverhello", "python-after-serverhello"])
def test_large_transfer_intact(tls_origin, pt_switch, monkeypatch, splice: bool, persist: bool) -> None:
    moved: list[int] = []

    class CountingJob(tunnel.SpliceJob):
        __slots__ = ()

        def __init__(self, loop, src, dst, nbytes, on_done) -> None:
            def done(n: int, error: BaseException | None) -> None:
                moved.append(n)
                on_done(n, error)
            super().__init__(loop, src, dst, nbytes, done)

    monkeypatch.setattr(tunnel, "SpliceJob", CountingJob)
    web = tls_origin("web", tls12_no_tickets=persist)
    sw = pt_switch(passthrough_yaml({"web": [web.port]}, default_pool="web",
                                    pool_extra={"web": SSL_SESSION} if persist else None,
                                    extra=f"splice: {{enabled: {str(splice).lower()}}}\n"))
    body = os.urandom(6 * 1024 * 1024)
    echoed, _, _ = fetch(sw.port, "www.example.test", body=body)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(body).digest()
    if persist:
        assert len(sw.tables.table("ssl_session:web")) == 1
    settle(sw)
    if splice:  # both directions crossed by splice(2), not through Python
        assert len(moved) == 2 and min(moved) > len(body)
    else:
        assert moved == []


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "python"])
def test_half_close_is_passed_on(pt_switch, raw_origin, splice: bool) -> None:
    """EOF from the client reaches the server as EOF, and the server's answer still comes back."""
    async def count_then_answer(reader, writer) -> None:
        data = await reader.read(-1)  # until EOF
        writer.write(b"got %d" % len(data))
        await writer.drain()

    ro = raw_origin(count_then_answer)
    sw = pt_switch(passthrough_yaml({"p": [ro.port]}, default_pool="p",
                                    extra=f"splice: {{enabled: {str(splice).lower()}}}\n"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="api.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    s = connect(sw.port)
    s.sendall(hello)
    time.sleep(0.1)  # routed and connected: what follows goes through the tunnel proper
    s.sendall(b"x" * 100_000)
    s.shutdown(socket.SHUT_WR)
    assert recv_until_close(s, 5) == b"got %d" % (len(hello) + 100_000)
    s.close()
    settle(sw)


def test_inflight_counted_for_the_connection_and_graceful_stop_waits(tls_origin, pt_switch, lt) -> None:
    web = tls_origin("web")
    sw = pt_switch(passthrough_yaml({"web": [web.port]}, default_pool="web"))
    server = sw.pools["web"].servers[0]
    raw = connect(sw.port)
    raw.settimeout(10)
    s = client_context().wrap_socket(raw, server_hostname="www.example.test")
    wait_for(lambda: server.inflight == 1 and server.conns == 1)
    assert len(sw.clients) == 1
    stopping = asyncio.run_coroutine_threadsafe(sw.stop(grace=10), lt.loop)
    time.sleep(0.2)
    assert not stopping.done()  # the open tunnel is waited for
    with pytest.raises(OSError):
        connect(sw.port, timeout=1)  # no longer accepting
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_http(s) == b"web"
    s.unwrap()
    s.close()
    stopping.result(5)
    assert server.inflight == 0 and server.conns == 0 and not sw.clients


def test_source_persistence_applies_to_passthrough(tls_origin, pt_switch) -> None:
    """The config accepts source persistence on a passthrough pool (and suggests it for TLS 1.3):
    one client address keeps reaching one server while rr would alternate, TLS 1.3 included."""
    a, b = tls_origin("a"), tls_origin("b")
    sw = pt_switch(passthrough_yaml({"p": [a.port, b.port]}, default_pool="p",
                                    pool_extra={"p": "persistence: {source: {timeout: 300s}}"}))
    served = {fetch(sw.port, "api.example.test")[0] for _ in range(4)}
    assert len(served) == 1
    assert len(sw.tables.table("source:p")) == 1
    settle(sw)


def test_idle_passthrough_tunnel_closed_after_timeouts_tunnel(tls_origin, pt_switch):
    """timeouts.tunnel: a tls-passthrough connection that goes quiet after its handshake and one
    request is closed by the switch (both sides), not kept forever."""
    o = tls_origin("a")
    sw = pt_switch(passthrough_yaml({"p": [o.port]}, default_pool="p", extra="timeouts: {tunnel: 0.4s}\n"))
    raw = connect(sw.port)
    raw.settimeout(5)
    with client_context().wrap_socket(raw, server_hostname="api.example.test") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_http(s)
        t0 = time.monotonic()
        try:
            assert s.recv(100) == b""  # closed by the switch (EOF or a reset)
        except (ssl.SSLError, ConnectionError):
            pass
        assert 0.3 < time.monotonic() - t0 < 4
    wait_for(lambda: len(sw.clients) == 0, 3)
