"""TLS termination: HTTPS in front of plain-HTTP origins, certificates chosen by SNI, version
floors, handshake limits, no splice on encrypted sockets, and the listener checks.

Certificates come from trustme (a throw-away CA per test session); clients are plain blocking
``ssl`` sockets wrapped in wire.Conn, so responses are read byte for byte as in the other tests.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import warnings

import pytest
from kit import Conn, get, wait_for

from l7switch.devtools.origin import pattern_bytes


def client_ctx(pki, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    pki[0].configure_trust(ctx)
    for name, value in kw.items():
        setattr(ctx, name, value)
    return ctx


class TLSConn(Conn):
    def __init__(self, port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost",
                 timeout: float = 5.0) -> None:
        super().__init__(port, timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)


def tls_config(pki, *ports: int, tls: str = "", extra: str = "") -> str:
    """A plain listener and a TLS listener; /a/ goes to pool a, the rest to pool b."""
    d = pki[1]
    tls = tls or (f"{{certs: [{{cert: {d}/site.pem, key: {d}/site.key}}, "
                  f"{{cert: {d}/other.pem, key: {d}/other.key}}]}}")
    return (f"listen:\n  - 127.0.0.1:0\n  - {{address: 127.0.0.1:0, tls: {tls}}}\n"
            f"pools:\n  a: {{servers: [127.0.0.1:{ports[0]}]}}\n  b: {{servers: [127.0.0.1:{ports[-1]}]}}\n"
            "rules:\n  - {match: {path_prefix: /a/}, pool: a}\ndefault_pool: b\n"
            "splice: {threshold: 1KiB}\n" + extra)  # a low threshold: plain connections would splice


@pytest.fixture
def https(pki, origin_factory, switch_factory):
    """(switch, tls_port) with origins oa (pool a) and ob (pool b)."""
    def make(tls: str = "", extra: str = ""):
        oa, ob = origin_factory("oa"), origin_factory("ob")
        sw = switch_factory(tls_config(pki, oa.port, ob.port, tls=tls, extra=extra))
        return sw, sw.addresses[1][1]
    return make


def echo_headers(resp) -> dict[str, str]:
    return {n.lower(): v for n, v in resp.json()["headers"]}


# ---- serving -------------------------------------------------------------------------------------

def test_https_routes_by_rules_keeps_alive_and_says_https(pki, https):
    sw, port = https()
    with TLSConn(port, client_ctx(pki)) as c:
        assert c.sock.selected_alpn_protocol() is None  # the client offered none
        c.send(get("/a/x", host="localhost"))
        r = c.response()
        assert (r.status, r.body) == (200, b"oa: /a/x\n")
        c.send(get("/echo", host="localhost:8443"))
        r = c.response()
        hd = echo_headers(r)
        assert r.json()["server"] == "ob"
        assert hd["x-forwarded-proto"] == "https" and hd["x-forwarded-host"] == "localhost:8443"
        c.send(get("/a/y", host="localhost", extra="X-Forwarded-Proto: http\r\n") + get("/b"))
        assert c.response().body == b"oa: /a/y\n"  # pipelined, in order
        assert c.response().body == b"ob: /b\n"
        assert c.is_open()
    with Conn(sw.port) as c:  # the plain listener of the same switch still says http
        c.send(get("/echo"))
        assert echo_headers(c.response())["x-forwarded-proto"] == "http"


def test_alpn_http11_and_h2_only_client(pki, https):
    _, port = https()
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with TLSConn(port, ctx) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        c.send(get("/x"))
        assert c.response().status == 200
    h2 = client_ctx(pki)
    h2.set_alpn_protocols(["h2"])
    with TLSConn(port, h2) as c:  # no overlap: no ALPN answer, the handshake still succeeds
        assert c.sock.selected_alpn_protocol() is None
        c.send(get("/x"))
        assert c.response().body == b"ob: /x\n"


def test_large_response_and_upload_cross_tls_without_splice(pki, https):
    _, port = https()
    with TLSConn(port, client_ctx(pki), timeout=20) as c:
        c.send(get("/bytes/2000000"))
        r = c.response()
        assert r.status == 200 and r.body == pattern_bytes(2_000_000)
        body = bytes(range(256)) * 4096  # 1 MiB
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        doc = c.response().json()
        assert doc["body_len"] == len(body) and doc["body_sha256"] == hashlib.sha256(body).hexdigest()
        c.send(get("/chunked/300000"))
        assert c.response().body == pattern_bytes(300_000)
        c.send(get("/a/after"))  # the connection is still at a message boundary
        assert c.response().body == b"oa: /a/after\n"


def _peer_dns(sock: ssl.SSLSocket) -> set[str]:
    return {v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"}


@pytest.mark.parametrize("name, want", [
    ("localhost", {"localhost"}),
    ("other.test", {"other.test", "*.wild.test"}),
    ("a.wild.test", {"other.test", "*.wild.test"}),
    ("OTHER.test", {"other.test", "*.wild.test"}),  # SNI compares case-insensitively
])
def test_sni_picks_the_certificate(pki, https, name, want):
    _, port = https()
    with TLSConn(port, client_ctx(pki), server_hostname=name) as c:
        assert _peer_dns(c.sock) == want
        c.send(get("/a/sni", host=name))
        assert c.response().body == b"oa: /a/sni\n"


@pytest.mark.parametrize("name", ["unknown.test", "a.b.wild.test", None])
def test_sni_without_a_match_gets_the_first_certificate(pki, https, name):
    _, port = https()
    ctx = client_ctx(pki, check_hostname=False)
    with TLSConn(port, ctx, server_hostname=name) as c:  # None: no SNI at all
        assert _peer_dns(c.sock) == {"localhost"}


def test_min_version_tls13_refuses_a_tls12_client(pki, https):
    d = pki[1]
    _, port = https(tls=f"{{cert: {d}/site.pem, key: {d}/site.key, min_version: TLSv1.3}}")
    old = client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError) as info:
        TLSConn(port, old)
    assert _refused_by_server(info.value)
    with TLSConn(port, client_ctx(pki)) as c:
        assert c.sock.version() == "TLSv1.3"
        c.send(get("/x"))
        assert c.response().status == 200


def test_tls11_client_refused_at_default_min_version(pki, https):
    _, port = https()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1: the point of the test
        ctx = client_ctx(pki, minimum_version=ssl.TLSVersion.TLSv1_1,
                         maximum_version=ssl.TLSVersion.TLSv1_1)
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 allows TLS 1.1 only at level 0
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot build a TLS 1.1 client")
    with pytest.raises(ssl.SSLError) as info:
        TLSConn(port, ctx)
    if not _refused_by_server(info.value):
        pytest.skip(f"this OpenSSL will not offer TLS 1.1: {info.value}")
    with TLSConn(port, client_ctx(pki)) as c:  # and the switch goes on serving
        c.send(get("/x"))
        assert c.response().status == 200


def _refused_by_server(err: ssl.SSLError) -> bool:
    """The server ended the handshake: a protocol_version alert, or (uvloop closes a failed
    handshake without flushing the alert OpenSSL wrote) a bare EOF -- not a client-side refusal."""
    return isinstance(err, ssl.SSLEOFError) or "PROTOCOL_VERSION" in str(err).upper()


def test_plain_http_on_the_tls_port_is_closed_and_serving_goes_on(pki, https, lt):
    sw, port = https()
    with Conn(port) as c:
        c.send(get("/a/x"))
        got = c.read_to_close(limit=3)
        assert not got.startswith(b"HTTP/")  # at most a TLS alert record
    with TLSConn(port, client_ctx(pki)) as c:
        c.send(get("/a/x"))
        assert c.response().status == 200
    assert wait_for(lambda: lt.call(sw.snapshot)["clients"] == 0, 3)


def test_handshake_must_finish_within_the_header_timeout(pki, https):
    _, port = https(extra="timeouts: {header: 0.5s}\n")
    with Conn(port) as c:  # connects, never says hello
        t0 = time.monotonic()
        assert c.is_closed(wait=3)
        assert 0.4 <= time.monotonic() - t0 < 2.0
    with Conn(port) as c:  # a hello cut short counts the same
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert c.is_closed(wait=3)


def test_header_timeout_after_the_handshake(pki, https):
    _, port = https(extra="timeouts: {header: 0.5s}\n")
    with TLSConn(port, client_ctx(pki)) as c:
        c.send(b"GET /a/x HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        r = c.response()
        assert r.status == 408 and r.header("connection") == "close"


# ---- Upgrade tunnels over TLS ------------------------------------------------------------------

UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _ws_origin(raw_origin, events: list, greeting: bytes = b"", bye_after: bytes | None = None):
    async def behave(reader, writer):
        from kit import read_head
        events.append(("head", await read_head(reader)))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                     + greeting)
        while True:
            data = await reader.read(65536)
            if not data:
                events.append(("eof", None))
                break
            if bye_after is not None and data.endswith(bye_after):
                writer.write(data + b"x" * 300_000 + b"BYE")  # then close at once
                await writer.drain()
                break
            writer.write(data)
            await writer.drain()
        writer.close()
    return raw_origin(behave)


def _recv(c: Conn, n: int) -> bytes:
    got, c.buf = c.buf, b""
    while len(got) < n:
        data = c.sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed after {len(got)}/{n} bytes")
        got += data
    return got


def test_websocket_tunnel_over_tls(pki, raw_origin, switch_factory, lt):
    events: list = []
    ro = _ws_origin(raw_origin, events, greeting=b"HELLO")
    sw = switch_factory(tls_config(pki, ro.port))
    with TLSConn(sw.addresses[1][1], client_ctx(pki)) as c:
        c.send(UPGRADE + b"early")
        assert c.read_head()[0] == 101
        assert b"x-forwarded-proto: https" in events[0][1].lower()
        assert _recv(c, 10) == b"HELLOearly"
        for msg in (b"ping", b"y" * 500_000, bytes(range(256))):
            c.send(msg)
            assert _recv(c, len(msg)) == msg
    assert wait_for(lambda: ("eof", None) in events, 3)  # the client's close reached the origin
    assert wait_for(lambda: lt.call(sw.snapshot)["clients"] == 0, 3)


def test_websocket_over_tls_origin_close_flushes_to_client(pki, raw_origin, switch_factory):
    events: list = []
    ro = _ws_origin(raw_origin, events, bye_after=b"!")
    sw = switch_factory(tls_config(pki, ro.port))
    with TLSConn(sw.addresses[1][1], client_ctx(pki), timeout=10) as c:
        c.send(UPGRADE)
        assert c.read_head()[0] == 101
        c.send(b"last!")
        rest = c.read_to_close()
        assert rest == b"last!" + b"x" * 300_000 + b"BYE"  # nothing buffered was dropped


def test_no_ssl_state_leaks_between_connections(pki, https, lt):
    """Each TLS connection is its own ClientConnection; many short ones leave nothing behind."""
    sw, port = https()
    for _ in range(20):
        with TLSConn(port, client_ctx(pki)) as c:
            c.send(get("/a/n", extra="Connection: close\r\n"))
            assert c.response().body == b"oa: /a/n\n"
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.close()  # a connection gone before its handshake
    assert wait_for(lambda: lt.call(sw.snapshot)["clients"] == 0, 3)
    assert all(s["inflight"] == 0 for s in lt.call(sw.snapshot)["pools"]["a"]["servers"])
