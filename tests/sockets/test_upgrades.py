"""Upgrades the switch does not tunnel: ``Upgrade: h2c`` (what ``curl --http2`` sends) and tokens
not on the listener's ``upgrades`` list are answered as plain HTTP/1.1 — the Upgrade field, its
Connection option and HTTP2-Settings dropped, the body and the connection intact."""

from __future__ import annotations

from pathlib import Path

from kit import Conn, get

KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parents[2]


def header_names(doc: dict) -> list[str]:
    return [n.lower() for n, _ in doc["headers"]]


# ---- (g) h2c and other non-websocket upgrades --------------------------------------------------

H2C = ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")


def test_h2c_upgrade_get_falls_back_to_http11(proxy):
    """(g) curl --http2's GET (Upgrade: h2c + HTTP2-Settings) is forwarded as plain HTTP/1.1.

    Old code: any Upgrade other than websocket is refused with 400 "unsupported Upgrade".
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo", extra=H2C))
        r = c.response()
        assert r.status == 200, r
        names = header_names(r.json())
        assert "upgrade" not in names
        assert "http2-settings" not in names


def test_h2c_upgrade_keeps_client_connection_usable(proxy):
    """(g) After an h2c-upgrade GET, the same connection serves the next (pipelined) request.

    Old code: the h2c request gets 400 and the connection is closed.
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo/one", extra=H2C) + get("/echo/two"))
        r1 = c.response()
        assert r1.status == 200, r1
        assert r1.json()["path"] == "/echo/one"
        r2 = c.response()
        assert r2.status == 200, r2
        assert r2.json()["path"] == "/echo/two"
        c.send(get("/echo/three"))
        r3 = c.response()
        assert r3.status == 200 and r3.json()["path"] == "/echo/three"


def test_h2c_upgrade_post_body_intact(proxy):
    """(g) A POST with a body and h2c upgrade headers reaches the origin with its body, and the
    connection keeps working.

    Old code: 400 "unsupported Upgrade", body never forwarded, connection closed.
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + H2C.encode()
               + b"Content-Length: 5\r\n\r\nhello")
        r = c.response()
        assert r.status == 200, r
        doc = r.json()
        assert doc["method"] == "POST"
        assert doc["body_len"] == 5
        import hashlib
        assert doc["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
        names = header_names(doc)
        assert "upgrade" not in names and "http2-settings" not in names
        c.send(get("/echo/after"))
        r2 = c.response()
        assert r2.status == 200, r2
        assert r2.json()["path"] == "/echo/after"


def test_unknown_upgrade_forwarded_as_plain_http(proxy):
    """(g) ``Upgrade: foo`` with ``Connection: upgrade`` is forwarded as plain HTTP/1.1 (200).

    Old code: 400 "unsupported Upgrade".
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo", extra="Connection: upgrade\r\nUpgrade: foo\r\n"))
        r = c.response()
        assert r.status == 200, r
        assert "upgrade" not in header_names(r.json())
        c.send(get("/echo/next"))
        assert c.response().status == 200


# ---- listen[].upgrades: [] ----------------------------------------------------------------------

def test_listener_without_upgrades_forwards_websocket_as_plain_http(origin_factory, switch_factory):
    """A listener with ``upgrades: []`` tunnels nothing: a websocket upgrade request is forwarded
    as a plain request (the origin sees no Upgrade field and answers 200) and the connection
    serves the next request, as for any plain request.

    Old code had no ``upgrades`` key (the rule file was refused as 'unknown key'); every listener
    offered the websocket upgrade to the server.
    """
    o = origin_factory("o1")
    sw = switch_factory(f"listen: [{{address: 127.0.0.1:0, upgrades: []}}]\n"
                        f"pools: {{p: {{servers: [127.0.0.1:{o.port}]}}}}\ndefault_pool: p\n")
    with Conn(sw.port) as c:
        c.send(get("/echo", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"))
        r = c.response()
        assert r.status == 200, r
        assert r.header("upgrade") is None
        names = header_names(r.json())
        assert "upgrade" not in names
        c.send(get("/echo/next"))
        r2 = c.response()
        assert r2.status == 200 and r2.json()["path"] == "/echo/next"
