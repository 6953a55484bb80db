"""How a response body reaches the client (http/framing.py), case by case (RFC 9112 §6.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l7switch.errors import BadRequest
from l7switch.http.fields import cut_head, has_field, split_fields
from l7switch.http.framing import Framing, forward_response_head, relay_fields, response_framing
from l7switch.http.message import relay_head
from l7switch.stats import CACHE_HIT, CACHE_MISS, CACHE_UNKNOWN

CL = [(b"content-length", b"5")]
TE = [(b"transfer-encoding", b"chunked")]

# (method, version, status, headers, close) -> (line, rechunk, until close, no body, close, length)
CASES = [
    ((b"GET", "1.1", 200, CL, False), (b"Content-Length: 5\r\n", False, False, False, False, 5)),
    ((b"GET", "1.1", 200, CL, True), (b"Content-Length: 5\r\n", False, False, False, True, 5)),
    ((b"GET", "1.1", 200, TE, False), (b"Transfer-Encoding: chunked\r\n", True, False, False, False, None)),
    # Transfer-Encoding wins over Content-Length (RFC 9112 §6.3(3)).
    ((b"GET", "1.1", 200, CL + TE, False), (b"Transfer-Encoding: chunked\r\n", True, False, False, False, None)),
    # An HTTP/1.0 client cannot read chunked: the de-chunked body up to our close.
    ((b"GET", "1.0", 200, TE, False), (b"", False, False, False, True, None)),
    # Close-delimited: re-framed as chunked for a keep-alive 1.1 client, else up to the close.
    ((b"GET", "1.1", 200, [], False), (b"Transfer-Encoding: chunked\r\n", True, True, False, False, None)),
    ((b"GET", "1.1", 200, [], True), (b"", False, True, False, True, None)),
    ((b"GET", "1.0", 200, [], False), (b"", False, True, False, True, None)),
    # No body whatever the head says: HEAD, 204, 304 (the length is still told for HEAD).
    ((b"HEAD", "1.1", 200, CL, False), (b"Content-Length: 5\r\n", False, False, True, False, None)),
    ((b"GET", "1.1", 204, [], False), (b"", False, False, True, False, None)),
    ((b"GET", "1.1", 304, TE, False), (b"", False, False, True, False, None)),
    # A list of equal lengths ("5, 5") is read as its first.
    ((b"GET", "1.1", 200, [(b"content-length", b"5, 5")], False),
     (b"Content-Length: 5\r\n", False, False, False, False, 5)),
]


def block(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """A head's lines (http/fields.cut_head) with these fields, as a server would send them."""
    return [b"HTTP/1.1 200 OK"] + [b"%s: %s" % field for field in headers]


def framing(method: bytes, version: str, status: int, headers: list[tuple[bytes, bytes]],
            close: bool) -> tuple[Framing, int]:
    _, length, chunked, cache = relay_fields(block(headers))
    return response_framing(method, version, status, length, chunked, close), cache


@pytest.mark.parametrize("args,want", CASES)
def test_response_framing(args, want) -> None:
    assert framing(*args) == (want, CACHE_UNKNOWN)


@pytest.mark.parametrize("headers,verdict", [
    ([(b"x-cache", b"HIT")], CACHE_HIT),
    ([(b"x-cache", b"MISS")], CACHE_MISS),
    ([(b"x-cache", b"TCP_HIT from squid")], CACHE_HIT),
    ([(b"x-cache", b"miss, HIT")], CACHE_MISS),  # the first is the cache nearest to us
    ([(b"age", b"12")], CACHE_HIT),  # only a cache sends Age (RFC 9111 §5.1)
    ([(b"age", b"12"), (b"x-cache", b"MISS")], CACHE_MISS),  # X-Cache says more
    ([(b"x-cache", b"PASS")], CACHE_UNKNOWN),
    ([(b"server", b"hit")], CACHE_UNKNOWN),
])
def test_cache_verdict(headers, verdict) -> None:
    assert framing(b"GET", "1.1", 200, CL + headers, False)[1] == verdict


def test_bad_content_length_is_refused() -> None:
    with pytest.raises(BadRequest):
        relay_fields([b"HTTP/1.1 200 OK", b"Content-Length: -1"])


@pytest.mark.parametrize("headers", [
    [(b"server", b"o"), (b"content-length", b"5"), (b"x-cache", b"HIT"), (b"age", b"3")],
    [(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"transfer-encoding", b"chunked"),
     (b"te", b"x"), (b"trailer", b"y"), (b"upgrade", b"z"), (b"proxy-connection", b"k"), (b"etag", b"1")],
    # Connection names more fields: they are hop-by-hop too, wherever they stand.
    [(b"x-internal", b"1"), (b"connection", b"close, X-Internal, age"), (b"age", b"9"), (b"server", b"o")],
    [],
])
@pytest.mark.parametrize("close", [False, True])
def test_one_pass_head_is_the_forwarded_head(headers: list[tuple[bytes, bytes]], close: bool) -> None:
    """relay_fields + relay_head (the response path: one pass over the fields) write exactly
    what forward_response_head (hop_by_hop, then a filtering pass) writes."""
    fields = relay_fields(block(headers))[0]
    line = b"Content-Length: 5\r\n"
    assert relay_head(200, fields, line, close, b"Set-Cookie: a=b\r\n") == \
        forward_response_head(200, b"", block(headers), line, close, None, b"Set-Cookie: a=b\r\n")


