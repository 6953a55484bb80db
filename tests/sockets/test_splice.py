"""Large bodies (splice(2) path and the plain path) and Upgrade tunnels."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time

import pytest
from kit import Conn, get, read_head, simple_config

from l7switch.devtools.origin import pattern_bytes

MiB = 1 << 20


def splice_cfg(enabled: bool = True) -> str:
    return f"splice: {{enabled: {'true' if enabled else 'false'}, threshold: 64KiB}}\n"


def direct(port: int, path: str) -> bytes:
    """The same URL fetched straight from the origin."""
    with Conn(port) as c:
        c.send(get(path))
        return c.response().body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
            + body)


@pytest.mark.parametrize("enabled", [True, False])
def test_large_response_intact_then_keep_alive(proxy, enabled):
    sw, o = proxy(splice_cfg(enabled))
    expected = direct(o.port, "/bytes/2097152")
    assert expected == pattern_bytes(2 * MiB)
    with Conn(sw.port) as c:
        c.send(get("/bytes/2097152"))
        r = c.response()
        assert r.status == 200
        assert r.header("content-length") == str(2 * MiB)
        assert r.body == expected
        c.send(get("/echo"))
        assert c.response().json()["path"] == "/echo"
        c.send(get("/bytes/100"))
        assert c.response().body == pattern_bytes(100)


@pytest.mark.parametrize("enabled", [True, False])
def test_large_request_body_intact(proxy, enabled):
    sw, _ = proxy(splice_cfg(enabled))
    body = os.urandom(MiB)
    with Conn(sw.port) as c:
        c.send(post("/echo", body))
        doc = c.response().json()
        assert doc["body_len"] == MiB
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
        c.send(get("/echo"))
        assert c.response().json()["body_len"] == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_large_request_body_sent_slowly(proxy, enabled):
    """The head first, then the body in pieces: the splice starts with nothing buffered."""
    sw, _ = proxy(splice_cfg(enabled))
    body = os.urandom(300_000)
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 50_000):
            c.send(body[i:i + 50_000])
        doc = c.response().json()
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("enabled", [True, False])
def test_mixed_sizes_on_one_connection(lt, proxy, enabled):
    sw, o = proxy(splice_cfg(enabled))
    big_body = os.urandom(700_000)
    with Conn(sw.port) as c:
        for _ in range(2):
            c.send(get("/bytes/10"))
            assert c.response().body == pattern_bytes(10)
            c.send(get("/bytes/1048576"))
            assert c.response().body == pattern_bytes(MiB)
            c.send(post("/echo", b"small"))
            assert c.response().json()["body_len"] == 5
            c.send(post("/echo", big_body))
            assert c.response().json()["body_sha256"] == hashlib.sha256(big_body).hexdigest()
            c.send(get("/chunked/200000"))
            assert c.response().body == pattern_bytes(200_000)
            c.send(get("/bytes/65536"))  # exactly the threshold
            assert c.response().body == pattern_bytes(65536)
            c.send(get("/bytes/65535"))
            assert c.response().body == pattern_bytes(65535)
            c.send(get("/bytes/100000", method="HEAD"))
            assert c.response(head=True).header("content-length") == "100000"
    cp = lt.call(sw.snapshot)["connection_pools"][f"127.0.0.1:{o.port}"]
    assert cp["opened"] == 1  # every response ended at a message boundary


@pytest.mark.parametrize("enabled", [True, False])
def test_pipelined_large_and_small(proxy, enabled):
    sw, _ = proxy(splice_cfg(enabled))
    big = os.urandom(500_000)
    with Conn(sw.port) as c:
        c.send(get("/bytes/1000000") + post("/echo", big) + get("/echo/after") + get("/bytes/70000"))
        assert c.response().body == pattern_bytes(1_000_000)
        assert c.response().json()["body_sha256"] == hashlib.sha256(big).hexdigest()
        assert c.response().json()["path"] == "/echo/after"
        assert c.response().body == pattern_bytes(70000)


def test_large_response_to_http10_client(proxy):
    sw, o = proxy(splice_cfg(True))
    with Conn(sw.port) as c:
        c.send(b"GET /bytes/1000000 HTTP/1.0\r\n\r\n")
        r = c.response()
        assert r.body == pattern_bytes(1_000_000)
        assert c.is_closed()


def test_large_response_slow_reader(proxy):
    """The client reads slowly: the splice waits for room instead of buffering or dropping."""
    sw, _ = proxy(splice_cfg(True))
    with Conn(sw.port) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        c.send(get("/bytes/3000000"))
        import time
        time.sleep(0.3)  # let every buffer on the way fill up
        r = c.response()
        assert r.body == pattern_bytes(3_000_000)


def test_splice_used_for_large_bodies_only(proxy, count_splice):
    sw, _ = proxy(splice_cfg(True))
    with Conn(sw.port) as c:
        c.send(get("/bytes/10240"))
        assert c.response().body == pattern_bytes(10240)
        c.send(post("/echo", b"s" * 10240))
        assert c.response().json()["body_len"] == 10240
        assert count_splice[0] == 0
        c.send(get("/bytes/2097152"))
        assert c.response().body == pattern_bytes(2 * MiB)
        assert count_splice[0] > 0
        n = count_splice[0]
        body = os.urandom(2 * MiB)
        c.send(post("/echo", body))
        assert c.response().json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert count_splice[0] > n


def test_splice_disabled_never_calls_splice(proxy, count_splice):
    sw, _ = proxy(splice_cfg(False))
    with Conn(sw.port) as c:
        c.send(get("/bytes/2097152"))
        assert c.response().body == pattern_bytes(2 * MiB)
        body = os.urandom(MiB)
        c.send(post("/echo", body))
        assert c.response().json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert count_splice[0] == 0


# ---- Upgrade tunnels --------------------------------------------------------------------------

UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def recv_exactly(c: Conn, n: int) -> bytes:
    got, c.buf = c.buf, b""
    c.sock.settimeout(5)
    while len(got) < n:
        data = c.sock.recv(65536)
        if not data:
            raise ConnectionError(f"tunnel closed after {len(got)}/{n} bytes")
        got += data
    return got


def ws_echo_origin(raw_origin, events: list, greeting: bytes = b""):
    async def behave(reader, writer):
        head = await read_head(reader)
        events.append(("head", head))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" + greeting)
        await writer.drain()
        while True:
            data = await reader.read(65536)
            if not data:
                events.append(("eof", None))
                break
            writer.write(data)
            await writer.drain()
        writer.close()
    return raw_origin(behave)


def test_websocket_tunnel_echo_and_clean_close(raw_origin, switch_factory):
    events: list = []
    ro = ws_echo_origin(raw_origin, events)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(UPGRADE)
    status, _, headers, _ = c.read_head()
    assert status == 101
    hd = {n.lower(): v.lower() for n, v in headers}
    assert hd["upgrade"] == "websocket" and "upgrade" in hd["connection"]
    assert "sec-websocket-accept" in hd
    head = events[0][1].lower()
    assert b"upgrade: websocket" in head and b"connection: upgrade" in head
    assert b"sec-websocket-key" in head
    for msg in (b"hello", b"x" * 100_000, bytes(range(256))):
        c.send(msg)
        got = recv_exactly(c, len(msg))
        assert got == msg
    c.sock.shutdown(socket.SHUT_WR)  # client closes its side
    assert c.read_to_close(limit=3) == b""  # origin saw EOF, closed, and that reached us
    assert ("eof", None) in events
    c.close()


def test_websocket_early_data_and_greeting(raw_origin, switch_factory):
    """Bytes the client sends right behind the upgrade request, and bytes the server sends right
    behind its 101, both cross the tunnel."""
    events: list = []
    ro = ws_echo_origin(raw_origin, events, greeting=b"GREETING")
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(UPGRADE + b"early-bytes")
    status, *_ = c.read_head()
    assert status == 101
    want = b"GREETINGearly-bytes"
    got = recv_exactly(c, len(want))
    assert got == want
    c.close()


def test_websocket_client_abort_closes_origin(lt, raw_origin, switch_factory):
    events: list = []
    ro = ws_echo_origin(raw_origin, events)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(UPGRADE)
    assert c.read_head()[0] == 101
    c.send(b"ping")
    assert c.sock.recv(10) == b"ping"
    c.close()
    from kit import wait_for
    assert wait_for(lambda: ("eof", None) in events, 3)
    assert wait_for(lambda: lt.call(sw.snapshot)["clients"] == 0, 3)


def test_upgrade_declined_is_normal_response(raw_origin, switch_factory):
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndeclined")
        await writer.drain()
        await asyncio.sleep(2)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(UPGRADE)
    r = c.response()
    assert r.status == 200 and r.body == b"declined"
    assert r.header("upgrade") is None
    assert c.is_closed()  # no tunnel, and the connection is not reused after a declined upgrade
    c.close()


def test_upgrade_declined_by_standard_origin(proxy):
    sw, _ = proxy()
    c = Conn(sw.port)
    c.send(UPGRADE.replace(b"/chat", b"/echo"))
    r = c.response()
    assert r.status == 200
    assert r.json()["path"] == "/echo"
    c.close()


def test_101_without_upgrade_request_is_502(raw_origin, switch_factory):
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(2)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(get("/"))
    r = c.response()
    assert r.status == 502
    c.close()


def test_101_without_upgrade_header_is_502(raw_origin, switch_factory):
    """RFC 9110 §15.2.2: a 101 must carry Upgrade; without it there is no tunnel to build."""
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(2)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(UPGRADE)
    r = c.response()
    assert r.status == 502
    c.close()


def test_upgrade_pipelined_behind_normal_request(raw_origin, switch_factory):
    async def behave(reader, writer):
        head = await read_head(reader)
        if b"upgrade" not in head.lower():
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            await writer.drain()
            head = await read_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(get("/") + UPGRADE + b"tail")
    r = c.response()
    assert r.status == 200 and r.body == b"first"
    assert c.read_head()[0] == 101
    assert recv_exactly(c, 4) == b"tail"
    c.send(b"more")
    assert recv_exactly(c, 4) == b"more"
    c.close()


@pytest.mark.parametrize("enabled", [True, False])
def test_client_abort_mid_large_response_cleans_up(lt, proxy, enabled):
    sw, o = proxy(splice_cfg(enabled))
    c = Conn(sw.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    c.send(get("/bytes/8000000"))
    c.read_head()
    c.sock.recv(1000)
    c.close()
    from kit import wait_for
    assert wait_for(lambda: lt.call(sw.snapshot)["clients"] == 0, 3)
    # and the switch still serves
    with Conn(sw.port) as c2:
        c2.send(get("/bytes/200000"))
        assert c2.response().body == pattern_bytes(200_000)


def test_slow_client_backpressure_carries_over_to_the_next_pipelined_response(lt, proxy):
    """A response that completes into a client that reads nothing leaves the client paused; the
    server connection for the next pipelined request must start paused too, or its whole body
    piles up in the switch's memory. Which first size triggers it depends on kernel buffers, so
    several are tried; every one must stay bounded."""
    sw, o = proxy("splice: {enabled: false}\n")

    def buffered() -> int:
        return max((cl.transport.get_write_buffer_size() for cl in sw.clients if cl.transport), default=0)

    for first in (1_000_000, 2_000_000, 3_000_000, 4_000_000):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", sw.port))
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /bytes/8000000 HTTP/1.1\r\nHost: x\r\n\r\n" % first)
        time.sleep(0.6)  # reading nothing
        assert lt.call(buffered) < 1_500_000, first
        s.close()


def test_keep_alive_deadline_after_a_slow_spliced_response(raw_origin, switch_factory):
    """A response spliced for longer than timeouts.keepalive: the client's keep-alive time starts
    when the response ends, not at the server read that carried its head (that read's clock
    stamp is long past when the splice finishes), so the connection serves the next request."""
    size = 256 * 1024

    async def behave(reader, writer):
        while True:
            head = await read_head(reader)
            if b"/slow" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(8):  # 1.6 s for the body
                    await asyncio.sleep(0.2)
                    writer.write(b"s" * (size // 8))
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port, extra=splice_cfg() + "timeouts: {keepalive: 1s}\n"))
    with Conn(sw.port, timeout=5) as c:
        c.send(get("/slow"))
        r = c.response()
        assert r.status == 200 and r.body == b"s" * size
        time.sleep(0.5)  # within timeouts.keepalive of the response's end, past it from its head
        c.send(get("/next"))
        assert c.response().body == b"ok"
