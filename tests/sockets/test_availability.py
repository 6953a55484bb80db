"""Availability over real sockets: maxconn and the request queues, retries to another server,
passive checks, backups and an all-down pool."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import pytest
from kit import Conn, avail_config, get, read_head, wait_for

from l7switch.devtools.origin import OriginRequest, OriginResponse, OriginServer

logging.getLogger("l7switch").setLevel(logging.INFO)


def config(ports: list[int], scheduler: str = "rr", options: str = "{}", persistence: str | None = None,
           **kw):
    if persistence is not None:
        kw["persistence"] = persistence
    return avail_config(ports, scheduler, options, **kw)


def pool_snap(lt, sw) -> dict:
    return lt.call(sw.snapshot)["pools"]["p"]


def server_snap(lt, sw, name: str) -> dict:
    return next(s for s in pool_snap(lt, sw)["servers"] if s["name"] == name)


def server_of(lt, sw, name: str):
    return next(s for s in sw.pools["p"].all_servers if s.name == name)


def rst_close(c: Conn) -> None:
    """Close with a reset: the switch sees its client gone at once."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


class Counting:
    """An origin handler that sleeps ``delay`` per request and records the request order and
    the most requests it ever held at once."""

    def __init__(self, name: str, delay: float) -> None:
        self.name = name
        self.delay = delay
        self.now = 0
        self.most = 0
        self.paths: list[str] = []

    def __call__(self, req: OriginRequest):
        return self._serve(req)

    async def _serve(self, req: OriginRequest) -> OriginResponse:
        self.paths.append(req.path)
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.now -= 1
        return OriginResponse(200, [], f"{self.name} {req.path}".encode())


@pytest.fixture
def counting(origin_factory):
    def make(name: str, delay: float) -> tuple[OriginServer, Counting]:
        h = Counting(name, delay)
        return origin_factory(name, handler=h), h
    return make


# ---- maxconn and the queues ------------------------------------------------------------------------

def by_name(pool, name):
    return next(s for s in pool.all_servers if s.name == name)


def test_maxconn_two_with_twenty_concurrent_requests(counting, switch_factory, lt):
    o, h = counting("o0", 0.05)
    sw = switch_factory(config([o.port], maxconn=2))
    conns = []
    try:
        for i in range(20):
            c = Conn(sw.port, timeout=10)
            c.send(get(f"/r{i}"))
            conns.append(c)
            # Arrival order at the switch is the order sent: wait for each one to be in.
            assert wait_for(lambda: lt.call(lambda: sum(s.total for s in sw.pools["p"].servers)
                                            + sw.pools["p"].queue.count) == i + 1)
        assert pool_snap(lt, sw)["queue"]["queued"] > 10  # most of them had to wait
        bodies = [c.response() for c in conns]
    finally:
        for c in conns:
            c.close()
    assert [r.status for r in bodies] == [200] * 20
    assert [r.body.decode() for r in bodies] == [f"o0 /r{i}" for i in range(20)]
    assert h.paths == [f"/r{i}" for i in range(20)]  # served in arrival order
    assert h.most == 2
    snap = pool_snap(lt, sw)
    assert snap["queue"]["queued"] == 0 and snap["queue"]["served"] == 18
    assert snap["servers"][0]["inflight"] == 0 and snap["servers"][0]["maxconn"] == 2


def test_queue_timeout_is_a_503_with_retry_after(counting, switch_factory, lt):
    o, _ = counting("o0", 1.5)
    sw = switch_factory(config([o.port], maxconn=1, timeouts={"queue": "0.3s"}))
    with Conn(sw.port) as busy, Conn(sw.port) as waiting:
        busy.send(get("/slow"))
        assert wait_for(lambda: server_snap(lt, sw, "o0")["inflight"] == 1)
        t0 = time.monotonic()
        waiting.send(get("/waits"))
        r = waiting.response()
        elapsed = time.monotonic() - t0
        assert r.status == 503 and r.header("retry-after") == "1"
        assert 0.25 < elapsed < 0.8, elapsed
        assert pool_snap(lt, sw)["queue"]["expired"] == 1
        assert busy.response().status == 200


