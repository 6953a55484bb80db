"""The switch's HTTP/1.1 proxying end to end: real origins, real sockets, raw bytes."""

from __future__ import annotations

import asyncio
import hashlib

from kit import Conn, exchange, get, read_head, simple_config, wait_for

from l7switch.devtools.origin import pattern_bytes


def header_names(doc: dict) -> list[str]:
    return [n.lower() for n, _ in doc["headers"]]


def header_values(doc: dict, name: str) -> list[str]:
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


# ---- connection management --------------------------------------------------------------------

def test_keep_alive_reuses_client_and_server_connections(lt, proxy):
    sw, o = proxy()
    with Conn(sw.port) as c:
        ports = set()
        for i in range(5):
            c.send(get(f"/echo?i={i}"))
            r = c.response()
            assert r.status == 200
            assert r.header("connection") is None
            doc = r.json()
            assert doc["query"] == f"i={i}"
        snap = lt.call(sw.snapshot)
        cp = snap["connection_pools"][f"127.0.0.1:{o.port}"]
        assert cp["opened"] == 1
        assert cp["reused"] == 4
        assert snap["clients"] == 1
        del ports


def test_pipelined_requests_answered_in_order(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo/one") + get("/chunked/1000") + get("/bytes/777") + get("/echo/four"))
        r1 = c.response()
        assert r1.json()["path"] == "/echo/one"
        r2 = c.response()
        assert r2.chunked and r2.body == pattern_bytes(1000)
        r3 = c.response()
        assert r3.header("content-length") == "777" and r3.body == pattern_bytes(777)
        r4 = c.response()
        assert r4.json()["path"] == "/echo/four"
        assert c.is_open()


def test_pipelined_posts_with_bodies(proxy):
    sw, _ = proxy()
    bodies = [b"a" * 10, b"b" * 5000, b"c" * 3]
    raw = b"".join(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies)
    with Conn(sw.port) as c:
        c.send(raw)
        for b in bodies:
            doc = c.response().json()
            assert doc["body_sha256"] == hashlib.sha256(b).hexdigest()


def test_http10_client_answered_and_closed(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.response()
        assert r.status == 200
        assert r.json()["path"] == "/echo"
        assert c.is_closed()


def test_http10_client_gets_dechunked_body_until_close(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(b"GET /chunked/5000 HTTP/1.0\r\n\r\n")
        r = c.response()
        assert r.status == 200
        assert not r.chunked
        assert r.body == pattern_bytes(5000)
        assert c.eof or c.is_closed()


def test_connection_close_request(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo", extra="Connection: close\r\n"))
        r = c.response()
        assert r.status == 200 and r.header("connection") == "close"
        assert c.is_closed()


# ---- routing ----------------------------------------------------------------------------------

def test_routing_by_path_host_header(origin_factory, switch_factory):
    o_def, o_api, o_img, o_beta = (origin_factory(n) for n in ("def", "api", "img", "beta"))
    sw = switch_factory(f"""
listen: [{{address: 127.0.0.1:0}}]
pools:
  default: {{servers: [127.0.0.1:{o_def.port}]}}
  api: {{servers: [127.0.0.1:{o_api.port}]}}
  img: {{servers: [127.0.0.1:{o_img.port}]}}
  beta: {{servers: [127.0.0.1:{o_beta.port}]}}
rules:
  - name: beta
    match: {{header: {{X-Beta: "^1$"}}}}
    pool: beta
  - name: api
    match: {{path_prefix: /api/}}
    pool: api
  - name: img
    match: {{host: img.example.com}}
    pool: img
default_pool: default
""")
    with Conn(sw.port) as c:  # one client connection, several pools
        for raw, expect in [
            (get("/api/users"), b"api: /api/users\n"),
            (get("/logo.png", host="img.example.com"), b"img: /logo.png\n"),
            (get("/logo.png", host="IMG.example.com:8080"), b"img: /logo.png\n"),
            (get("/api/users", extra="X-Beta: 1\r\n"), b"beta: /api/users\n"),
            (get("/api/users", extra="X-Beta: 2\r\n"), b"api: /api/users\n"),
            (get("/other"), b"def: /other\n"),
        ]:
            c.send(raw)
            r = c.response()
            assert r.status == 200
            assert r.body == expect, raw


# ---- header rewriting -------------------------------------------------------------------------

def test_forwarded_headers(proxy):
    sw, _ = proxy()
    r = exchange(sw.port, get("/echo", host="shop.example:81", extra=(
        "X-Forwarded-For: 203.0.113.9\r\n"
        "X-Forwarded-Proto: https\r\n"
        "X-Forwarded-Host: evil.example\r\n"
        "Via: 1.0 somewhere\r\n")))
    doc = r.json()
    assert header_values(doc, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert header_values(doc, "x-forwarded-proto") == ["http"]
    assert header_values(doc, "x-forwarded-host") == ["shop.example:81"]
    assert header_values(doc, "host") == ["shop.example:81"]
    vias = header_values(doc, "via")
    assert len(vias) == 1 and "1.1 l7switch" in vias[0]
    # and on the response
    assert "1.1 l7switch" in (r.header("via") or "")


def test_xff_without_client_value(proxy):
    sw, _ = proxy()
    doc = exchange(sw.port, get("/echo")).json()
    assert header_values(doc, "x-forwarded-for") == ["127.0.0.1"]


def test_multiple_client_xff_fields_are_combined(proxy):
    sw, _ = proxy()
    doc = exchange(sw.port, get("/echo", extra="X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n")).json()
    assert header_values(doc, "x-forwarded-for") == ["1.1.1.1, 2.2.2.2, 127.0.0.1"]


def test_hop_by_hop_and_connection_named_headers_removed(proxy):
    sw, _ = proxy()
    doc = exchange(sw.port, get("/echo", extra=(
        "Connection: keep-alive, X-Secret\r\n"
        "Connection: X-Other\r\n"
        "X-Secret: 1\r\n"
        "X-Other: 2\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "TE: trailers\r\n"
        "Trailer: X-T\r\n"
        "X-Kept: yes\r\n"))).json()
    names = header_names(doc)
    for gone in ("connection", "x-secret", "x-other", "keep-alive", "proxy-connection", "te", "trailer"):
        assert gone not in names, gone
    assert header_values(doc, "x-kept") == ["yes"]


def test_connection_cannot_remove_switch_owned_headers(proxy):
    sw, _ = proxy()
    doc = exchange(sw.port, get("/echo", extra=(
        "Connection: X-Forwarded-For, X-Forwarded-Proto, Via, Host\r\n"
        "X-Forwarded-For: 6.6.6.6\r\n"))).json()
    # The client's own XFF is hop-by-hop (named in Connection) and goes; ours is still added.
    assert header_values(doc, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(doc, "x-forwarded-proto") == ["http"]
    assert header_values(doc, "via") == ["1.1 l7switch"]
    assert header_values(doc, "host") == ["x"]


def test_response_hop_by_hop_removed(raw_origin, switch_factory):
    async def behave(reader, writer):
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n"
                         b"Keep-Alive: timeout=5\r\nX-End: 1\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        c.send(get("/"))
        r = c.response()
        assert r.body == b"ok"
        names = [n.lower() for n, _ in r.headers]
        assert "x-hop" not in names and "keep-alive" not in names
        assert r.header("x-end") == "1"
        assert r.header("connection") is None


def test_response_lines_forwarded_as_the_server_wrote_them(raw_origin, switch_factory):
    """The response's field lines reach the client as the server spelled them (case and
    whitespace), hop-by-hop ones gone, whether the head comes after an interim 103 in the same
    read, after an empty line llhttp skips, or byte by byte."""
    head = (b"X-MiXeD:  v \t\r\nconnection: keep-alive\r\nSERVER: o\r\nCONTENT-LENGTH: 2\r\n"
            b"keep-alive: timeout=5\r\nETag: \"1\"\r\n\r\nok")
    forms = [b"HTTP/1.1 200 OK\r\n" + head,
             b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n" + head,
             b"\r\nHTTP/1.1 200 OK\r\n" + head]

    async def behave(reader, writer):
        n = 0
        while True:
            await read_head(reader)
            raw = forms[n % 3] if n < 3 else forms[1]
            if n < 3:
                writer.write(raw)
            else:  # byte by byte
                for i in range(len(raw)):
                    writer.write(raw[i:i + 1])
                    await writer.drain()
            await writer.drain()
            n += 1
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        for _ in range(4):
            c.send(get("/"))
            r = c.response()
            assert r.body == b"ok"
            assert r.raw_head.startswith(b"HTTP/1.1 200 OK\r\nX-MiXeD:  v \t\r\nSERVER: o\r\nETag: \"1\"\r\n")
            assert b"keep-alive" not in r.raw_head.lower() and b"\r\nContent-Length: 2\r\n" in r.raw_head
    assert ro.connections == 1  # every response read to its end: the connection was reused


def test_too_many_response_fields_502(raw_origin, switch_factory):
    """HAProxy's tune.http.maxhdr default: 101 response fields pass, the 102nd is a 502."""
    async def behave(reader, writer):
        while True:
            head = await read_head(reader)
            n = int(head.split(b" ")[1].lstrip(b"/"))
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-F: 1\r\n" * (n - 1) + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        c.send(get("/101"))
        r = c.response()
        assert r.status == 200 and len(r.all("x-f")) == 100
    with Conn(sw.port) as c:
        c.send(get("/102"))
        assert c.response().status == 502


# ---- bodies and framing -----------------------------------------------------------------------

def test_chunked_request_body_rechunked(proxy):
    sw, _ = proxy()
    parts = [b"hello ", b"x" * 3000, b"", b"world"]
    raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"6;ext=1\r\nhello \r\n" + b"%X\r\n" % 3000 + b"x" * 3000 + b"\r\n"
           b"5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
    with Conn(sw.port) as c:
        c.send(raw)
        doc = c.response().json()
        body = b"".join(parts)
        assert doc["body_len"] == len(body)
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert "transfer-encoding" in header_names(doc)
        assert "content-length" not in header_names(doc)
        c.send(get("/echo"))  # the connection is still at a message boundary
        assert c.response().json()["body_len"] == 0


def test_content_length_request_body(proxy):
    sw, _ = proxy()
    body = bytes(range(256)) * 40
    r = exchange(sw.port, b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    doc = r.json()
    assert doc["method"] == "PUT"
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(doc, "content-length") == [str(len(body))]


def test_chunked_response_passthrough(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/chunked/100000"))
        r = c.response()
        assert r.chunked
        assert r.body == pattern_bytes(100000)
        c.send(get("/chunked/1"))
        assert c.response().body == pattern_bytes(1)


def test_close_delimited_response_rechunked_for_http11(raw_origin, switch_factory):
    body = b"close-delimited body " * 500

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        await writer.drain()
        for i in range(0, len(body), 1000):
            writer.write(body[i:i + 1000])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        for _ in range(2):  # the client connection survives the server's close
            c.send(get("/"))
            r = c.response()
            assert r.status == 200
            assert r.chunked
            assert r.header("connection") is None
            assert r.body == body
        assert c.is_open()
    assert ro.connections == 2


def test_close_delimited_response_to_http10_client(raw_origin, switch_factory):
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nabcdef")
        await writer.drain()
        writer.close()
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = c.response()
        assert r.status == 200 and not r.chunked and r.body == b"abcdef"


def test_expect_100_continue(proxy):
    sw, _ = proxy()
    body = b"z" * 1000
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        interim = c.response(keep_interim=True)
        assert interim.status == 100
        c.send(body)
        r = c.response()
        assert r.status == 200
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        c.send(get("/echo"))
        assert c.response().status == 200


def test_expect_100_continue_large_body(proxy):
    sw, _ = proxy()
    body = pattern_bytes(300_000)
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert c.response(keep_interim=True).status == 100
        c.send(body)
        assert c.response().json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_expect_100_not_forwarded_to_http10_client(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc")
        status, *_ = c.read_head()
        assert status == 200


def test_head_response_has_no_body_and_connection_reusable(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/bytes/1000", method="HEAD"))
        r = c.response(head=True)
        assert r.status == 200
        assert r.header("content-length") == "1000"
        c.send(get("/chunked/500", method="HEAD"))
        r = c.response(head=True)
        assert r.status == 200
        c.send(get("/echo"))
        r = c.response()
        assert r.json()["method"] == "GET"
        assert c.is_open()


def test_head_then_get_pipelined(proxy):
    sw, o = proxy()
    with Conn(sw.port) as c:
        c.send(get("/bytes/100", method="HEAD") + get("/bytes/50"))
        assert c.response(head=True).header("content-length") == "100"
        assert c.response().body == pattern_bytes(50)


def test_204_and_304(lt, proxy):
    sw, o = proxy()
    with Conn(sw.port) as c:
        for code in (204, 304, 204):
            c.send(get(f"/status/{code}"))
            r = c.response()
            assert r.status == code
            assert r.header("transfer-encoding") is None
        c.send(get("/bytes/10"))
        assert c.response().body == pattern_bytes(10)
    cp = lt.call(sw.snapshot)["connection_pools"][f"127.0.0.1:{o.port}"]
    assert cp["opened"] == 1


def test_error_status_passthrough(proxy):
    sw, _ = proxy()
    with Conn(sw.port) as c:
        for code in (404, 500, 503):
            c.send(get(f"/status/{code}"))
            r = c.response()
            assert r.status == code
            assert r.body.startswith(str(code).encode())


def test_path_normalized_before_forwarding(proxy):
    sw, _ = proxy()
    doc = exchange(sw.port, get("/a/../%65cho?q=1")).json()
    assert doc["path"] == "/echo"
    assert doc["query"] == "q=1"


def test_absolute_form_target(proxy):
    sw, _ = proxy()
    doc = exchange(sw.port, b"GET http://abs.example/echo?z HTTP/1.1\r\nHost: ignored\r\n\r\n").json()
    assert doc["url"] == "/echo?z"
    assert header_values(doc, "host") == ["abs.example"]


def test_client_half_close_after_request(proxy):
    import socket
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/delay/50"))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.response()
        assert r.status == 200
        assert c.is_closed()


def test_server_connection_close_not_pooled_client_kept(lt, raw_origin, switch_factory):
    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye")
        await writer.drain()
        await asyncio.sleep(0.5)
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port) as c:
        for _ in range(3):
            c.send(get("/"))
            r = c.response()
            assert r.body == b"bye"
            assert r.header("connection") is None  # the server's close is hop-by-hop
    assert ro.connections == 3
    assert lt.call(sw.snapshot)["connection_pools"][f"127.0.0.1:{ro.port}"]["reused"] == 0


def test_snapshot_shows_each_connection_and_its_exchange_phase(proxy, lt):
    """Switch.snapshot(connections=True): the one view of live state shows a request waiting for
    its server's answer (phase "awaiting"), and the exchange's repr says the same."""
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/delay/400"))
        def awaiting() -> bool:  # first "connecting" (a new server connection), then "awaiting"
            return any(x["exchange"] and x["exchange"]["phase"] == "awaiting"
                       for x in lt.call(sw.snapshot, True)["connections"])
        assert wait_for(awaiting)
        (conn,) = lt.call(sw.snapshot, True)["connections"]
        ex = conn["exchange"]
        assert conn["state"] == "busy" and ex["phase"] == "awaiting" and ex["path"] == "/delay/400"
        assert ex["pool"] == "p" and ex["server"] is not None and len(ex["id"]) == 16
        (client,) = lt.call(lambda: list(sw.clients))
        assert "awaiting" in repr(client.exchange)
        assert c.response().status == 200
    assert wait_for(lambda: lt.call(sw.snapshot)["clients"] == 0)
