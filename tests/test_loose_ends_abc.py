"""Regression tests for three loose ends of the switch.

(a) ``timeouts.server`` is the longest *silence* allowed from the server (HAProxy's
    ``timeout server``), not a deadline for the whole response; ``timeouts.client`` likewise
    for a request body, also when that body crosses by splice.
(b) A request re-sent on a fresh connection after a stale pooled keep-alive connection must
    carry its whole body, including the bytes already sent on the dead connection.
(c) ``limits.max_header_bytes`` must bound a header line that never ends (request side), and a
    response head from a server must be bounded too.
"""

from __future__ import annotations

import asyncio
import hashlib
import select
import time

import pytest
from conftest import read_head, simple_config
from wire import Conn, get, wait_for

from l7switch.devtools.origin import pattern_bytes

KiB = 1024
MiB = 1024 * KiB


# ---- (a) timeouts are silences, not whole-exchange deadlines ---------------------------------------

def test_slow_chunked_response_survives_server_timeout(raw_origin, switch_factory):
    """(a) timeouts.server is the longest silence between server bytes: a chunked response that
    trickles one chunk every 0.2 s for ~2 s under ``server: 0.5s`` must arrive whole.
    Old code armed the deadline once at request time and cut the response at ~0.5 s."""
    chunks = [b"chunk-%02d;" % i for i in range(10)]

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        for chunk in chunks:
            await asyncio.sleep(0.2)
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)  # stay open: the end of the response is the last chunk
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port, extra="timeouts: {server: 0.5s}\n"))
    with Conn(sw.port, timeout=5) as c:
        c.send(get("/"))
        t0 = time.monotonic()
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"response cut after {time.monotonic() - t0:.2f}s: {exc!r}")
        assert r.status == 200
        assert r.chunked
        assert r.body == b"".join(chunks)


def test_slow_spliced_download_survives_server_timeout(raw_origin, switch_factory):
    """(a) A 2 MiB Content-Length body (above the 64 KiB splice threshold, so spliced) that the
    server writes 128 KiB every 0.15 s under ``server: 0.5s`` must arrive intact.
    Old code's whole-response deadline aborted the splice (and the client) at ~0.5 s."""
    n = 2 * MiB
    body = pattern_bytes(n)
    step = 128 * KiB

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        for off in range(0, n, step):
            writer.write(body[off:off + step])
            await writer.drain()
            await asyncio.sleep(0.15)
        await asyncio.sleep(10)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port, extra="timeouts: {server: 0.5s}\n"))
    with Conn(sw.port, timeout=5) as c:
        c.send(get("/"))
        t0 = time.monotonic()
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"download cut after {time.monotonic() - t0:.2f}s "
                        f"({len(c.buf)} bytes buffered): {exc!r}")
        assert r.status == 200
        assert len(r.body) == n
        assert r.body == body


def _slow_upload(port: int, body: bytes, pieces: int, gap: float):
    """POST ``body`` to /echo in ``pieces`` parts ``gap`` s apart; the response (or None) and
    the seconds until sending stopped."""
    c = Conn(port, timeout=5)
    step = -(-len(body) // pieces)
    t0 = time.monotonic()
    try:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        for off in range(0, len(body), step):
            time.sleep(gap)
            c.send(body[off:off + step])
    except OSError:
        pass  # the switch gave up on us; read what it said
    return c, time.monotonic() - t0


@pytest.mark.parametrize("size,pieces,gap", [
    (1 * MiB, 10, 0.2),  # above the splice threshold: the body crosses by splice
    (20 * KiB, 20, 0.15),  # below it: the body streams through Python
], ids=["spliced-1MiB", "python-20KiB"])
def test_slow_upload_survives_server_timeout(proxy, size, pieces, gap):
    """(a) While the client is still uploading, the server is silent because it is reading:
    ``server: 0.5s`` must not turn a ~2-3 s upload (0.15-0.2 s gaps) into a 504.
    Old code armed the server deadline when the request head was sent and answered 504."""
    sw, o = proxy("timeouts: {server: 0.5s}\n")
    body = pattern_bytes(size)
    c, took = _slow_upload(sw.port, body, pieces, gap)
    with c:
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"no response to the upload (sending stopped after {took:.2f}s): {exc!r}")
        assert r.status == 200, f"{r.status} after a {took:.2f}s upload: {r.body[:100]!r}"
        doc = r.json()
        assert doc["body_len"] == size
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_slow_spliced_upload_survives_client_timeout(proxy):
    """(a) timeouts.client is the longest silence from the client: a 1 MiB upload (spliced)
    arriving in 10 parts 0.2 s apart under ``client: 0.5s`` must reach the server.
    Old code refreshed the client deadline only in data_received, which a splice bypasses, so
    the body 'stalled' at ~0.5 s and the client got 408."""
    sw, o = proxy("timeouts: {client: 0.5s}\n")
    body = pattern_bytes(1 * MiB)
    c, took = _slow_upload(sw.port, body, 10, 0.2)
    with c:
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"no response to the upload (sending stopped after {took:.2f}s): {exc!r}")
        assert r.status == 200, f"{r.status} after a {took:.2f}s upload: {r.body[:100]!r}"
        doc = r.json()
        assert doc["body_len"] == len(body)
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


