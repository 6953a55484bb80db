"""The fd budget (issue 10): a spliced body costs its two sockets, pipes come from a small pool
and only while bytes are in them, and running short of pipes or fds is never an error."""

from __future__ import annotations

import gc
import hashlib
import errno
import logging
import os
import socket
import threading
import time

import pytest
from kit import COMPILED, Conn, avail_config, get, read_head, simple_config, wait_for

import l7switch.net.pipes as pipes
from l7switch.devtools.origin import pattern_bytes
from l7switch.net.pipes import PipePool
from l7switch.net.poller import poller_for
from l7switch.net.ratelog import fd_log
from l7switch.proxy.upstream import ConnectionPool

MiB = 1 << 20
SPLICE = "splice: {enabled: true, threshold: 64KiB}\n"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def loop_errors(lt):
    """What reaches the loop's exception handler (unhandled task exceptions among them)."""
    seen: list[dict] = []
    lt.call(lt.loop.set_exception_handler, lambda loop, ctx: seen.append(ctx))
    yield seen
    lt.call(gc.collect)  # "Task exception was never retrieved" is reported when a task is freed
    lt.call(lt.loop.set_exception_handler, None)
    assert not seen, seen


@pytest.mark.parametrize("buffering", [False, True], ids=["buffer_body_off", "buffer_body_64KiB"])
def test_slow_spliced_uploads_cost_two_fds_each(lt, raw_origin, switch_factory, loop_errors, buffering):
    """200 uploads (head with Content-Length 1 MiB, then a byte now and then) through the switch
    to a raw origin in this process. With ``buffer_body: 0`` each connects at its head and its
    body is spliced: the switch holds about 2 fds per upload (client + server socket; old code:
    6, two os.dup()s and a pipe per splice job). With buffering (the default) no server is
    connected while less than 64 KiB has come: 1 fd per upload, nothing watched by the splice
    poller, and the origin sees no connection at all."""
    n = 200
    got: list[list[int]] = []

    async def behave(reader, writer):
        await read_head(reader)
        box = [0]
        got.append(box)
        while data := await reader.read(65536):
            box[0] += len(data)
    ro = raw_origin(behave)
    extra = SPLICE + ("" if buffering else "limits: {buffer_body: 0}\n")
    sw = switch_factory(simple_config(ro.port, extra=extra))
    poller = lt.call(poller_for, lt.loop)
    watched = len(poller.fds)
    before = open_fds()
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", sw.port), timeout=5)
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % MiB)
            socks.append(s)
        if buffering:
            assert wait_for(lambda: lt.call(lambda: len(sw.clients)) == n, 10)
        else:
            assert wait_for(lambda: len(got) == n, 10)
        for rnd in (1, 2, 3):  # a byte now and then, through the spliced path (or into the buffer)
            for s in socks:
                s.send(b"x")
            if buffering:
                assert wait_for(lambda: lt.call(lambda: sw.state.buffered) == rnd * n, 10)
            else:
                assert wait_for(lambda: sum(b[0] for b in got) == rnd * n, 10)
        if buffering:
            assert not got and lt.call(lambda: len(poller.fds)) == watched
            switch_fds = open_fds() - before - n  # minus our client sockets
            assert switch_fds / n <= 1.1, switch_fds
        else:
            assert lt.call(lambda: len(poller.fds)) == watched + 2 * n  # every body is spliced
            switch_fds = open_fds() - before - n - n  # minus our client sockets and the origin's
            assert switch_fds / n <= 2.5, switch_fds
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: lt.call(lambda: len(poller.fds)) == watched, 5)  # all unwatched
    assert pipes.pool.busy == 0
    assert wait_for(lambda: lt.call(lambda: sw.state.buffered) == 0, 5)  # every buffer let go


def _bodies_arrive_intact(lt, sw, raw_tunnel_port: int | None = None) -> None:
    body = os.urandom(3 * MiB)
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert c.response().json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        c.send(get("/bytes/4000000"))
        assert hashlib.md5(c.response().body).digest() == hashlib.md5(pattern_bytes(4_000_000)).digest()
        c.send(get("/echo"))  # and the connection is still at a message boundary
        assert c.response().json()["body_len"] == 0