def test_full_queue_is_a_503_with_retry_after_at_once(counting, switch_factory, lt):
    o, h = counting("o0", 0.5)
    sw = switch_factory(config([o.port], maxconn=1, queue={"max": 1, "timeout": "4s"}))
    with Conn(sw.port) as a, Conn(sw.port) as b, Conn(sw.port) as c:
        a.send(get("/a"))
        assert wait_for(lambda: server_snap(lt, sw, "o0")["inflight"] == 1)
        b.send(get("/b"))
        assert wait_for(lambda: pool_snap(lt, sw)["queue"]["queued"] == 1)
        t0 = time.monotonic()
        c.send(get("/c"))
        r = c.response()
        assert r.status == 503 and r.header("retry-after") == "4"
        assert time.monotonic() - t0 < 0.3
        assert a.response().status == 200 and b.response().status == 200
    assert h.paths == ["/a", "/b"]
    assert pool_snap(lt, sw)["queue"]["rejected"] == 1


@pytest.mark.parametrize("how", ["reset", "half-close"])
def test_queued_client_that_leaves_leaves_the_queue_at_once(how, counting, switch_factory, lt):
    """A queued request whose client goes leaves the queue at once; a FIN while waiting for a
    slot counts as leaving too (HAProxy's abortonclose, which its manual advises with queues)."""
    o, h = counting("o0", 0.6)
    sw = switch_factory(config([o.port], maxconn=1))
    with Conn(sw.port) as a:
        a.send(get("/a"))
        assert wait_for(lambda: server_snap(lt, sw, "o0")["inflight"] == 1)
        b = Conn(sw.port)
        b.send(get("/gone"))
        assert wait_for(lambda: pool_snap(lt, sw)["queue"]["queued"] == 1)
        if how == "reset":
            rst_close(b)
        else:
            b.sock.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: pool_snap(lt, sw)["queue"]["queued"] == 0, timeout=0.3)
        if how == "half-close":
            assert b.read_to_close(limit=3) == b""
            b.close()
        assert a.response().status == 200
        a.send(get("/after"))
        assert a.response().status == 200
    assert h.paths == ["/a", "/after"]  # the origin never saw the one that left
    assert pool_snap(lt, sw)["queue"]["served"] == 0


def test_hashed_requests_wait_in_their_servers_queue(counting, switch_factory, lt):
    (o0, h0), (o1, h1) = counting("o0", 0.4), counting("o1", 0.4)
    sw = switch_factory(config([o0.port, o1.port], "maglev", "{hash_key: 'header:X-K'}", maxconn=1))
    pool = sw.pools["p"]
    keys = {lt.call(lambda k=k: pool.pick(k).name): k for k in (f"k{i}" for i in range(20))}
    k0, k1 = keys["o0"], keys["o1"]
    with Conn(sw.port) as a, Conn(sw.port) as b, Conn(sw.port) as c:
        a.send(get("/a", extra=f"X-K: {k0}\r\n"))
        assert wait_for(lambda: server_snap(lt, sw, "o0")["inflight"] == 1)
        b.send(get("/b", extra=f"X-K: {k0}\r\n"))  # o0's key: waits for o0 though o1 is idle
        assert wait_for(lambda: server_snap(lt, sw, "o0")["queued"] == 1)
        snap = pool_snap(lt, sw)
        assert snap["queue"]["queued"] == 1 and snap["queue"]["pool_queue"] == 0
        assert server_snap(lt, sw, "o1")["queued"] == 0
        c.send(get("/c", extra=f"X-K: {k1}\r\n"))
        assert c.response().body == b"o1 /c"  # another key is not held up
        assert a.response().body == b"o0 /a"
        assert b.response().body == b"o0 /b"
    assert h0.paths == ["/a", "/b"] and h1.paths == ["/c"]


