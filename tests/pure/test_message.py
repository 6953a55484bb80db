"""Pure request-head validation and rewriting (message.py): values in, values out."""

from __future__ import annotations

import random

import pytest

from l7switch.errors import BadRequest
from l7switch.http import message
from l7switch.http.framing import forward_response_head
from l7switch.http.message import (check_request, error_response, forward_request_head,
                                   hex40, normalize_path, parse_content_length)

H = [(b"host", b"example.com")]


@pytest.mark.parametrize("raw,expected", [
    ("/a/b", "/a/b"),
    ("/a/../admin", "/admin"),
    ("/a/./b/", "/a/b/"),
    ("/../../etc", "/etc"),
    ("/%61dmin", "/admin"),
    ("/a%2Fb", "/a%2Fb"),  # an encoded slash is not unreserved: stays encoded
    ("/a%2fb", "/a%2Fb"),
    ("/x/..", "/"),
    ("/images/%2e%2e/secret", "/secret"),
])
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("method,url,headers,version,why", [
    (b"GET", b"/", [], "1.1", "missing Host"),
    (b"GET", b"/", H + H, "1.1", "more than one Host"),
    (b"GET", b"/", [(b"host", b"user@evil")], "1.1", "invalid Host"),
    (b"GET", b"/", [(b"host", b"a/b")], "1.1", "invalid Host"),
    (b"POST", b"/", H + [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")], "1.1",
     "both Content-Length and Transfer-Encoding"),
    (b"POST", b"/", H + [(b"content-length", b"3"), (b"content-length", b"4")], "1.1", "conflicting"),
    (b"POST", b"/", H + [(b"content-length", b"+3")], "1.1", "invalid Content-Length"),
    (b"POST", b"/", H + [(b"transfer-encoding", b"chunked")], "1.0", "HTTP/1.0"),
    (b"POST", b"/", H + [(b"transfer-encoding", b"gzip")], "1.1", "unsupported Transfer-Encoding"),
    (b"GET", b"/a#frag", H, "1.1", "fragment"),
    (b"GET", b"/", H, "2.0", "unsupported HTTP version"),
    (b"GET", b"/", H, "0.9", "unsupported HTTP version"),
    (b"GET", b"http://u@h/", H, "1.1", "userinfo"),
    (b"GET", b"nothing", H, "1.1", "invalid request target"),
])
def test_bad_requests_are_rejected(method: bytes, url: bytes, headers: list, version: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        check_request(method, url, headers, version, True, False)


def test_identical_content_length_values_collapse_and_leading_zeros_normalise() -> None:
    head = check_request(b"POST", b"/", H + [(b"content-length", b"007"), (b"content-length", b"7")],
                         "1.1", True, False)
    assert head.content_length == 7
    assert b"Content-Length: 7\r\n" in forward_request_head(head, "10.0.0.1", b"http", False)


@pytest.mark.parametrize("value,expected", [
    (b"0", 0), (b"007", 7), (b" 12\t", 12), (b"\t 5  ", 5), (b"9" * 18, 10**18 - 1),
])
def test_content_length_digits(value: bytes, expected: int) -> None:
    assert parse_content_length(value) == expected


@pytest.mark.parametrize("value", [
    b"", b" ", b"1 2", b"+1", b"-1", b"1_0", b"0x1", b"1.0", b"9" * 19, "\u0661".encode(), b"\x00", b"1\r",
])
def test_content_length_that_is_not_1_digit_star_is_refused(value: bytes) -> None:
    """RFC 9110 §8.6: 1*DIGIT (ASCII), with optional whitespace around it; what int() also
    takes (signs, underscores, other scripts' digits) is not a length."""
    with pytest.raises(BadRequest, match="invalid Content-Length"):
        parse_content_length(value)


def test_flag_table_says_whether_any_flagged_byte_is_there() -> None:
    """``value.translate(flag_table(chars)) is value`` exactly when no byte of ``chars`` is in
    ``value`` (the identity is what both CPython and the compiled build return unchanged)."""
    rng = random.Random(7)
    for flagged in (b"#?", b"\x00\xff", bytes(range(0x20))):
        table = message.flag_table(flagged)
        for _ in range(2000):
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
            assert (value.translate(table) is value) == (not any(b in flagged for b in value)), value


def test_hex40_is_the_request_id_format() -> None:
    for n in (0, 1, 255, 256, 0x123456789, 2**40 - 1, 2**40, 2**45 + 7):
        assert hex40(n) == b"%010x" % n


def test_id_line_is_the_formatted_line() -> None:
    """id_line keeps the line's start for a block of 256 ids; any id, name or prefix gives
    exactly the formatted line."""
    for name, prefix in ((b"X-Request-Id", b"a1b2c3"), (b"X-Trace", b"a1b2c3"), (b"X-Trace", b"ffffff")):
        for n in (0, 1, 255, 256, 257, 0x1234, 0x123456789, 2**40 - 1, 2**40, 2**45 + 7, 5, 300):
            assert message.id_line(name, prefix, n) == b"%s: %s%010x\r\n" % (name, prefix, n)


def test_method_names() -> None:
    for m in (b"GET", b"PROPFIND", b"M-SEARCH", b"PATCH"):
        assert message.method_name(m) == m.decode()


def test_host_values_are_checked_once_each_and_the_memory_is_bounded() -> None:
    seen = message._VALID_HOSTS  # (the same dict in both builds; a final name cannot be patched)
    seen.clear()
    assert check_request(b"GET", b"/", [(b"host", b"Example.com:8080")], "1.1", True, False).hostname == "example.com"
    assert seen == {b"Example.com:8080": "example.com"}
    # The second time the name comes from the dict, the same.
    assert check_request(b"GET", b"/", [(b"host", b"Example.com:8080")], "1.1", True, False).hostname == "example.com"
    with pytest.raises(BadRequest, match="invalid Host"):  # a bad one is never remembered
        check_request(b"GET", b"/", [(b"host", b"a/b")], "1.1", True, False)
    assert seen == {b"Example.com:8080": "example.com"}
    for value, name in ((b"[::1]:80", "[::1]"), (b"[FE80::1]", "[fe80::1]"), (b"h", "h"), (b"", ""), (b"h:", "h")):
        assert check_request(b"GET", b"/", [(b"host", value)], "1.1", True, False).hostname == name
    for i in range(message.VALID_HOSTS_MAX + 10):
        check_request(b"GET", b"/", [(b"host", b"h%d" % i)], "1.1", True, False)
    assert len(seen) <= message.VALID_HOSTS_MAX


def test_x_forwarded_for_lines_are_made_once_per_address_and_the_memory_is_bounded() -> None:
    lines = message._XFF_LINES  # (the same dict in both builds)
    lines.clear()
    head = check_request(b"GET", b"/", H, "1.1", True, False)
    for _ in range(3):
        assert b"X-Forwarded-For: 10.0.0.1\r\n" in forward_request_head(head, "10.0.0.1", b"http", False)
    assert list(lines) == ["10.0.0.1"]
    for i in range(message.XFF_LINES_MAX + 10):
        assert message.xff_line(f"10.1.{i // 256}.{i % 256}") == b"X-Forwarded-For: 10.1.%d.%d\r\n" % (
            i // 256, i % 256)
    assert len(lines) <= message.XFF_LINES_MAX


def test_absolute_form_replaces_host() -> None:
    head = check_request(b"GET", b"http://other.example:8080/p?q=1", H, "1.1", True, False)
    assert head.host == b"other.example:8080"
    assert head.target == b"/p?q=1"


def test_http10_client_is_never_kept_alive() -> None:
    assert not check_request(b"GET", b"/", [], "1.0", True, False).keep_alive


def test_forward_strips_hop_by_hop_and_connection_named_fields_before_adding_ours() -> None:
    headers = H + [
        (b"connection", b"X-Secret, X-Forwarded-For"), (b"x-secret", b"1"), (b"keep-alive", b"timeout=5"),
        (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https"), (b"via", b"1.0 fake"),
        (b"te", b"trailers"), (b"accept", b"*/*"),
    ]
    head = check_request(b"GET", b"/", headers, "1.1", True, False)
    out = forward_request_head(head, "10.0.0.9", b"http", False).decode()
    assert out.startswith("GET / HTTP/1.1\r\nHost: example.com\r\n")
    assert "x-secret" not in out.lower() and "keep-alive" not in out.lower() and "\r\nte:" not in out.lower()
    assert "X-Forwarded-For: 10.0.0.9\r\n" in out  # the client's own list was named in Connection
    assert "X-Forwarded-Proto: http\r\n" in out and "https" not in out
    assert out.count("Via:") == 1 and "Via: 1.1 l7switch" in out
    assert "accept: */*" in out


def test_forward_appends_to_client_x_forwarded_for() -> None:
    head = check_request(b"GET", b"/", H + [(b"x-forwarded-for", b"1.2.3.4")], "1.1", True, False)
    assert b"X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n" in forward_request_head(head, "10.0.0.9", b"http", False)


def test_chunked_request_is_forwarded_chunked_without_content_length() -> None:
    head = check_request(b"POST", b"/", H + [(b"transfer-encoding", b"chunked")], "1.1", True, False)
    out = forward_request_head(head, "1.1.1.1", b"http", True)
    assert b"Transfer-Encoding: chunked\r\n" in out and b"Content-Length" not in out


def test_upgrade_only_for_allowed_tokens_with_connection_upgrade() -> None:
    ok = H + [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
    assert check_request(b"GET", b"/ws", ok, "1.1", True, True).upgrade == b"websocket"
    # Not on the listener's list: an ordinary request (RFC 9110 §7.8 lets a server ignore Upgrade).
    assert check_request(b"GET", b"/ws", ok, "1.1", True, True, frozenset()).upgrade is None
    assert check_request(b"GET", b"/ws", ok, "1.0", True, True).upgrade is None  # ignored in 1.0
    # h2c never becomes a tunnel, even when listed; its fields are hop-by-hop and go.
    h2c = H + [(b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c"),
               (b"http2-settings", b"AAMAAABkAARAAAAAAAIAAAAA")]
    head = check_request(b"GET", b"/", h2c, "1.1", True, True, frozenset({b"websocket", b"h2c"}))
    assert head.upgrade is None
    out = forward_request_head(head, "1.1.1.1", b"http", False).lower()
    assert b"upgrade" not in out and b"http2-settings" not in out
    with pytest.raises(BadRequest):
        check_request(b"CONNECT", b"example.com:443", H, "1.1", True, True)


def test_response_head_rewrites_framing_and_connection() -> None:
    out = forward_response_head(200, b"OK", [b"HTTP/1.1 200 OK", b"Connection: keep-alive, x-internal",
                                            b"X-Internal: 1", b"server: o"],
                                b"Content-Length: 5\r\n", close=True)
    assert out == (b"HTTP/1.1 200 OK\r\nserver: o\r\nVia: 1.1 l7switch\r\nConnection: close\r\n"
                   b"Content-Length: 5\r\n\r\n")


def test_error_response_is_complete_and_short() -> None:
    out = error_response(503, "0a1b2c0000000001", close=False)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Content-Length: %d" % len(body) in head and b"Connection: close" not in head
    assert b"X-Request-Id: 0a1b2c0000000001\r\n" in head
    assert body == b"503 Service Unavailable\nrequest id: 0a1b2c0000000001\n"
    assert error_response(400, "", "missing Host").endswith(b"\r\n\r\n400 Bad Request: missing Host\n")
