"""Timeouts are silences: ``timeouts.server`` is the longest a server that owes us bytes may stay
silent (HAProxy's ``timeout server``), ``timeouts.client`` the longest a client sending a body may
(nginx's ``client_body_timeout``), also while that body crosses by splice, where Python never
sees the bytes move. Neither is a deadline for a whole exchange."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest
from kit import Conn, get, read_head, simple_config, wait_for

import l7switch.proxy.state as state_mod
from l7switch.config import parse_config
from l7switch.devtools.origin import pattern_bytes
from l7switch.proxy import pace

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


# ---- (b) first-byte, keep-alive and body-rate limits (issue 10) -------------------------------------
# timeouts.keepalive and limits.min_body_rate are set on the parsed Config until the YAML keys land.

def _switch(origin_factory, switch_factory, timeouts: dict | None = None, limits: dict | None = None):
    o = origin_factory("o1")
    cfg = parse_config(simple_config(o.port), "<test>")
    cfg = dataclasses.replace(cfg, timeouts=dataclasses.replace(cfg.timeouts, **(timeouts or {})),
                              limits=dataclasses.replace(cfg.limits, **(limits or {})))
    return switch_factory(cfg)


def _closed_within(c: Conn, limit: float) -> float:
    """Seconds until the switch closed ``c`` (fails past ``limit``)."""
    t0 = time.monotonic()
    assert c.is_closed(wait=limit), f"still open after {limit}s (buffered {c.buf[:80]!r})"
    return time.monotonic() - t0


def test_silent_connection_closed_at_header_timeout_from_accept(origin_factory, switch_factory):
    """A connection that never sends a byte is gone at timeouts.header from accept (HAProxy
    ``timeout http-request``), silently, although timeouts.client is a minute.
    Old code kept it for timeouts.client (60 s): 20,000 of them exhausted the fds."""
    sw = _switch(origin_factory, switch_factory, {"header": 0.5, "client": 60.0})
    with Conn(sw.port) as c:
        took = _closed_within(c, 3)
        assert 0.4 <= took < 1.5
        assert c.buf == b""


def test_trickled_head_gets_408_at_header_timeout(origin_factory, switch_factory):
    """A head sent one byte every 0.1 s still ends at timeouts.header from accept: reads do not
    extend it."""
    sw = _switch(origin_factory, switch_factory, {"header": 0.8, "client": 60.0})
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with Conn(sw.port) as c:
        t0 = time.monotonic()
        c.trickle(head, 0.1, 3)
        r = c.response()
        assert r.status == 408
        assert time.monotonic() - t0 < 2.0


def test_keepalive_idle_closes_silently_after_keepalive_timeout(origin_factory, switch_factory):
    sw = _switch(origin_factory, switch_factory, {"keepalive": 0.4, "header": 5.0, "client": 60.0})
    with Conn(sw.port) as c:
        c.send(get("/echo"))
        assert c.response().status == 200
        took = _closed_within(c, 3)
        assert 0.3 <= took < 1.5
        assert c.buf == b""


def test_next_head_due_header_timeout_from_its_first_byte(origin_factory, switch_factory):
    """After a keep-alive pause, a request head is due timeouts.header from its first byte
    (HAProxy: once the first byte is seen, timeout http-request applies), not from the end of
    the previous response and not timeouts.keepalive."""
    sw = _switch(origin_factory, switch_factory, {"keepalive": 0.6, "header": 0.8, "client": 60.0})
    with Conn(sw.port) as c:
        c.send(get("/echo"))
        assert c.response().status == 200
        time.sleep(0.4)  # idle, below keepalive
        t0 = time.monotonic()
        c.send(b"GET /echo HTTP/1.1\r\n")  # a head begins, never ends
        r = c.response()
        took = time.monotonic() - t0
        assert r.status == 408
        assert 0.6 <= took < 1.6, took  # ~header from the first byte (keepalive alone: ~0.2 s)


def test_keepalive_connection_used_again_within_keepalive(origin_factory, switch_factory):
    sw = _switch(origin_factory, switch_factory, {"keepalive": 0.6, "header": 0.6})
    with Conn(sw.port) as c:
        for _ in range(4):
            c.send(get("/echo"))
            assert c.response().status == 200
            time.sleep(0.3)


@pytest.fixture
def fast_pace(monkeypatch):
    """The body pace with small values: judged after 0.6 s, over the last 0.5 s, looked at every
    0.1 s."""
    monkeypatch.setattr(pace, "GRACE", 0.6)
    monkeypatch.setattr(pace, "WINDOW", 0.5)
    monkeypatch.setattr(pace, "STEP", 0.1)


def _trickle_body(port: int, length: int, first: bytes, piece: bytes, gap: float, limit: float):
    """POST with Content-Length ``length``: ``first`` at once, then ``piece`` every ``gap`` s
    until the switch stops us or ``limit`` s pass; (connection, seconds until stopped)."""
    c = Conn(port, timeout=5)
    t0 = time.monotonic()
    sent = len(first)
    try:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % length + first)
        while sent < length and time.monotonic() - t0 < limit:
            time.sleep(gap)
            c.send(piece[:length - sent])
            sent += len(piece)
            c.sock.settimeout(0.0)
            try:
                got = c.sock.recv(65536)
            except BlockingIOError:
                got = None
            finally:
                c.sock.settimeout(5)
            if got is not None:
                c.buf += got
                break  # an answer (or EOF) while still sending
    except OSError:
        pass
    return c, time.monotonic() - t0


@pytest.mark.parametrize("length,first", [(20 * KiB, b""), (1 * MiB, pattern_bytes(256 * KiB))],
                         ids=["python", "spliced"])
def test_slow_body_below_min_body_rate_gets_408(origin_factory, switch_factory, fast_pace, length, first):
    """100 B/s against min_body_rate 500 B/s: 408 and close once the grace has passed, though
    the client is never silent for timeouts.client. A body crossing by splice (above the
    64 KiB threshold) is measured by the bytes the splice moved."""
    sw = _switch(origin_factory, switch_factory, {"client": 60.0}, {"min_body_rate": 500})
    c, took = _trickle_body(sw.port, length, first, b"x" * 10, 0.1, limit=5)
    with c:
        r = c.response()
        assert r.status == 408, r
        assert b"too slow" in r.body or r.status == 408
        assert 0.6 <= took < 2.5, took
        assert c.is_closed(wait=2)


@pytest.mark.parametrize("length,first", [(40 * KiB, b""), (1 * MiB, pattern_bytes(256 * KiB))],
                         ids=["python", "spliced"])
def test_fast_body_is_never_cut(origin_factory, switch_factory, fast_pace, length, first):
    """Far above min_body_rate for several windows: the upload completes."""
    sw = _switch(origin_factory, switch_factory, {"client": 60.0}, {"min_body_rate": 500})
    rest = length - len(first)
    piece = b"y" * (rest // 20 + 1)
    c, took = _trickle_body(sw.port, length, first, piece, 0.1, limit=10)
    with c:
        r = c.response()
        assert r.status == 200, r
        assert r.json()["body_len"] == length
        assert took > 1.5  # the pace was judged several times


def test_min_body_rate_zero_is_off(origin_factory, switch_factory, fast_pace):
    sw = _switch(origin_factory, switch_factory, {"client": 60.0}, {"min_body_rate": 0})
    c, took = _trickle_body(sw.port, 30, b"", b"x" * 2, 0.1, limit=5)
    with c:
        r = c.response()
        assert r.status == 200 and took > 1.2


def test_stalled_body_gets_408_after_client_timeout(origin_factory, switch_factory, fast_pace):
    """timeouts.client stays the longest silence while a body arrives (min_body_rate off)."""
    sw = _switch(origin_factory, switch_factory, {"client": 0.5}, {"min_body_rate": 0})
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        t0 = time.monotonic()
        r = c.response()
        assert r.status == 408
        assert 0.4 <= time.monotonic() - t0 < 1.5


# ---- (c) under pressure, idle keep-alive connections go first, oldest first --------------------------

def _idle_conns(port: int, n: int) -> list[Conn]:
    conns = []
    for _ in range(n):
        c = Conn(port)
        c.send(get("/echo"))
        assert c.response().status == 200
        conns.append(c)
        time.sleep(0.02)  # a distinct idle order
    return conns


def test_evict_idle_closes_oldest_idle_first(origin_factory, switch_factory, lt, monkeypatch):
    monkeypatch.setattr(state_mod, "EVICT_AFTER", 0.0)
    sw = _switch(origin_factory, switch_factory, {"keepalive": 30.0})
    conns = _idle_conns(sw.port, 5)
    busy = Conn(sw.port)
    busy.send(b"GET /echo HTTP/1.1\r\n")  # mid-head: not idle, never evicted
    time.sleep(0.1)
    try:
        assert lt.call(sw.state.evict_idle, 2) == 2
        assert conns[0].is_closed(wait=2) and conns[1].is_closed(wait=2)
        assert conns[0].buf == conns[1].buf == b""  # silently
        for c in conns[2:]:
            assert not c.is_closed(wait=0.2)
        conns[2].send(get("/echo"))
        assert conns[2].response().status == 200
        # Used again, conns[2] is now the newest idle: the next eviction takes conns[3].
        assert lt.call(sw.state.evict_idle, 1) == 1
        assert conns[3].is_closed(wait=2)
        assert not conns[2].is_closed(wait=0.2) and not busy.is_closed(wait=0.1)
        assert lt.call(sw.state.evict_idle, 10) == 2  # only idle ones: conns[2] and conns[4]
        assert not busy.is_closed(wait=0.2)
    finally:
        for c in [*conns, busy]:
            c.close()


def test_silent_connections_go_first_above_80_percent_of_the_cap(origin_factory, switch_factory, lt,
                                                                   monkeypatch):
    """state.max_connections = 10: with 6 idle keep-alive and 4 silent connections (10 > 8), the
    clock's sweep closes the 2 oldest *silent* ones (an idle flood is made of those); the
    keep-alive clients are left alone."""
    monkeypatch.setattr(state_mod, "EVICT_AFTER", 0.0)
    sw = _switch(origin_factory, switch_factory, {"keepalive": 30.0})
    conns = _idle_conns(sw.port, 6)
    fresh = []
    for _ in range(4):
        fresh.append(Conn(sw.port))
        time.sleep(0.02)  # accept order = age order
    try:
        assert wait_for(lambda: len(sw.state.clients) == 10, timeout=3)
        lt.call(setattr, sw.state, "max_connections", 10)
        assert fresh[0].is_closed(wait=3) and fresh[1].is_closed(wait=3)
        assert wait_for(lambda: len(sw.state.clients) == 8, timeout=3)
        time.sleep(sw.state.clock.tick * 2)  # another sweep or two: at 80% now, nothing more
        for c in [*conns, *fresh[2:]]:
            assert not c.is_closed(wait=0.05)
        for c in [*conns[:1], *fresh[2:]]:
            c.send(get("/echo"))
            assert c.response().status == 200
    finally:
        for c in [*conns, *fresh]:
            c.close()


def test_pressure_spares_connections_quiet_for_less_than_a_second(origin_factory, switch_factory, lt):
    """The regression bench/hostile found: above 80% of the cap, eviction closed keep-alive
    connections idle for microseconds — normal clients about to send their next request
    (1,100 failed requests during an idle flood). Only connections quiet for EVICT_AFTER go."""
    sw = _switch(origin_factory, switch_factory, {"keepalive": 30.0})
    conns = _idle_conns(sw.port, 3)
    try:
        assert wait_for(lambda: len(sw.state.clients) == 3, timeout=3)
        assert lt.call(sw.state.evict_idle, 3) == 0  # idle for a moment only: spared
        time.sleep(state_mod.EVICT_AFTER + 0.1)
        assert lt.call(sw.state.evict_idle, 1) == 1  # now the longest idle goes
        assert conns[0].is_closed(wait=2) and not conns[1].is_closed(wait=0.1)
    finally:
        for c in conns:
            c.close()
