"""How a response body reaches the client (http/framing.py), case by case (RFC 9112 §6.3)."""

from __future__ import annotations

import pytest

from l7switch.errors import BadRequest
from l7switch.http.framing import response_framing
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


@pytest.mark.parametrize("args,want", CASES)
def test_response_framing(args, want) -> None:
    assert response_framing(*args) == (*want, CACHE_UNKNOWN)


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
    assert response_framing(b"GET", "1.1", 200, CL + headers, False)[6] == verdict


def test_bad_content_length_is_refused() -> None:
    with pytest.raises(BadRequest):
        response_framing(b"GET", "1.1", 200, [(b"content-length", b"-1")], False)