# ---- (b) a retried request keeps its whole body ------------------------------------------------

def test_retry_after_stale_pooled_connection_keeps_body(raw_origin, switch_factory):
    """(b) The pooled connection dies after the head and the first body bytes of request 2
    were written to it; the request must be re-sent on a fresh connection with ALL its body
    (the part already sent plus the part still coming from the client), in order.
    Old code retried only if no body byte had been sent up, and answered 502."""
    conns = [0]
    seen: list[bytes] = []

    async def behave(reader, writer):
        conns[0] += 1
        if conns[0] == 1:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")  # keep-alive
            await writer.drain()
            await read_head(reader)  # request 2's head (its body bytes may follow)
            writer.close()  # without answering
            return
        while True:
            head = await read_head(reader)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            seen.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port, timeout=5) as c:
        c.send(get("/one"))
        r1 = c.response()
        assert r1.status == 200 and r1.body == b"first"
        c.send(b"POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        time.sleep(0.2)
        try:
            c.send(b"56789")
        except OSError:
            pass  # the switch already answered and closed
        r2 = c.response()
        assert r2.status == 200, f"request 2 got {r2.status}: {r2.body[:100]!r}"
        assert r2.body == b"0123456789"
    assert ro.connections >= 2
    assert seen == [b"0123456789"]


# ---- (c) header lines that never end -----------------------------------------------------------

def _flood_request_head(port: int, prefix: bytes, cap: int = 4 * MiB):
    """Send ``prefix`` then 'a' * 4096 pieces until the switch answers (or closes), up to
    ``cap`` bytes; returns (conn, bytes sent after the prefix, whether an answer was seen)."""
    c = Conn(port, timeout=5)
    c.sock.settimeout(2)
    c.send(prefix)
    piece = b"a" * 4096
    sent = 0
    answered = False
    while sent < cap:
        try:
            c.sock.sendall(piece)
        except OSError:  # closed/reset by the switch, or it stopped reading for 2 s
            break
        sent += len(piece)
        readable, _, _ = select.select([c.sock], [], [], 0.001)
        if readable:
            answered = True
            break
    if not answered:
        readable, _, _ = select.select([c.sock], [], [], 1.0)
        answered = bool(readable)
    return c, sent, answered


@pytest.mark.parametrize("prefix", [
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ",  # a header value that never ends
    b"GET / HTTP/1.1\r\nHost: t\r\nXXXXXXXX",  # a header name that never ends (no colon)
], ids=["endless-value", "endless-name"])
def test_endless_request_header_line_431(proxy, prefix):
    """(c) max_header_bytes (default 32 KiB) must count bytes of a header line still in
    progress: a never-ending line gets 431 and a close long before 1 MiB has been sent.
    Old code counted only completed lines (on_header), so it buffered all 4 MiB and never
    answered."""
    sw, o = proxy()
    c, sent, answered = _flood_request_head(sw.port, prefix)
    with c:
        assert answered, f"no answer after {sent} bytes of one header line"
        assert sent <= 1 * MiB, f"the switch read {sent} bytes of one header line before answering"
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"connection closed without a response after {sent} bytes: {exc!r}")
        assert r.status == 431
        assert c.is_closed()
    assert o.requests == 0


def test_endless_response_header_line_502(raw_origin, switch_factory):
    """(c) A server whose response head never ends (one header line streaming forever) must
    get the client a 502 and have its connection closed, not be buffered without limit.
    Old code counted only completed response header lines (101 max), so it swallowed all
    8 MiB of the single line and the client got no answer at all."""
    cap = 8 * MiB
    state = {"sent": 0, "stopped": False}

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        piece = b"a" * 16384
        try:
            while state["sent"] < cap and not writer.transport.is_closing():
                writer.write(piece)
                state["sent"] += len(piece)
                await writer.drain()
                await asyncio.sleep(0.001)  # let the switch (same loop) read
        finally:
            state["stopped"] = True
        if state["sent"] >= cap:
            await asyncio.sleep(10)  # keep the connection open: the switch must close it
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port, timeout=3) as c:
        c.send(get("/"))
        t0 = time.monotonic()
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"no response after {time.monotonic() - t0:.2f}s; the origin had sent "
                        f"{state['sent']} bytes of one header line: {exc!r}")
        assert r.status == 502
    assert wait_for(lambda: state["stopped"], timeout=3), "the server connection was never closed"
    assert state["sent"] < 2 * MiB, f"the switch read {state['sent']} bytes of one header line"
