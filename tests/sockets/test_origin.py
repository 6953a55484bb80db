"""origin.py over real sockets: framing, keep-alive, pipelining order, close rules, errors.

Responses are parsed with h11 (an independent HTTP implementation), not with httptools, so a
framing bug in the origin cannot hide behind the same parser reading its own output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import Iterator

import h11
import pytest
from kit import LoopThread, connect, read_response, recv_until_close

from l7switch.devtools.origin import (OriginRequest, OriginResponse, OriginServer, pattern_bytes,
                                      standard_handler)


@pytest.fixture(scope="module")
def origin(lt: LoopThread) -> Iterator[OriginServer]:
    srv = OriginServer(standard_handler("o1"), name="o1")
    lt.run(srv.start())
    yield srv
    lt.run(srv.stop())


def parse_responses(data: bytes, methods: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream into responses, one per request method given, using h11."""
    out = []
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        status, headers, body = 0, {}, b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(b"")  # the stream ended: lets close-delimited bodies finish
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
                headers = {k.decode().lower(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
        out.append((status, headers, body))
        data = conn.trailing_data[0]
    assert data == b"", f"unexpected bytes after the last response: {data[:80]!r}"
    return out


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: origin.test\r\n{extra}\r\n".encode()


def test_keep_alive_two_requests_one_connection(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/hello"))
        status, headers, body = read_response(s)
        assert (status, body) == (200, b"o1: /hello\n")
        assert headers["x-server"] == "o1"
        assert "connection" not in headers
        s.sendall(get("/again"))
        status, _, body = read_response(s)
        assert (status, body) == (200, b"o1: /again\n")


def test_pipelined_requests_answered_in_order(origin: OriginServer) -> None:
    # A slow async response first: later (sync) answers must wait behind it, not overtake it.
    reqs = (get("/delay/80") + get("/bytes/1000") + get("/chunked/5000") + get("/echo")
            + get("/last", "Connection: close\r\n") + get("/never-answered"))
    with connect(origin.port) as s:
        s.sendall(reqs)
        data = recv_until_close(s)
    resps = parse_responses(data, ["GET"] * 5)
    assert [r[0] for r in resps] == [200] * 5
    assert resps[0][2] == b"o1: delayed 80 ms\n"
    assert resps[1][2] == pattern_bytes(1000)
    assert resps[2][1]["transfer-encoding"] == "chunked"
    assert resps[2][2] == pattern_bytes(5000)
    assert json.loads(resps[3][2])["url"] == "/echo"
    assert resps[4][2] == b"o1: /last\n"
    assert resps[4][1]["connection"] == "close"


def test_pipelined_requests_split_at_odd_boundaries(origin: OriginServer) -> None:
    reqs = get("/a") + get("/delay/10") + get("/c", "Connection: close\r\n")
    with connect(origin.port) as s:
        for i in range(0, len(reqs), 7):
            s.sendall(reqs[i:i + 7])
            time.sleep(0.001)
        data = recv_until_close(s)
    bodies = [r[2] for r in parse_responses(data, ["GET"] * 3)]
    assert bodies == [b"o1: /a\n", b"o1: delayed 10 ms\n", b"o1: /c\n"]


def test_chunked_response(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/chunked/100000"))
        status, headers, body = read_response(s)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert headers["content-type"] == "application/octet-stream"
    assert body == pattern_bytes(100000)


def test_bytes_route_has_content_length(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/bytes/70000"))
        status, headers, body = read_response(s)
    assert status == 200 and headers["content-length"] == "70000"
    assert body == pattern_bytes(70000)


def test_echo_reflects_headers_and_body(origin: OriginServer) -> None:
    body = b"x" * 5000 + b"end"
    req = (b"POST /echo/sub?q=1 HTTP/1.1\r\nHost: origin.test\r\nX-Mixed-Case: Value 1\r\n"
           b"x-dup: a\r\nX-Dup: b\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    with connect(origin.port) as s:
        s.sendall(req)
        status, headers, raw = read_response(s)
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(raw)
    assert doc["server"] == "o1"
    assert doc["method"] == "POST"
    assert doc["url"] == "/echo/sub?q=1"
    assert doc["body_len"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    # Names exactly as sent, order kept, repeats kept.
    assert doc["headers"] == [["Host", "origin.test"], ["X-Mixed-Case", "Value 1"], ["x-dup", "a"],
                              ["X-Dup", "b"], ["Content-Length", str(len(body))]]


def test_echo_reads_chunked_request_body(origin: OriginServer) -> None:
    req = (b"PUT /echo HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    with connect(origin.port) as s:
        s.sendall(req)
        status, _, raw = read_response(s)
        s.sendall(get("/after"))  # the connection is still usable: the body was consumed
        assert read_response(s)[2] == b"o1: /after\n"
    doc = json.loads(raw)
    assert status == 200 and doc["body_len"] == 11
    assert doc["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_expect_100_continue(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(2)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"abc")
        status, _, raw = read_response(s)
    assert status == 200 and json.loads(raw)["body_len"] == 3


def test_http10_closes_after_response(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/old", version="1.0"))
        t0 = time.monotonic()
        data = recv_until_close(s)
        assert time.monotonic() - t0 < 2, "server kept an HTTP/1.0 connection open"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in head and body == b"o1: /old\n"


def test_http10_keep_alive_when_asked(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/one", "Connection: keep-alive\r\n", version="1.0"))
        status, headers, body = read_response(s)
        assert headers["connection"].lower() == "keep-alive" and body == b"o1: /one\n"
        # No chunked coding for a 1.0 client: the chunks are joined under Content-Length.
        s.sendall(get("/chunked/300", "Connection: keep-alive\r\n", version="1.0"))
        status, headers, body = read_response(s)
        assert "transfer-encoding" not in headers and headers["content-length"] == "300"
        assert body == pattern_bytes(300)


def test_connection_close_honoured(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/bye", "Connection: close\r\n"))
        data = recv_until_close(s, limit=3)
    (status, headers, body), = parse_responses(data, ["GET"])
    assert headers["connection"] == "close" and body == b"o1: /bye\n"


def test_bad_request_gets_400_and_close(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        data = recv_until_close(s, limit=3)
    (status, headers, _), = parse_responses(data, ["GET"])
    assert status == 400 and headers["connection"] == "close"


def test_bad_request_after_good_ones_keeps_order(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/delay/30") + get("/ok") + b"NOT HTTP AT ALL\r\n\r\n")
        data = recv_until_close(s, limit=3)
    resps = parse_responses(data, ["GET"] * 3)
    assert [r[0] for r in resps] == [200, 200, 400]


def test_status_route_and_head(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/status/404"))
        status, _, body = read_response(s)
        assert (status, body) == (404, b"404 Not Found\n")
        s.sendall(get("/status/204"))
        status, headers, body = read_response(s)
        assert status == 204 and body == b"" and "content-length" not in headers
        s.sendall(b"HEAD /bytes/500 HTTP/1.1\r\nHost: x\r\n\r\n" + get("/status/503"))
        data = b""
        while data.count(b"503 Service Unavailable\n") == 0:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    head_resp, after = parse_responses(data, ["HEAD", "GET"])
    assert head_resp[0] == 200 and head_resp[2] == b""
    assert after[0] == 503


def test_custom_handlers_sync_async_and_errors(lt: LoopThread) -> None:
    async def slow(req: OriginRequest) -> OriginResponse:
        await asyncio.sleep(0.01)
        return OriginResponse(201, [("X-Server", "custom"), ("Content-Length", "999")], b"made")

    def handler(req: OriginRequest) -> object:
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        if req.path == "/slow":
            return slow(req)
        return OriginResponse(200, [], chunks=[b"a", b"", b"bc"], close=True)

    srv = OriginServer(handler, name="custom-name")
    port = lt.run(srv.start())
    try:
        with connect(port) as s:
            s.sendall(get("/boom") + get("/slow"))
            data = b""
            while b"made" not in data:
                chunk = s.recv(65536)
                assert chunk
                data += chunk
            (st1, h1, _), (st2, h2, b2) = parse_responses(data, ["GET", "GET"])
            assert st1 == 500 and h1["x-server"] == "custom-name"
            # The handler's own X-Server wins; its bogus Content-Length is replaced by ours.
            assert (st2, h2["x-server"], h2["content-length"], b2) == (201, "custom", "4", b"made")
            s.sendall(get("/x"))
            (st3, h3, b3), = parse_responses(recv_until_close(s, limit=3), ["GET"])
            assert (st3, h3["connection"], b3) == (200, "close", b"abc")
        assert srv.requests == 3
    finally:
        lt.run(srv.stop())


def test_client_half_close_still_answered(origin: OriginServer) -> None:
    with connect(origin.port) as s:
        s.sendall(get("/delay/30") + get("/half"))
        s.shutdown(socket.SHUT_WR)
        data = recv_until_close(s, limit=3)
    bodies = [r[2] for r in parse_responses(data, ["GET", "GET"])]
    assert bodies == [b"o1: delayed 30 ms\n", b"o1: /half\n"]


def test_stop_closes_connections(lt: LoopThread) -> None:
    srv = OriginServer(standard_handler("tmp"), name="tmp")
    port = lt.run(srv.start())
    s = connect(port)
    s.sendall(get("/x"))
    assert read_response(s)[0] == 200
    lt.run(srv.stop())
    assert recv_until_close(s, limit=3) == b""
    s.close()
    with pytest.raises(OSError):
        connect(port, timeout=1).close()