def test_lines_are_forwarded_as_the_server_wrote_them() -> None:
    """The server's spelling of names and its whitespace are kept (HAProxy keeps them on
    HTTP/1.1); only the fields the switch acts on are looked at."""
    raw = b"HTTP/1.1 200 OK\r\nSERVER:\tnginx \r\nX-Cache:  hit\r\nETag: \"1\"\r\nContent-Type: t\r\n\r\nbody\r\n\r\n"
    lines, end = cut_head(raw, 0, 101)
    assert lines == [b"HTTP/1.1 200 OK", b"SERVER:\tnginx ", b"X-Cache:  hit", b"ETag: \"1\"", b"Content-Type: t"]
    assert raw[end:] == b"body\r\n\r\n"
    fields, length, chunked, cache = relay_fields(lines)
    assert b"".join(fields) == b"SERVER:\tnginx \r\nX-Cache:  hit\r\nETag: \"1\"\r\nContent-Type: t\r\n"
    assert (length, chunked, cache) == (None, False, CACHE_HIT)
    raw = (b"\r\n\r\nHTTP/1.1 200 OK\r\nDate: d\r\nCONTENT-LENGTH:  7 \r\nServer: s\r\nConnection: keep-alive\r\n"
           b"Keep-Alive: timeout=5\r\nA: b\r\nContent-Lengthy: 1\r\nCon: 1\r\n\r\n")
    lines, end = cut_head(raw, 0, 101)  # (llhttp skips empty lines before a status line)
    assert lines[0] == b"HTTP/1.1 200 OK" and end == len(raw)
    fields, length, chunked, cache = relay_fields(lines)
    assert b"".join(fields) == b"Date: d\r\nServer: s\r\nA: b\r\nContent-Lengthy: 1\r\nCon: 1\r\n"
    assert (length, chunked) == (7, False)
    assert relay_fields([b"HTTP/1.1 200 OK"]) == ([b""], None, False, CACHE_UNKNOWN)
    # A head after an interim one, from where that one ended.
    raw = b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 204 No Content\r\nX: y\r\n\r\n"
    lines, end = cut_head(raw, 0, 101)
    assert lines == [b"HTTP/1.1 103 Early Hints", b"Link: <a>"]
    assert cut_head(raw, end, 101) == ([b"HTTP/1.1 204 No Content", b"X: y"], len(raw))
    raw = b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 3 + b"\r\n"
    assert len(cut_head(raw, 0, 3)[0]) == 4
    with pytest.raises(ValueError):
        cut_head(raw, 0, 2)


names = st.sampled_from([b"Server", b"content-length", b"Content-Length", b"TRANSFER-ENCODING", b"Connection",
                         b"keep-alive", b"Age", b"x-cache", b"X-Internal", b"te", b"TE", b"Upgrade", b"Date",
                         b"Last-Modified", b"accept-ranges", b"Trailer", b"Proxy-Connection", b"ETag",
                         b"Content-Type", b"Connectio", b"Ages", b"T"])
values = st.sampled_from([b"5", b" 5 ", b"\t5", b"chunked", b"keep-alive", b"close, X-Internal", b"x-internal",
                          b"HIT", b"miss", b"", b"nginx/1.22 ", b"Wed, 21 Oct 2015 07:28:00 GMT"])


@given(st.lists(st.tuples(names, values), max_size=12), st.booleans())
def test_relay_fields_agrees_with_the_line_filter(fields: list[tuple[bytes, bytes]], close: bool) -> None:
    """For any head (names in any case, OWS around values, hop-by-hop fields anywhere), the
    one pass forwards exactly the lines the plain filter keeps, and reads the same framing as
    the fields split and looked at one by one."""
    raw = b"HTTP/1.1 200 OK\r\n" + b"".join(b"%s:%s\r\n" % f for f in fields) + b"\r\n"
    lines, _ = cut_head(raw, 0, 101)
    try:
        out, length, chunked, _ = relay_fields(lines)
    except BadRequest:
        return  # a Content-Length that is not 1*DIGIT: refused whichever way it is read
    assert relay_head(200, out, b"", close) == forward_response_head(200, b"", lines, b"", close)
    split = split_fields(lines)
    assert [n for n, _ in split] == [n.lower() for n, _ in fields]
    assert chunked == any(n == b"transfer-encoding" for n, _ in split)
    lengths = [v for n, v in split if n == b"content-length"]
    assert length == (int(lengths[-1].strip() or b"-1") if lengths else None)


def test_has_field_whatever_the_case() -> None:
    lines = [b"HTTP/1.1 200 OK", b"Date: d", b"CACHE-control: x", b"_Odd: 1", b"Set-Cookie:a=b"]
    for name in (b"cache-control", b"_odd", b"set-cookie", b"date"):
        assert has_field(lines, name)
    for name in (b"cache", b"cache-controls", b"odd", b"set-cookie2", b"dat", b"http/1.1 200 ok"):
        assert not has_field(lines, name)
