"""limits.buffer_body (issue 10): a request body's first 64 KiB (or all of it) are read before a
server is chosen, so a slow upload holds no server connection (HAProxy's option
http-buffer-request, nginx's proxy_request_buffering)."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
from kit import Conn, read_head, simple_config, wait_for

import l7switch.proxy.exchange as exchange_mod
from l7switch.devtools.origin import pattern_bytes
from l7switch.proxy import pace

KiB = 1024
MiB = 1 << 20
HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"


def _counting_origin(raw_origin):
    """An origin that answers 200 with the sha256 of the body, and records each connection."""
    seen: list[bytes] = []

    async def behave(reader, writer):
        head = await read_head(reader)
        seen.append(head)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        digest = hashlib.sha256(body).hexdigest().encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(digest) + digest)
        await writer.drain()
    return raw_origin(behave), seen


@pytest.mark.parametrize("length", [1000, 3 * MiB], ids=["small", "spliced"])
def test_no_server_connection_until_the_buffer_fills(lt, raw_origin, switch_factory, length):
    """A body arriving slowly: nothing reaches the server while less than 64 KiB (or less than
    a small body) has come; then the head and the body go up, intact (the large one by splice)."""
    ro, seen = _counting_origin(raw_origin)
    sw = switch_factory(simple_config(ro.port))
    body = pattern_bytes(length)
    first = min(length - 1, 60 * KiB)
    with Conn(sw.port, timeout=10) as c:
        c.send(HEAD % length + body[:first])
        time.sleep(0.3)
        assert ro.connections == 0 and not seen
        assert lt.call(lambda: sw.state.buffered) == first
        c.send(body[first:])
        r = c.response()
        assert (r.status, r.body) == (200, hashlib.sha256(body).hexdigest().encode())
    assert ro.connections == 1
    assert lt.call(lambda: sw.state.buffered) == 0


def test_chunked_body_is_buffered_whole(raw_origin, switch_factory):
    got: list[bytes] = []

    async def behave(reader, writer):
        head = await read_head(reader)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += await reader.read(65536)
        got.append(head + data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        c.send(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.3)
        assert ro.connections == 0
        c.send(b"6\r\n world\r\n0\r\n\r\n")
        assert c.response().status == 200
    assert got[0].endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


def test_expect_continue_connects_at_the_head(raw_origin, switch_factory):
    """Expect: 100-continue: the client waits for the server's word before it sends the body, so
    the server must see the head at once (and may refuse the body early)."""
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        assert c.response().status == 417


def test_buffer_body_off_connects_at_the_head(raw_origin, switch_factory):
    ro, seen = _counting_origin(raw_origin)
    sw = switch_factory(simple_config(ro.port, extra="limits: {buffer_body: 0}\n"))
    with Conn(sw.port) as c:
        c.send(HEAD % 1000 + b"x" * 10)
        assert wait_for(lambda: len(seen) == 1, 3)
        c.send(b"x" * 990)
        assert c.response().status == 200


def test_slow_body_gets_408_without_reaching_a_server(lt, raw_origin, switch_factory, monkeypatch):
    """Below min_body_rate while buffering: 408 and close, and the server never heard of it."""
    monkeypatch.setattr(pace, "GRACE", 0.6)
    monkeypatch.setattr(pace, "WINDOW", 0.5)
    monkeypatch.setattr(pace, "STEP", 0.1)
    ro, seen = _counting_origin(raw_origin)
    sw = switch_factory(simple_config(ro.port, extra="limits: {min_body_rate: 500B/s}\n"))
    with Conn(sw.port, timeout=5) as c:
        c.send(HEAD % MiB)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4 and not c.is_closed(wait=0.1):
            try:
                c.send(b"x")
            except OSError:
                break
        r = c.response()
        assert r.status == 408, r
    assert ro.connections == 0
    assert lt.call(lambda: sw.state.buffered) == 0


def test_budget_spent_connects_at_the_head(lt, raw_origin, switch_factory, monkeypatch):
    """All buffering bodies together hold at most BUFFER_BUDGET bytes: past it, a new request
    connects at its head (memory stays bounded whatever the number of slow uploads)."""
    monkeypatch.setattr(exchange_mod, "BUFFER_BUDGET", 100)
    ro, seen = _counting_origin(raw_origin)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as a, Conn(sw.port) as b:
        a.send(HEAD % 1000 + b"a" * 150)
        assert wait_for(lambda: lt.call(lambda: sw.state.buffered) == 150, 3)
        b.send(HEAD % 1000 + b"b" * 10)
        assert wait_for(lambda: len(seen) == 1, 3)  # b went up at its head
        a.send(b"a" * 850)
        b.send(b"b" * 990)
        assert a.response().status == 200 and b.response().status == 200


def test_client_leaving_while_buffering_frees_its_bytes(lt, raw_origin, switch_factory):
    ro, _ = _counting_origin(raw_origin)
    sw = switch_factory(simple_config(ro.port))
    for how in ("close", "reset"):
        s = socket.create_connection(("127.0.0.1", sw.port))
        s.sendall(HEAD % 5000 + b"z" * 2000)
        assert wait_for(lambda: lt.call(lambda: sw.state.buffered) == 2000, 3)
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        assert wait_for(lambda: lt.call(lambda: sw.state.buffered) == 0 and not sw.clients, 3)
    assert ro.connections == 0


@pytest.mark.parametrize("extra", ["", "limits: {buffer_body: 0}\n"], ids=["buffering", "streaming"])
def test_half_close_in_the_body_ends_the_request(lt, raw_origin, switch_factory, extra):
    """A client that half-closes before its body is complete: the request can never be (RFC 9112
    §8), so the switch closes at once, and a server already receiving the body sees its connection
    go, rather than both waiting for timeouts (old code: client 60 s, server 60 s)."""
    server_saw_eof: list[bool] = []

    async def behave(reader, writer):
        await read_head(reader)
        while await reader.read(65536):
            pass
        server_saw_eof.append(True)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port, extra=extra))
    with Conn(sw.port, timeout=5) as c:
        c.send(HEAD % 5000 + b"h" * 100)
        if extra:
            assert wait_for(lambda: ro.connections == 1, 3)
        time.sleep(0.1)
        c.sock.shutdown(socket.SHUT_WR)
        assert c.is_closed(wait=2.0)
    if extra:
        assert wait_for(lambda: bool(server_saw_eof), 2.0)
    else:
        assert ro.connections == 0
    assert wait_for(lambda: lt.call(lambda: sw.state.buffered) == 0 and not sw.clients, 3)
