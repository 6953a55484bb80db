"""Bad client input and failing servers: what the client sees, and that nothing hangs."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time

import pytest
from kit import Conn, get, read_head, rst, simple_config, wait_for

from l7switch.config import parse_config
from l7switch.devtools.origin import pattern_bytes


def expect_error(port: int, raw: bytes, status: int, closed: bool = True) -> Conn:
    c = Conn(port)
    c.send(raw)
    r = c.response()
    assert r.status == status, r
    if closed:
        assert r.header("connection") == "close"
        assert c.is_closed(), "connection left open after an error that must close it"
    return c


# ---- bad requests -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    # CL and TE together (request smuggling vector)
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    # two different Content-Length values
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nabcdef",
    # bad chunk size
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    # unsupported transfer coding
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    # Host rules
    b"GET /echo HTTP/1.1\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n",
    # TE in an HTTP/1.0 request
    b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # invalid request line / version
    b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET /echo\r\nHost: x\r\n\r\n",
    b"G@T /echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    # invalid Content-Length
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nabcde",
    # obsolete line folding
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
    # header without colon / space before colon
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
])
def test_bad_request_400_and_close(proxy, raw):
    sw, o = proxy()
    expect_error(sw.port, raw, 400).close()
    assert o.requests == 0


def test_bad_request_after_good_pipelined_one(proxy):
    sw, o = proxy()
    c = Conn(sw.port)
    c.send(get("/echo") + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    assert c.response().status == 200
    r = c.response()
    assert r.status == 400
    assert c.is_closed()
    c.close()


def test_header_block_too_large_431(proxy):
    sw, _ = proxy("limits: {max_header_bytes: 1KiB}\n")
    expect_error(sw.port, get("/echo", extra="X-Big: " + "a" * 2000 + "\r\n"), 431).close()
    expect_error(sw.port, get("/echo?" + "q" * 2000), 431).close()
    # just under the limit is fine
    c = Conn(sw.port)
    c.send(get("/echo", extra="X-Big: " + "a" * 500 + "\r\n"))
    assert c.response().status == 200
    c.close()


def test_too_many_headers_431(proxy):
    sw, _ = proxy("limits: {max_headers: 10}\n")
    extra = "".join(f"X-H{i}: {i}\r\n" for i in range(20))
    expect_error(sw.port, get("/echo", extra=extra), 431).close()
    c = Conn(sw.port)
    c.send(get("/echo", extra="".join(f"X-H{i}: {i}\r\n" for i in range(5))))
    assert c.response().status == 200
    c.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_body_too_large_413(proxy, chunked):
    sw, _ = proxy("limits: {max_body_bytes: 1KiB}\n")
    body = b"q" * 5000
    if chunked:
        raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    else:
        raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    expect_error(sw.port, raw, 413).close()
    # at the limit is fine
    c = Conn(sw.port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n" + b"q" * 1024)
    assert c.response().json()["body_len"] == 1024
    c.close()


def test_body_too_large_413_with_splice(proxy):
    """A body above both the splice threshold and the limit is still refused."""
    sw, o = proxy("limits: {max_body_bytes: 100KiB}\nsplice: {enabled: true, threshold: 16KiB}\n")
    c = Conn(sw.port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n")
    try:
        c.send(b"q" * 300000)
    except OSError:
        pass  # the switch may reset us once it has answered
    r = c.response()
    assert r.status == 413
    assert o.requests == 0  # refused at the head: nothing reached the origin
    c.close()


def test_header_deadline_408(proxy):
    sw, _ = proxy("timeouts: {header: 0.3s}\n")
    c = Conn(sw.port)
    c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Half: ")
    t0 = time.monotonic()
    r = c.response()
    assert r.status == 408
    assert time.monotonic() - t0 < 3
    assert c.is_closed()
    c.close()


def test_header_deadline_not_extended_by_trickling(proxy):
    sw, _ = proxy("timeouts: {header: 0.3s}\n")
    c = Conn(sw.port)
    c.trickle(b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: 1\r\n" * 40, 0.02, 1.5)
    got = c.response()
    assert got.status == 408
    c.close()


def test_idle_keep_alive_closed_after_keepalive_timeout(origin_factory, switch_factory):
    """Keep-alive idle is timeouts.keepalive now (HAProxy ``timeout http-keep-alive``), not
    timeouts.client (an idle limit for bodies and non-reading clients only)."""
    o = origin_factory("o1")
    cfg = parse_config(simple_config(o.port), "<test>")
    cfg = dataclasses.replace(cfg, timeouts=dataclasses.replace(cfg.timeouts, keepalive=0.3))
    sw = switch_factory(cfg)
    c = Conn(sw.port)
    c.send(get("/echo"))
    assert c.response().status == 200
    t0 = time.monotonic()
    assert c.is_closed(wait=3)
    assert c.buf == b""  # silent close
    assert time.monotonic() - t0 < 3
    c.close()


def test_idle_connection_without_any_request_closed(proxy):
    sw, _ = proxy("timeouts: {header: 0.3s}\n")  # from accept (HAProxy timeout http-request)
    c = Conn(sw.port)
    assert c.is_closed(wait=3)
    c.close()


# ---- server failures --------------------------------------------------------------------------

def test_connection_refused_503(switch_factory, free_port):
    sw = switch_factory(simple_config(free_port))
    c = Conn(sw.port)
    for _ in range(2):  # 503 does not close the client connection
        c.send(get("/echo"))
        r = c.response()
        assert r.status == 503
    c.close()


def test_refused_server_redispatched(origin_factory, switch_factory, free_port):
    o = origin_factory("good")
    sw = switch_factory(simple_config(free_port, o.port))
    c = Conn(sw.port)
    for _ in range(6):
        c.send(get("/echo"))
        r = c.response()
        assert r.status == 200
        assert r.json()["server"] == "good"
    c.close()


def test_server_timeout_504(proxy):
    sw, _ = proxy("timeouts: {server: 0.5s}\n")
    c = Conn(sw.port)
    t0 = time.monotonic()
    c.send(get("/delay/3000"))
    r = c.response()
    assert r.status == 504
    assert time.monotonic() - t0 < 2.5
    c.send(get("/echo"))  # the client connection is still usable
    assert c.response().status == 200
    c.close()


def test_hanging_raw_origin_504(raw_origin, switch_factory):
    async def hang(reader, writer):
        await read_head(reader)
        await asyncio.sleep(30)
    ro = raw_origin(hang)
    sw = switch_factory(simple_config(ro.port, extra="timeouts: {server: 0.5s}\n"))
    c = Conn(sw.port)
    c.send(get("/"))
    assert c.response().status == 504
    c.close()


def _partial_head_close(reader, writer):
    async def go():
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()
        writer.close()
    return go()


def _rst_before_response(reader, writer):
    async def go():
        await read_head(reader)
        rst(writer)
    return go()


def _garbage(reader, writer):
    async def go():
        await read_head(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n\x00\x01\x02garbage")
        await writer.drain()
        await asyncio.sleep(5)
    return go()


def _close_without_anything(reader, writer):
    async def go():
        await read_head(reader)
        writer.close()
    return go()


def _bad_status_line(reader, writer):
    async def go():
        await read_head(reader)
        writer.write(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)
    return go()


def _endless_headers(reader, writer):
    async def go():
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)))
        await writer.drain()
        await asyncio.sleep(5)
    return go()


def _cl_and_te_response(reader, writer):
    async def go():
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)
    return go()


@pytest.mark.parametrize("behaviour", [
    _partial_head_close, _rst_before_response, _garbage, _close_without_anything, _bad_status_line,
    _endless_headers,
])
def test_broken_server_before_response_502(raw_origin, switch_factory, behaviour):
    ro = raw_origin(behaviour)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(get("/"))
    r = c.response()
    assert r.status == 502
    # A 502 is the switch's own complete answer: the client connection can be reused.
    c.send(get("/"))
    assert c.response().status == 502
    c.close()


def test_cl_and_te_response_not_passed_through(raw_origin, switch_factory):
    """A response with both CL and TE: either refused (502) or de-smuggled as chunked, never both."""
    ro = raw_origin(_cl_and_te_response)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(get("/"))
    r = c.response()
    if r.status == 200:
        assert r.body == b"abc"
        assert not (r.header("content-length") and r.header("transfer-encoding"))
    else:
        assert r.status == 502
    c.close()


def test_reset_mid_body_cuts_client(raw_origin, switch_factory):
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"a" * 3000)
        await writer.drain()
        await asyncio.sleep(0.05)
        rst(writer)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(get("/"))
    status, _, headers, _ = c.read_head()
    assert status == 200
    t0 = time.monotonic()
    rest = c.read_to_close(limit=5)
    assert time.monotonic() - t0 < 4, "client connection left hanging after a truncated response"
    assert len(rest) < 10000
    c.close()


@pytest.mark.parametrize("splice", ["true", "false"])
def test_close_mid_body_cuts_client(raw_origin, switch_factory, splice):
    """A clean FIN (not RST) in the middle of a Content-Length body is also a truncation."""
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"a" * 100000)
        await writer.drain()
        writer.close()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port, extra=f"splice: {{enabled: {splice}, threshold: 64KiB}}\n"))
    c = Conn(sw.port)
    c.send(get("/"))
    status, *_ = c.read_head()
    assert status == 200
    t0 = time.monotonic()
    rest = c.read_to_close(limit=5)
    assert time.monotonic() - t0 < 4
    assert len(rest) < 200000
    c.close()


def test_chunked_response_cut_mid_body(raw_origin, switch_factory):
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n10\r\nabc")
        await writer.drain()
        writer.close()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    c.send(get("/"))
    status, *_ = c.read_head()
    rest = c.read_to_close(limit=5)
    assert not rest.endswith(b"0\r\n\r\n"), "a truncated chunked body must not be terminated"
    c.close()


def test_stale_pooled_connection_retried(raw_origin, switch_factory):
    """A keep-alive server connection that the server closed while idle is retried transparently."""
    async def one_then_close(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # no Connection: close, so the switch pooled it
    ro = raw_origin(one_then_close)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    for _ in range(3):
        c.send(get("/"))
        assert c.response().body == b"ok"
        time.sleep(0.15)
    c.close()


# ---- byte-at-a-time input ---------------------------------------------------------------------

def test_request_one_byte_at_a_time(proxy):
    sw, _ = proxy()
    raw = (b"POST /echo?a=b HTTP/1.1\r\nHost: x\r\nX-Test: one byte\r\nContent-Length: 11\r\n\r\n"
           b"hello world")
    c = Conn(sw.port)
    for i in range(len(raw)):
        c.send(raw[i:i + 1])
        time.sleep(0.001)
    doc = c.response().json()
    assert doc["query"] == "a=b"
    assert ["x-test", "one byte"] in [[n.lower(), v] for n, v in doc["headers"]]
    assert doc["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    c.close()


def test_chunked_body_one_byte_at_a_time(proxy):
    sw, _ = proxy()
    body = b"The quick brown fox"
    raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\nThe \r\n6;x=y\r\nquick \r\n9\r\nbrown fox\r\n0\r\nX-Tr: 1\r\n\r\n")
    c = Conn(sw.port)
    for i in range(len(raw)):
        c.send(raw[i:i + 1])
        time.sleep(0.001)
    doc = c.response().json()
    assert doc["body_len"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    c.send(get("/echo"))
    assert c.response().status == 200
    c.close()


def test_response_one_byte_at_a_time(raw_origin, switch_factory):
    resp = b"HTTP/1.1 200 OK\r\nX-Slow: yes\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def behave(reader, writer):
        while True:
            await read_head(reader)
            for i in range(len(resp)):
                writer.write(resp[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    c = Conn(sw.port)
    for _ in range(2):
        c.send(get("/"))
        r = c.response()
        assert r.body == b"abcde" and r.header("x-slow") == "yes"
    assert ro.connections == 1
    c.close()


def test_large_pattern_through_small_reads(proxy):
    """Sanity: a mid-size body read in small client recv()s is intact."""
    sw, _ = proxy()
    c = Conn(sw.port)
    c.send(get("/bytes/50000"))
    status, _, headers, _ = c.read_head()
    data = c.buf
    c.buf = b""
    while len(data) < 50000:
        chunk = c.sock.recv(997)
        assert chunk
        data += chunk
    assert data == pattern_bytes(50000)
    c.close()


def test_queued_request_body_is_not_timed_out_while_it_waits_its_turn(proxy):
    """Reading pauses while a pipelined request waits behind a slow response, so the client
    cannot be blamed (408) for its body not arriving meanwhile."""
    sw, o = proxy("timeouts: {client: 0.4s}\n")
    c = Conn(sw.port)
    c.send(b"GET /delay/1200 HTTP/1.1\r\nHost: t\r\n\r\n"
           b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
    r1 = c.response()
    assert r1.status == 200
    c.send(b"67890")
    r2 = c.response()
    assert r2.status == 200 and b'"body_len": 10' in r2.body
    c.close()


# ---- (h) error pages without internal detail ---------------------------------------------------

ID_RE = re.compile(r"request id:? ([0-9a-f]{8,})", re.IGNORECASE)


def _check_error_page(caplog, port: int, status: int, r) -> None:
    assert r.status == status, r
    body = r.body.decode("utf-8", "replace")
    m = ID_RE.search(body)
    assert m, f"no request id in the error page: {body!r}"
    rid = m.group(1)
    xid = r.header("x-request-id")
    if xid is not None:
        assert xid == rid
    scrubbed = body.replace(rid, "")
    for leak in ("127.0.0.1", str(port), "refused", "connect"):
        assert leak not in scrubbed.lower(), f"error page leaks {leak!r}: {body!r}"
    addr = f"127.0.0.1:{port}"

    def logged() -> bool:
        return any(rid in rec.getMessage() and addr in rec.getMessage() for rec in caplog.records)
    assert wait_for(logged, timeout=2.0), \
        f"no log record with id {rid} and {addr}: {[rec.getMessage() for rec in caplog.records]}"


def test_503_error_page_hides_address_and_logs_detail(caplog, switch_factory, free_port):
    """(h) A refused connect: the client gets 503 with a request id and no address/errno; the log
    has the same id with the server address.

    Old code: the body reads "503 Service Unavailable: connect to 127.0.0.1:PORT failed:
    Connection refused" and carries no request id.
    """
    caplog.set_level(logging.INFO, logger="l7switch")
    sw = switch_factory(f"listen: [{{address: 127.0.0.1:0}}]\npools:\n"
                        f"  p: {{servers: [127.0.0.1:{free_port}]}}\ndefault_pool: p\n")
    with Conn(sw.port) as c:
        c.send(get("/x"))
        r = c.response()
    _check_error_page(caplog, free_port, 503, r)


def test_502_error_page_hides_address_and_logs_detail(caplog, raw_origin, switch_factory):
    """(h) A server that closes without answering: 502 with a request id and no address; the log
    has the same id with the server address.

    Old code: the body names the server's internal address and carries no request id.
    """
    caplog.set_level(logging.INFO, logger="l7switch")

    async def hang_up(reader, writer):
        await read_head(reader)

    ro = raw_origin(hang_up)
    sw = switch_factory(f"listen: [{{address: 127.0.0.1:0}}]\npools:\n"
                        f"  p: {{servers: [127.0.0.1:{ro.port}]}}\ndefault_pool: p\n")
    with Conn(sw.port) as c:
        c.send(get("/x"))
        r = c.response()
    _check_error_page(caplog, ro.port, 502, r)
