"""How a response reaches the client, sans-IO: its fields read in one pass (what to forward,
what framing they declare, whether a cache answered) and the framing decision (RFC 9112 §6.3).

The switch always writes the framing itself (Content-Length and Transfer-Encoding are hop-by-hop
to it, http/message.py): a length passes through, a chunked body is re-chunked, and a body that
ends when the server closes is re-framed as chunked for a keep-alive HTTP/1.1 client, else sent
up to our own close. Responses to HEAD, and 204 and 304, have no body whatever they say
(RFC 9110 §9.3.2, §15.3.5, §15.4.5).
"""

from __future__ import annotations

from typing import Final

from ..stats import CACHE_HIT, CACHE_MISS, CACHE_UNKNOWN
from .fields import field_lines, is_named, lines_hop_by_hop
from .message import ASCII_LOWER, HOP_BY_HOP, PLAIN_CONNECTION, parse_content_length, relay_head

NO_BODY_STATUS: Final = (204, 304)
CHUNKED_LINE: Final = b"Transfer-Encoding: chunked\r\n"

#: response_framing's result: (the framing line(s) for the head, re-chunk the body, the body
#: ends at the server's close, no body at all, close the client connection after it, the
#: Content-Length or None).
Framing = tuple[bytes, bool, bool, bool, bool, "int | None"]

#: What relay_fields reads from a response head's lines: the pieces to forward (to join;
#: index 0 is kept for the status line), Content-Length or None, chunked, cache verdict.
Fields = tuple[list[bytes], "int | None", bool, int]

#: Fields the one pass stops at: the hop-by-hop ones (dropped; Content-Length and
#: Transfer-Encoding among them) and the two a cache answers with (read, then forwarded).
_NOTED: Final = HOP_BY_HOP | frozenset((b"x-cache", b"age"))
#: For each byte a field line may start with (either case), the _NOTED names starting with it:
#: a line starting otherwise (Date, Server, ETag...) is passed on after one look at its first
#: byte (then fields.is_named).
_BY_FIRST: Final = [tuple(n for n in sorted(_NOTED) if n[0] == ASCII_LOWER[c]) for c in range(256)]


def relay_fields(lines: list[bytes]) -> Fields:
    """One pass over a final response's lines (http/fields.cut_head: the status line, then the
    field lines as the server wrote them): the lines to forward, the framing they declare and
    whether a cache answered.

    The cache verdict: ``X-Cache`` (Squid, Varnish, CDNs: a value with HIT or MISS in it, the
    first of a list being the nearest cache) or, without it, an ``Age`` field (RFC 9111 §5.1:
    only a cache sends one) counts as a hit. A Connection field naming more than keep-alive or
    close makes those fields hop-by-hop too (RFC 9110 §7.6.1): then the lines are chosen again
    with them (rare)."""
    out: list[bytes] = [b""]
    length = None
    chunked = False
    cache = CACHE_UNKNOWN
    age = False
    listed = False
    for i in range(1, len(lines)):
        line = lines[i]
        n = len(line)
        for name in _BY_FIRST[line[0]]:
            if is_named(line, name):
                at = len(name) + 1
                while at < n and line[at] in (32, 9):  # OWS (RFC 9110 §5.6.3)
                    at += 1
                value = line[at:]
                if name == b"x-cache":
                    first = value.split(b",", 1)[0].upper()
                    if first.find(b"HIT") >= 0:
                        cache = CACHE_HIT
                    elif first.find(b"MISS") >= 0:
                        cache = CACHE_MISS
                elif name == b"age":
                    age = True
                else:
                    if name == b"content-length":
                        length = parse_content_length(value, first=True)
                    elif name == b"transfer-encoding":
                        chunked = True  # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3(3))
                    elif name == b"connection" and value not in PLAIN_CONNECTION:
                        listed = True
                    break  # hop-by-hop: not forwarded
                out.append(line)
                out.append(b"\r\n")
                break
        else:
            out.append(line)
            out.append(b"\r\n")
    if listed:
        out = field_lines(lines, lines_hop_by_hop(lines))
    if age and not cache:
        cache = CACHE_HIT
    return out, length, chunked, cache


def forward_response_head(status: int, reason: bytes, lines: list[bytes], framing: bytes, close: bool,
                          upgrade: bytes | None = None, extra: bytes = b"") -> bytes:
    """The head of an interim (1xx) or 101 response for the client; ``framing`` is the
    line(s) we add (CL or TE chunked), ``extra`` more complete lines. (A final response's
    fields go through relay_fields instead, which reads its framing in the same pass.)"""
    return relay_head(status, field_lines(lines, lines_hop_by_hop(lines)), framing, close, extra, upgrade,
                      reason)


def response_framing(method: bytes, version: str, status: int, length: int | None, chunked: bool,
                     close: bool) -> Framing:
    """For a final (non-1xx) response to a request with ``method`` and ``version`` whose fields
    declared ``length`` and ``chunked`` (relay_fields); ``close``: the client connection is to
    close after this response anyway."""
    if method == b"HEAD" or status in NO_BODY_STATUS:
        line = b"Content-Length: %d\r\n" % length if length is not None else b""
        return line, False, False, True, close, None
    if chunked:
        if version == "1.1":
            return CHUNKED_LINE, True, False, False, close, None
        return b"", False, False, False, True, None  # HTTP/1.0: de-chunked up to close
    if length is not None:
        return b"Content-Length: %d\r\n" % length, False, False, False, close, length
    # Close-delimited (RFC 9112 §6.3(8)): keep the client's connection by re-framing as chunked.
    if version == "1.1" and not close:
        return CHUNKED_LINE, True, True, False, False, None
    return b"", False, True, False, True, None
