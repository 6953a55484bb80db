"""How a response body reaches the client: the framing decision, sans-IO (RFC 9112 §6.3).

The switch always writes the framing itself (Content-Length and Transfer-Encoding are hop-by-hop
to it, http/message.py): a length passes through, a chunked body is re-chunked, and a body that
ends when the server closes is re-framed as chunked for a keep-alive HTTP/1.1 client, else sent
up to our own close. Responses to HEAD, and 204 and 304, have no body whatever they say
(RFC 9110 §9.3.2, §15.3.5, §15.4.5).
"""

from __future__ import annotations

from typing import Final

from ..stats import CACHE_HIT, CACHE_MISS, CACHE_UNKNOWN
from .message import parse_content_length

NO_BODY_STATUS: Final = (204, 304)
_READ: Final = frozenset((b"content-length", b"transfer-encoding", b"x-cache", b"age"))
CHUNKED_LINE: Final = b"Transfer-Encoding: chunked\r\n"

#: response_framing's result: (the framing line(s) for the head, re-chunk the body, the body
#: ends at the server's close, no body at all, close the client connection after it, the
#: Content-Length or None, the cache verdict: stats.CACHE_*).
Framing = tuple[bytes, bool, bool, bool, bool, "int | None", int]


def response_framing(method: bytes, version: str, status: int, headers: list[tuple[bytes, bytes]],
                     close: bool) -> Framing:
    """For a final (non-1xx) response to a request with ``method`` and ``version``; ``close``:
    the client connection is to close after this response anyway.

    In the same pass, whether a cache answered: ``X-Cache`` (Squid, Varnish, CDNs: a value
    with HIT or MISS in it, the first of a list being the nearest cache) or, without it, an
    ``Age`` field (RFC 9111 §5.1: only a cache sends one) counts as a hit."""
    length = None
    chunked = False
    cache = CACHE_UNKNOWN
    age = False
    for name, value in headers:
        if name not in _READ:  # (most fields: one set lookup instead of four comparisons)
            continue
        if name == b"content-length":
            length = parse_content_length(value if value.find(b",") < 0 else value.split(b",", 1)[0])
        elif name == b"transfer-encoding":
            chunked = True  # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3(3))
        elif name == b"x-cache":
            first = value.split(b",", 1)[0].upper()
            cache = CACHE_HIT if b"HIT" in first else CACHE_MISS if b"MISS" in first else cache
        else:  # age
            age = True
    if age and not cache:
        cache = CACHE_HIT
    if method == b"HEAD" or status in NO_BODY_STATUS:
        line = b"Content-Length: %d\r\n" % length if length is not None else b""
        return line, False, False, True, close, None, cache
    if chunked:
        if version == "1.1":
            return CHUNKED_LINE, True, False, False, close, None, cache
        return b"", False, False, False, True, None, cache  # HTTP/1.0: de-chunked up to close
    if length is not None:
        return b"Content-Length: %d\r\n" % length, False, False, False, close, length, cache
    # Close-delimited (RFC 9112 §6.3(8)): keep the client's connection by re-framing as chunked.
    if version == "1.1" and not close:
        return CHUNKED_LINE, True, True, False, False, None, cache
    return b"", False, True, False, True, None, cache
