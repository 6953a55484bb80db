"""The per-server keep-alive ConnectionPool: idle expiry, the idle cap, and connect timeouts."""

from __future__ import annotations

import socket
import time

from kit import Conn, connect, get, read_head, read_response, simple_config


def idle_total(sw) -> int:
    return sum(p["idle"] for p in sw.snapshot()["connection_pools"].values())


def test_idle_upstream_connection_expires(proxy) -> None:
    sw, o = proxy("upstream: {idle_timeout: 0.3s}\n")
    s = connect(sw.port)
    s.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(s)[0] == 200
    assert idle_total(sw) == 1
    deadline = time.monotonic() + 3
    while idle_total(sw) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idle_total(sw) == 0
    # The next request simply opens a new connection.
    s.sendall(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(s)[0] == 200
    opened = next(iter(sw.snapshot()["connection_pools"].values()))["opened"]
    assert opened == 2
    s.close()


def test_idle_cap_closes_connections_beyond_max_idle(proxy) -> None:
    sw, o = proxy("upstream: {max_idle: 1}\n")
    socks = [connect(sw.port) for _ in range(3)]
    for s in socks:  # three requests in flight at once need three server connections
        s.sendall(b"GET /delay/300 HTTP/1.1\r\nHost: t\r\n\r\n")
    for s in socks:
        assert read_response(s)[0] == 200
    pool = next(iter(sw.snapshot()["connection_pools"].values()))
    assert pool["opened"] == 3 and pool["idle"] == 1
    for s in socks:
        s.close()


def test_connect_timeout_is_504(switch_factory, caplog) -> None:
    # A listener that never accepts, with its one-slot backlog already taken: the kernel drops
    # further SYNs, so connect() hangs — the loopback way to get a silent server.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    time.sleep(0.1)
    try:
        sw = switch_factory(simple_config(port, extra="timeouts: {connect: 0.3s}\n"))
        s = connect(sw.port)
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(s, timeout=5)
        assert status == 504 and f"connect to 127.0.0.1:{port} timed out" in caplog.text
        assert time.monotonic() - t0 < 3
        s.close()
    finally:
        for f in fillers:
            f.close()
        lst.close()


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
