"""Timeouts are silences: ``timeouts.server`` is the longest a server that owes us bytes may stay
silent (HAProxy's ``timeout server``), ``timeouts.client`` the longest a client sending a body may
(nginx's ``client_body_timeout``), also while that body crosses by splice, where Python never
sees the bytes move. Neither is a deadline for a whole exchange."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest
from kit import Conn, get, read_head, simple_config

from l7switch.devtools.origin import pattern_bytes

KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parents[2]


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