@pytest.mark.parametrize("short", ["pool-full", "pipe2-emfile"])
def test_no_pipe_means_copying_through_python(lt, proxy, monkeypatch, count_splice, loop_errors,
                                               caplog, short):
    """With no pipe to be had — the pool at its limit, or pipe2 failing with EMFILE — spliced
    bodies are copied through Python by their jobs: intact, at the right message boundary, and
    nothing worse than one log line."""
    if short == "pool-full":
        pool = PipePool(limit=0)
    else:
        pool = PipePool()

        def emfile(*args):
            raise OSError(errno.EMFILE, "Too many open files")
        monkeypatch.setattr(pipes.os, "pipe2", emfile)
        monkeypatch.setattr(fd_log, "last", -1e9)
    monkeypatch.setattr(pipes, "pool", pool)
    sw, _ = proxy(SPLICE)
    before = open_fds()
    with caplog.at_level(logging.WARNING, logger="l7switch"):
        _bodies_arrive_intact(lt, sw)
    assert count_splice[0] == 0  # not one byte went by splice
    assert pool.misses > 0 and pool.made == 0
    # (the switch closes its end of our connection a moment later)
    assert wait_for(lambda: open_fds() <= before + 2, 3)  # a pooled server connection + the origin's end
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors
    if short == "pipe2-emfile":
        assert len([r for r in caplog.records if "splice pipes" in r.getMessage()]) == 1


def test_one_pipe_shared_by_concurrent_slow_readers(lt, proxy, monkeypatch, loop_errors):
    """One pipe for four downloads whose clients read slowly: whoever holds it while its client
    is full makes the others copy, chunk by chunk, and may splice again once it is free."""
    pool = PipePool(limit=1)
    monkeypatch.setattr(pipes, "pool", pool)
    sw, _ = proxy(SPLICE)
    size = 8_000_000  # more than the kernel buffers on the way hold
    results: list[bool] = []

    def download() -> None:
        with Conn(sw.port, timeout=15) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            c.send(get(f"/bytes/{size}"))
            time.sleep(0.3)  # every buffer on the way fills up
            results.append(c.response().body == pattern_bytes(size))
    threads = [threading.Thread(target=download) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 4
    assert pool.made == 1 and pool.misses > 0 and pool.busy == 0


def test_tunnel_without_pipes_still_relays(lt, raw_origin, switch_factory, monkeypatch, loop_errors):
    monkeypatch.setattr(pipes, "pool", PipePool(limit=0))

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port, extra=SPLICE))
    with Conn(sw.port) as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert c.read_head()[0] == 101
        blob = os.urandom(2 * MiB)
        sender = threading.Thread(target=c.sock.sendall, args=(blob,))
        sender.start()
        got, c.buf = c.buf, b""
        while len(got) < len(blob):
            data = c.sock.recv(1 << 16)
            assert data
            got += data
        sender.join(10)
        assert hashlib.md5(got).digest() == hashlib.md5(blob).digest()


@pytest.mark.skipif(COMPILED, reason="patches ConnectionPool.connect, which compiled callers call directly; "
                                      "the pure build runs this test")
def test_emfile_on_connect_is_503_logged_once_a_second(lt, origin_factory, switch_factory, monkeypatch,
                                                       loop_errors, caplog):
    """Out of fds for the server connection: 503 with Retry-After, the server not blamed (no
    passive-check failure, no retry elsewhere), one log line a second at most, and no unhandled
    task exception."""
    async def emfile(self, timeout):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(ConnectionPool, "connect", emfile)
    monkeypatch.setattr(fd_log, "last", -1e9)
    o1, o2 = origin_factory("o1"), origin_factory("o2")
    sw = switch_factory(avail_config([o1.port, o2.port], passive={"error_limit": 3}))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="l7switch"):
        for _ in range(40):
            with Conn(sw.port) as c:
                c.send(get("/"))
                r = c.response()
                assert r.status == 503 and r.header("retry-after") == "1"
    elapsed = time.monotonic() - t0
    lines = [r for r in caplog.records if "Too many open files" in r.getMessage()]
    assert 1 <= len(lines) <= 1 + int(elapsed)
    for server in lt.call(sw.snapshot)["pools"]["p"]["servers"]:
        assert server["healthy"] and server["failures"] == 0 and server["retries"] == 0