def test_waiting_for_a_server_that_goes_down_goes_elsewhere(counting, switch_factory, lt):
    """A request in a server's own queue does not wait in vain when that server goes down."""
    (o0, h0), (o1, h1) = counting("o0", 0.5), counting("o1", 0.1)
    sw = switch_factory(config([o0.port, o1.port], "maglev", "{hash_key: 'header:X-K'}", maxconn=1))
    pool = sw.pools["p"]
    keys = {lt.call(lambda k=k: pool.pick(k).name): k for k in (f"k{i}" for i in range(20))}
    k0 = keys["o0"]
    with Conn(sw.port) as a, Conn(sw.port) as b:
        a.send(get("/a", extra=f"X-K: {k0}\r\n"))
        assert wait_for(lambda: server_snap(lt, sw, "o0")["inflight"] == 1)
        b.send(get("/b", extra=f"X-K: {k0}\r\n"))
        assert wait_for(lambda: server_snap(lt, sw, "o0")["queued"] == 1)
        lt.call(lambda: pool.mark_down(by_name(pool, "o0")))
        assert b.response().body == b"o1 /b"  # at once, not after the queue timeout
        assert a.response().body == b"o0 /a"  # in flight: finishes where it was
    assert h0.paths == ["/a"] and h1.paths == ["/b"]


def test_sticky_requests_wait_in_their_servers_queue_and_pool_queue_shows(counting, switch_factory, lt):
    (o0, _), (o1, h1) = counting("o0", 0.4), counting("o1", 0.4)
    sw = switch_factory(config([o0.port, o1.port], "rr", persistence="{source: {}}", maxconn=1))
    with Conn(sw.port) as a, Conn(sw.port) as b:
        a.send(get("/a"))  # rr: o0, and 127.0.0.1 sticks to o0
        assert wait_for(lambda: server_snap(lt, sw, "o0")["inflight"] == 1)
        b.send(get("/b"))
        assert wait_for(lambda: server_snap(lt, sw, "o0")["queued"] == 1)
        assert server_snap(lt, sw, "o1")["inflight"] == 0
        assert [r.body for r in (a.response(), b.response())] == [b"o0 /a", b"o0 /b"]
    assert h1.paths == []
    # Unbound requests that find every server full wait in the pool's queue.
    sw2 = switch_factory(config([o0.port, o1.port], "rr", maxconn=1))
    with Conn(sw2.port) as a, Conn(sw2.port) as b, Conn(sw2.port) as c:
        a.send(get("/a"))
        b.send(get("/b"))
        assert wait_for(lambda: all(s["inflight"] == 1 for s in pool_snap(lt, sw2)["servers"]))
        c.send(get("/c"))
        assert wait_for(lambda: pool_snap(lt, sw2)["queue"]["pool_queue"] == 1)
        assert all(s["queued"] == 0 for s in pool_snap(lt, sw2)["servers"])
        assert all(r.status == 200 for r in (a.response(), b.response(), c.response()))


# ---- retries ----------------------------------------------------------------------------------------

def close_after_head(seen: list[bytes]):
    async def behave(reader, writer):
        seen.append(await read_head(reader))
        writer.close()
    return behave


def test_killed_server_requests_go_elsewhere(origin_factory, switch_factory, lt):
    o0, o1 = origin_factory("o0"), origin_factory("o1")
    sw = switch_factory(config([o0.port, o1.port]))
    with Conn(sw.port) as c:
        for _ in range(4):
            c.send(get("/"))
            assert c.response().status == 200
    lt.run(o0.stop())
    for _ in range(6):
        with Conn(sw.port) as c:
            c.send(get("/x"))
            r = c.response()
            assert r.status == 200 and r.header("x-server") == "o1"
    assert server_snap(lt, sw, "o0")["retries"] >= 1


def test_get_closed_before_a_response_is_retried_elsewhere(raw_origin, origin_factory, switch_factory, lt):
    seen: list[bytes] = []
    bad = raw_origin(close_after_head(seen))
    good = origin_factory("good")
    sw = switch_factory(config([bad.port, good.port]))
    with Conn(sw.port) as c:
        c.send(get("/one"))
        r = c.response()
    assert r.status == 200 and r.header("x-server") == "good"
    assert len(seen) == 1 and seen[0].startswith(b"GET /one ")
    snap = pool_snap(lt, sw)
    assert snap["retries"] == 1 and snap["retrying"] == 0
    assert server_snap(lt, sw, "o0")["retries"] == 1 and server_snap(lt, sw, "o0")["failures"] == 1
    assert server_snap(lt, sw, "o1")["redispatches"] == 1


def test_get_reset_before_a_response_is_retried_elsewhere(raw_origin, origin_factory, switch_factory, lt):
    from kit import rst

    async def reset(reader, writer):
        await read_head(reader)
        rst(writer)
    bad = raw_origin(reset)
    good = origin_factory("good")
    sw = switch_factory(config([bad.port, good.port]))
    with Conn(sw.port) as c:
        c.send(get("/one"))
        assert c.response().header("x-server") == "good"
    assert pool_snap(lt, sw)["retries"] == 1


def test_post_closed_before_a_response_is_not_retried(raw_origin, origin_factory, switch_factory, lt):
    seen: list[bytes] = []
    bad = raw_origin(close_after_head(seen))
    good = origin_factory("good")
    sw = switch_factory(config([bad.port, good.port]))
    with Conn(sw.port) as c:
        c.send(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        r = c.response()
    assert r.status == 502
    assert len(seen) == 1 and good.requests == 0  # reached exactly one server, once
    assert pool_snap(lt, sw)["retries"] == 0


def test_put_is_retried_with_its_whole_body(raw_origin, origin_factory, switch_factory, lt):
    got: list[bytes] = []

    async def take_body_then_close(reader, writer):
        await read_head(reader)
        got.append(await reader.readexactly(11))
        writer.close()
    bad = raw_origin(take_body_then_close)
    good = origin_factory("good")
    sw = switch_factory(config([bad.port, good.port]))
    with Conn(sw.port) as c:
        c.send(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello ")
        time.sleep(0.05)
        c.send(b"world")
        r = c.response()
    assert got == [b"hello world"]
    doc = r.json()
    assert r.status == 200 and doc["server"] == "good" and doc["method"] == "PUT"
    import hashlib
    assert doc["body_len"] == 11 and doc["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_response_head_timeout_is_not_retried(raw_origin, origin_factory, switch_factory, lt):
    async def hang(reader, writer):
        await read_head(reader)
        await asyncio.sleep(30)
    hung = raw_origin(hang)
    good = origin_factory("good")
    sw = switch_factory(config([hung.port, good.port], timeouts={"server": "0.2s"}))
    with Conn(sw.port) as c:
        c.send(get("/"))
        assert c.response().status == 504
    assert good.requests == 0 and pool_snap(lt, sw)["retries"] == 0


@pytest.mark.parametrize("dies", ["refusing", "closing"])
def test_stale_pooled_connection_resend_is_not_a_retry(dies, raw_origin, origin_factory, switch_factory, lt):
    """The issue: "requests in flight when a server is killed are answered 503 although another
    server is up: the re-send after a stale pooled connection uses up the only redispatch".
    The server answers one request, then dies with the next one on the same keep-alive
    connection (closed unanswered). The re-send on a fresh connection to it fails too (refused:
    nothing listens any more; closing: it still accepts, reads and closes), and with
    ``retries: 1`` the request must still go to the other server: the re-send was not a retry.
    (The code before the availability core answered the "closing" case 502.)"""
    holder: list = []

    async def one_then_die(reader, writer):
        ro = holder[0]
        if ro.connections > 1:  # the re-send's connection
            await read_head(reader)
            writer.close()
            return
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")  # keep-alive
        await writer.drain()
        await read_head(reader)
        if dies == "refusing":
            ro.server.close()  # killed: nothing listens any more
        writer.close()
    dying = raw_origin(one_then_die)
    holder.append(dying)
    good = origin_factory("good")
    # lc: both idle, so the first server (o0, the dying one) takes both requests.
    sw = switch_factory(config([dying.port, good.port], "lc", retries=1, passive={"observe": "off"}))
    with Conn(sw.port) as c:
        c.send(get("/one"))
        assert c.response().body == b"first"
        c.send(get("/two"))
        r = c.response()
        assert r.status == 200 and r.header("x-server") == "good", r
    assert dying.connections == (1 if dies == "refusing" else 2) and good.requests == 1
    assert pool_snap(lt, sw)["retries"] == 1  # the re-send was not one
    assert server_snap(lt, sw, "o0")["retries"] == 1 and server_snap(lt, sw, "o1")["redispatches"] == 1


def test_stale_pooled_post_is_never_sent_to_a_second_server(raw_origin, origin_factory, switch_factory, lt):
    """A POST whose pooled connection closed unanswered is re-sent to the same server (the
    connection was stale), but if that fails it is not sent elsewhere: the first server may have
    taken it (RFC 9112 §9.3.1). 502, and the good server never sees it."""
    holder: list = []

    async def one_then_die(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")  # keep-alive
        await writer.drain()
        await read_head(reader)
        holder[0].server.close()  # killed with the POST in hand
        writer.close()
    dying = raw_origin(one_then_die)
    holder.append(dying)
    good = origin_factory("good")
    sw = switch_factory(config([dying.port, good.port], "lc", passive={"observe": "off"}))
    with Conn(sw.port) as c:
        c.send(get("/one"))
        assert c.response().body == b"first"
        c.send(b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert c.response().status == 502
    assert good.requests == 0 and pool_snap(lt, sw)["retries"] == 0


def test_retry_budget_stops_retries_when_spent(raw_origin, switch_factory, lt, caplog):
    """Retries of requests that reached a server (closed unanswered) are capped: max(3, 20% of
    the requests in flight)."""
    async def close_unanswered(reader, writer):
        await read_head(reader)
        writer.close()

    async def hang(reader, writer):
        await read_head(reader)
        await asyncio.sleep(30)
    closing, hung = raw_origin(close_unanswered), raw_origin(hang)
    # o0 takes each GET and closes; o1 never answers; lc sends every new request to o0 first.
    sw = switch_factory(config([closing.port, hung.port], "lc", passive={"observe": "off"},
                               timeouts={"server": "3s"}))
    conns = []
    try:
        for i in range(3):
            c = Conn(sw.port)
            c.send(get(f"/r{i}"))
            conns.append(c)
            assert wait_for(lambda: pool_snap(lt, sw)["retrying"] == i + 1)
        with Conn(sw.port) as c:
            c.send(get("/over"))
            r = c.response()
        assert r.status == 502
        assert "retry budget of pool 'p' spent" in caplog.text
        snap = pool_snap(lt, sw)
        assert snap["retries"] == 3 and snap["retrying"] == 3
        assert hung.connections == 3
    finally:
        for c in conns:
            rst_close(c)
    assert wait_for(lambda: pool_snap(lt, sw)["retrying"] == 0)  # the slots are given back


def test_refused_connects_are_retried_outside_the_budget(raw_origin, free_port, switch_factory, lt):
    """A refusal costs no server anything: a dead server that is not masked yet must not turn
    into client errors once the budget is spent (bench/availability.py's kill scenario)."""
    async def hang(reader, writer):
        await read_head(reader)
        await asyncio.sleep(30)
    hung = raw_origin(hang)
    sw = switch_factory(config([free_port, hung.port], "lc", passive={"observe": "off"},
                               timeouts={"server": "3s"}))
    conns = []
    try:
        for i in range(5):  # one at a time: each finds o0 idle (lc's choice), is refused, goes on
            c = Conn(sw.port)
            c.send(get(f"/r{i}"))
            conns.append(c)
            assert wait_for(lambda: hung.connections == i + 1)  # past the budget's 3 too
        snap = pool_snap(lt, sw)
        assert snap["retries"] == 5 and snap["retrying"] == 0
    finally:
        for c in conns:
            rst_close(c)


# ---- passive checks ----------------------------------------------------------------------------

def test_killed_server_is_ejected_after_error_limit_and_comes_back(free_port, origin_factory,
                                                                  switch_factory, lt, caplog):
    good = origin_factory("good")
    sw = switch_factory(config([free_port, good.port], passive={"error_limit": 3, "ejection": "0.3s"}))
    for _ in range(12):
        with Conn(sw.port) as c:
            c.send(get("/"))
            assert c.response().status == 200
    s = server_snap(lt, sw, "o0")
    assert s["failures"] == 3 and s["state"] == "down" and s["ejections"] == 1
    downs = [r for r in caplog.records if "p/o0" in r.getMessage() and "-> down" in r.getMessage()]
    assert len(downs) == 1 and "3 consecutive errors in traffic" in downs[0].getMessage()
    assert wait_for(lambda: server_snap(lt, sw, "o0")["state"] == "up", timeout=2.0)
    assert "ejection time over" in caplog.text
    for _ in range(4):
        with Conn(sw.port) as c:
            c.send(get("/"))
            assert c.response().status == 200
    s = server_snap(lt, sw, "o0")
    # Back, failing again: one more run of error_limit, ejected a second time (0.6 s now).
    assert s["failures"] <= 6 and s["ejections"] == 2 and s["state"] == "down"


def test_layer7_counts_5xx(origin_factory, switch_factory, lt):
    broken = origin_factory("broken", handler=lambda req: OriginResponse(500, [], b"oops"))
    good = origin_factory("good")
    sw = switch_factory(config([broken.port, good.port],
                               passive={"observe": "layer7", "error_limit": 2, "ejection": "30s"}))
    statuses = []
    for _ in range(8):
        with Conn(sw.port) as c:
            c.send(get("/"))
            statuses.append(c.response().status)
    assert statuses == [500, 200, 500, 200, 200, 200, 200, 200]
    assert server_snap(lt, sw, "o0")["state"] == "down"


def test_layer4_ignores_5xx_and_off_never_ejects(origin_factory, free_port, switch_factory, lt):
    broken = origin_factory("broken", handler=lambda req: OriginResponse(503, [], b"oops"))
    good = origin_factory("good")
    sw = switch_factory(config([broken.port, good.port], passive={"error_limit": 2}))
    for _ in range(6):
        with Conn(sw.port) as c:
            c.send(get("/"))
            c.response()
    assert server_snap(lt, sw, "o0")["state"] == "up"
    sw2 = switch_factory(config([free_port, good.port], passive={"observe": "off", "error_limit": 2}))
    for _ in range(8):
        with Conn(sw2.port) as c:
            c.send(get("/"))
            assert c.response().status == 200
    s = server_snap(lt, sw2, "o0")
    # (every request tries o0 first: rr's next turn after a retry to o1 is o0's)
    assert s["state"] == "up" and s["failures"] >= 4 and s["ejections"] == 0


def test_hung_server_is_ejected_after_error_limit_head_timeouts(raw_origin, origin_factory,
                                                               switch_factory, lt):
    async def hang(reader, writer):
        while True:
            await read_head(reader)
    hung = raw_origin(hang)
    good = origin_factory("good")
    sw = switch_factory(config([hung.port, good.port], passive={"error_limit": 2, "ejection": "30s"},
                               timeouts={"server": "0.2s"}))
    statuses = []
    for _ in range(8):
        with Conn(sw.port) as c:
            c.send(get("/"))
            statuses.append(c.response().status)
    assert statuses == [504, 200, 504, 200, 200, 200, 200, 200]
    assert hung.connections == 2 and server_snap(lt, sw, "o0")["state"] == "down"


# ---- backups and an all-down pool -------------------------------------------------------------------

def test_backup_serves_only_while_every_primary_is_down(origin_factory, switch_factory, lt):
    p0, p1, b = origin_factory("p0"), origin_factory("p1"), origin_factory("b")
    sw = switch_factory(config([p0.port, p1.port, b.port], backup=["o2"]))
    pool = sw.pools["p"]

    def who(n: int = 4) -> set[str]:
        out = set()
        for _ in range(n):
            with Conn(sw.port) as c:
                c.send(get("/"))
                r = c.response()
                assert r.status == 200
                out.add(r.header("x-server"))
        return out

    assert who() == {"p0", "p1"}
    lt.call(pool.mark_down, server_of(lt, sw, "o0"))
    assert who() == {"p1"}
    lt.run(p1.stop())  # the last primary dies: its requests go to the backup, no client error
    assert who(6) == {"b"}
    assert server_snap(lt, sw, "o2")["backup"] is True
    lt.call(pool.mark_up, server_of(lt, sw, "o0"))
    assert who() == {"p0"}


def test_all_down_without_backup_is_a_503_with_no_connect(raw_origin, switch_factory, lt):
    async def answer(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    r0, r1 = raw_origin(answer), raw_origin(answer)
    sw = switch_factory(config([r0.port, r1.port]))
    pool = sw.pools["p"]
    for name in ("o0", "o1"):
        lt.call(pool.mark_down, server_of(lt, sw, name))
    t0 = time.monotonic()
    with Conn(sw.port) as c:
        c.send(get("/"))
        r = c.response()
    assert r.status == 503 and time.monotonic() - t0 < 0.2
    assert r0.connections == 0 and r1.connections == 0
