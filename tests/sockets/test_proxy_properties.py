"""Property-based and adversarial tests through a real switch on real sockets.

Hypothesis generates pipelined request bursts, scripted server responses and malformed
requests; every byte stream is delivered in random-sized pieces with tiny pauses so both of the
switch's parsers (client side and server side) see every kind of split. h11 serves as an
independent oracle for what a request means.

Each test builds its switch and origin once and reuses them across examples (the counters are
compared as deltas), which keeps the whole file to a few seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import time
from collections import deque

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import Conn, get, read_head, simple_config, wait_for

from l7switch.devtools.origin import OriginResponse
from l7switch.http.message import normalize_path

SPLICE = 65536  # the default splice threshold
# The server sees the head before the body has come (limits.buffer_body off).
STREAMING = "limits: {buffer_body: 0}\n"

# No example database: nothing is written into the checkout, and CI runs stay independent.
FAST = settings(max_examples=30, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# L7_PROPERTY_SCALE=10 runs ten times the examples (a soak run; the default keeps CI fast).
SCALE = float(os.environ.get("L7_PROPERTY_SCALE", "1"))


def sized(n: int) -> settings:
    return settings(FAST, max_examples=max(1, int(n * SCALE)))


# ---- shared strategies and helpers --------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Header names the switch treats specially; generated extension headers never collide with them.
SPECIAL = {"host", "content-length", "transfer-encoding", "connection", "expect", "keep-alive",
           "proxy-connection", "te", "trailer", "upgrade", "via", "x-forwarded-for",
           "x-forwarded-proto", "x-forwarded-host", "x-request-id"}
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}

tokens = st.text(TCHAR, min_size=1, max_size=12)
ext_names = tokens.map(lambda t: "X-" + t).filter(lambda n: n.lower() not in SPECIAL)
# field-value: VCHAR / obs-text with inner SP/HTAB, no leading/trailing whitespace.
_vchars = st.sampled_from([chr(c) for c in range(0x21, 0x7f)] + ["\x80", "\xe9", "\xff"])
field_values = st.lists(st.one_of(_vchars, _vchars, st.sampled_from([" ", "\t"])), max_size=24).map(
    lambda cs: "".join(cs).strip(" \t")).filter(lambda v: v != "")
body_sizes = st.one_of(
    st.integers(0, 3000),
    st.integers(SPLICE - 300, SPLICE + 300),
    st.integers(0, 200_000),
)


def body_bytes(n: int, seed: int) -> bytes:
    """Deterministic, non-repeating-ish bytes (cheap for 200 KB)."""
    block = hashlib.sha256(b"%d" % seed).digest()
    return (block * (n // len(block) + 1))[:n]


def chunk_body(body: bytes, cuts: list[int], ext: bool, trailers: list[tuple[str, str]]) -> bytes:
    points = sorted({c for c in cuts if 0 < c < len(body)})
    out = []
    prev = 0
    for p in points + [len(body)]:
        if p > prev:
            out.append(b"%x%s\r\n%s\r\n" % (p - prev, b";ext=1" if ext else b"", body[prev:p]))
        prev = p
    out.append(b"0\r\n")
    for n, v in trailers:
        out.append(f"{n}: {v}\r\n".encode("latin-1"))
    out.append(b"\r\n")
    return b"".join(out)


def send_pieces(c: Conn, raw: bytes, cuts: list[int], pause: float) -> None:
    points = sorted({p for p in cuts if 0 < p < len(raw)})
    prev = 0
    for p in points + [len(raw)]:
        c.send(raw[prev:p])
        prev = p
        if pause:
            time.sleep(pause)


def cuts_for(data: st.DataObject, n: int, max_cuts: int = 8) -> list[int]:
    if n < 2:
        return []
    return data.draw(st.lists(st.integers(1, n - 1), max_size=max_cuts), label="cuts")


pauses = st.sampled_from([0.0, 0.0, 0.0005, 0.002])


def header_map(doc: dict) -> list[tuple[str, str]]:
    return [(n, v) for n, v in doc["headers"]]


# ---- 1. random segmentation of pipelined client requests ------------------------------------

@st.composite
def client_request(draw, last: bool):
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT"]))
    framing = "none"
    size = 0
    if method in ("POST", "PUT"):
        framing = draw(st.sampled_from(["cl", "chunked"]))
        size = draw(body_sizes)
    seed = draw(st.integers(0, 1 << 30))
    body = body_bytes(size, seed)
    extras = draw(st.lists(st.tuples(ext_names, field_values), max_size=6))
    # Some extension headers are named in Connection (so they are hop-by-hop).
    listed = [n for n, _ in extras if draw(st.booleans())] if extras else []
    listed_spelling = [draw(st.sampled_from([n, n.lower(), n.upper()])) for n in listed]
    hop = draw(st.lists(st.sampled_from([("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                                         ("TE", "trailers"), ("Trailer", "X-T")]), max_size=3, unique=True))
    close = last and draw(st.booleans())
    conn_values = listed_spelling + (["close"] if close else []) + \
        (["keep-alive"] if draw(st.booleans()) else [])
    lines = [f"{method} /echo?i={seed} HTTP/1.1", "Host: x"]
    for n, v in extras:
        lines.append(f"{n}: {v}")
    for n, v in hop:
        lines.append(f"{n}: {v}")
    if conn_values:
        if draw(st.booleans()) and len(conn_values) > 1:
            lines.extend(f"Connection: {t}" for t in conn_values)  # several Connection fields
        else:
            lines.append("Connection: " + ", ".join(conn_values))
    cuts = draw(st.lists(st.integers(1, max(1, size - 1)), max_size=6)) if framing == "chunked" else []
    # Trailer names never start with "X-", so they cannot be confused with a header field.
    trailers = draw(st.lists(st.tuples(tokens.map(lambda t: "T-" + t), field_values), max_size=2)) \
        if framing == "chunked" else []
    if framing == "cl":
        lines.append(f"Content-Length: {size}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        payload = chunk_body(body, cuts, draw(st.booleans()), trailers)
    else:
        payload = b""
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    dropped = {n.lower() for n in listed} | HOP
    kept = [(n, v) for n, v in extras if n.lower() not in dropped]
    return dict(method=method, raw=raw, body=body, kept=kept, dropped=dropped, close=close,
                trailers=[n.lower() for n, _ in trailers], seed=seed)


@st.composite
def bursts(draw):
    n = draw(st.integers(1, 4))
    return [draw(client_request(last=(i == n - 1))) for i in range(n)]


def check_echo(doc: dict, req: dict) -> None:
    assert doc["method"] == req["method"]
    assert doc["url"] == f"/echo?i={req['seed']}"
    assert doc["body_len"] == len(req["body"])
    assert doc["body_sha256"] == hashlib.sha256(req["body"]).hexdigest()
    got = header_map(doc)
    names = [n.lower() for n, _ in got]
    for bad in req["dropped"]:
        assert bad not in names, f"hop-by-hop {bad!r} reached the origin: {got}"
    for t in req["trailers"]:
        assert t not in names, f"trailer field {t!r} merged into the header section"
    # Field names are case-insensitive (RFC 9110 §5.1); the switch forwards them lower-cased.
    ext = [(n.lower(), v) for n, v in got if n.lower().startswith("x-") and not n.lower().startswith("x-forwarded-")
           and n.lower() != "x-request-id"]  # (the switch's own, tested in test_access_log)
    assert ext == [(n.lower(), v) for n, v in req["kept"]]
    if req["method"] in ("POST", "PUT"):
        # The switch writes its own framing: exactly one of CL / TE chunked.
        framing = [n for n in names if n in ("content-length", "transfer-encoding")]
        assert len(framing) == 1, got


def test_pipelined_requests_random_segmentation(proxy):
    sw, o = proxy()

    @given(reqs=bursts(), data=st.data(), pause=pauses)
    @sized(40)
    def run(reqs, data, pause):
        raw = b"".join(r["raw"] for r in reqs)
        before = o.requests
        with Conn(sw.port) as c:
            send_pieces(c, raw, cuts_for(data, len(raw)), pause)
            for req in reqs:
                r = c.response(head=req["method"] == "HEAD")
                assert r.status == 200, r
                if req["method"] == "HEAD":
                    assert r.body == b""
                    assert r.header("content-length") is not None
                else:
                    check_echo(r.json(), req)
            if reqs[-1]["close"]:
                assert c.is_closed()
            else:
                assert c.is_open(0.02)
        assert wait_for(lambda: o.requests - before == len(reqs), 2.0), (o.requests - before, len(reqs))
    run()


# ---- 2. random segmentation of server responses ----------------------------------------------

@st.composite
def server_response(draw, method: str):
    kind = draw(st.sampled_from(["cl", "chunked", "close", "204", "304", "cl", "chunked"]))
    status = {"204": 204, "304": 304}.get(kind) or draw(st.sampled_from([200, 201, 404, 500, 503]))
    size = draw(body_sizes) if kind in ("cl", "chunked", "close") else 0
    body = body_bytes(size, draw(st.integers(0, 1 << 30)))
    interim = draw(st.lists(st.sampled_from([b"HTTP/1.1 100 Continue\r\n\r\n",
                                             b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
                                             b"HTTP/1.1 102 Processing\r\n\r\n"]), max_size=2))
    extras = draw(st.lists(st.tuples(ext_names, field_values), max_size=4))
    server_close = kind == "close" or draw(st.integers(0, 5)) == 0  # Connection: close on a framed one
    head = [f"HTTP/1.1 {status} Whatever"] + [f"{n}: {v}" for n, v in extras]
    if kind == "cl":
        head.append(f"Content-Length: {size}")
        payload = body if method != "HEAD" else b""
    elif kind == "chunked":
        head.append("Transfer-Encoding: chunked")
        ccuts = draw(st.lists(st.integers(1, max(1, size - 1)), max_size=6))
        trailers = draw(st.lists(st.tuples(ext_names, field_values), max_size=2))
        payload = chunk_body(body, ccuts, draw(st.booleans()), trailers) if method != "HEAD" else b""
    elif kind == "304" and draw(st.booleans()):
        head.append(f"Content-Length: {draw(st.integers(0, 99999))}")  # the representation's size
        payload = b""
    else:
        payload = body if method != "HEAD" else b""
    if server_close and kind != "close":
        head.append("Connection: close")
    raw = b"".join(interim) + ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
    expect_body = b"" if method == "HEAD" or kind in ("204", "304") else body
    return dict(kind=kind, status=status, raw=raw, body=expect_body, extras=extras, close=server_close,
                interim=[int(i[9:12]) for i in interim])


class Script:
    """What a scripted raw origin answers, request after request, across connections."""

    def __init__(self) -> None:
        self.items: deque = deque()
        self.heads: list[bytes] = []

    async def behave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            self.heads.append(await read_head(reader))
            raw, cuts, pause, close = self.items.popleft()
            points = sorted({p for p in cuts if 0 < p < len(raw)})
            prev = 0
            for p in points + [len(raw)]:
                writer.write(raw[prev:p])
                prev = p
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
            if close:
                return


OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_server_responses_random_segmentation(raw_origin, switch_factory):
    script = Script()
    ro = raw_origin(script.behave)
    sw = switch_factory(simple_config(ro.port))

    @given(data=st.data(), method=st.sampled_from(["GET", "GET", "HEAD"]), version=st.sampled_from(["1.1", "1.1", "1.0"]),
           pause=pauses)
    @sized(50)
    def run(data, method, version, pause):
        resp = data.draw(server_response(method), label="response")
        script.items.clear()
        script.items.append((resp["raw"], cuts_for(data, len(resp["raw"])), pause, resp["close"]))
        with Conn(sw.port) as c:
            c.send(f"{method} /r HTTP/{version}\r\nHost: x\r\n\r\n".encode())
            interim = []
            while True:
                r = c.response(head=method == "HEAD", keep_interim=True)
                if 100 <= r.status < 200:
                    interim.append(r.status)
                    continue
                break
            assert r.status == resp["status"], r
            assert r.body == resp["body"]
            assert interim == (resp["interim"] if version == "1.1" else [])
            # Header fields other than framing/hop-by-hop are passed through.
            for n, v in resp["extras"]:
                assert v in r.all(n), (n, v, r.headers)
            if version == "1.0":
                assert c.is_closed()
                return
            # HTTP/1.1: self-delimited, never close-delimited, and the connection is reused.
            assert r.header("connection") is None, r
            if method != "HEAD" and r.status not in (204, 304):
                assert (r.header("content-length") is not None) != r.chunked, r
            if resp["kind"] in ("204", "304") or method == "HEAD":
                assert r.header("transfer-encoding") is None
            script.items.append((OK_RESPONSE, [], 0, False))
            c.send(get("/second"))
            r2 = c.response()
            assert (r2.status, r2.body) == (200, b"ok")
    run()


# ---- 3. one forbidden thing -> 400 (431/413) + close, nothing forwarded ----------------------

def _valid(method: str = "POST", body: bytes = b"hello", extra: str = "X-A: 1\r\n",
           chunked: bool = False, target: str = "/echo", version: str = "1.1") -> bytes:
    if chunked:
        framing, payload = "Transfer-Encoding: chunked\r\n", chunk_body(body, [2], False, [])
    else:
        framing, payload = f"Content-Length: {len(body)}\r\n", body
    return (f"{method} {target} HTTP/{version}\r\nHost: x\r\n{extra}{framing}\r\n".encode("latin-1")
            + payload)


# name -> (bad request bytes, expected status). Each differs from a valid request in one thing.
MUTATIONS: dict[str, tuple[bytes, int]] = {
    "bare CR in value": (_valid(extra="X-A: a\rb\r\n"), 400),
    "NUL in value": (_valid(extra="X-A: a\x00b\r\n"), 400),
    "DEL in value": (_valid(extra="X-A: a\x7fb\r\n"), 400),
    "space before colon": (_valid(extra="X-A : 1\r\n"), 400),
    "tab before colon": (_valid(extra="X-A\t: 1\r\n"), 400),
    "bad char in name": (_valid(extra="X(A): 1\r\n"), 400),
    "empty name": (_valid(extra=": 1\r\n"), 400),
    "no colon": (_valid(extra="X-A 1\r\n"), 400),
    "duplicate differing CL": (_valid(extra="Content-Length: 6\r\n"), 400),
    "CL list differing": (_valid(body=b"hello", extra="").replace(b"Content-Length: 5", b"Content-Length: 5, 6"), 400),
    "CL non-digit": (_valid(extra="").replace(b"Content-Length: 5", b"Content-Length: 5a"), 400),
    "CL negative": (_valid(extra="").replace(b"Content-Length: 5", b"Content-Length: -5"), 400),
    "CL overflow": (_valid(extra="").replace(b"Content-Length: 5", b"Content-Length: 99999999999999999999999"), 400),
    "CL + TE": (_valid(chunked=True, extra="Content-Length: 5\r\n"), 400),
    "TE + CL": (_valid(extra="Transfer-Encoding: chunked\r\n"), 400),
    "TE not chunked last": (_valid(chunked=True).replace(b"chunked", b"chunked, gzip"), 400),
    "TE identity": (_valid(chunked=True).replace(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"), 400),
    "TE chunked twice": (_valid(chunked=True, extra="Transfer-Encoding: chunked\r\n"), 400),
    "obs-fold": (_valid(extra="X-A: 1\r\n folded\r\n"), 400),
    "leading whitespace line": (_valid().replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\n X-B: 1\r\n", 1), 400),
    "TE in HTTP/1.0": (_valid(chunked=True, version="1.0"), 400),
    "invalid chunk size": (_valid(chunked=True).replace(b"\r\n2\r\n", b"\r\nzz\r\n"), 400),
    "chunk size overflow": (_valid(chunked=True).replace(b"\r\n2\r\n", b"\r\nfffffffffffffffffffff\r\n"), 400),
    "chunk data too long": (_valid(chunked=True).replace(b"2\r\nhe\r\n", b"2\r\nhex\r\n"), 400),
    "second Host": (_valid(extra="Host: y\r\n"), 400),
    "Host with path": (_valid().replace(b"Host: x", b"Host: x/y"), 400),
    "Host with userinfo": (_valid().replace(b"Host: x", b"Host: u@x"), 400),
    "no Host": (_valid().replace(b"Host: x\r\n", b""), 400),
    "fragment in target": (_valid(target="/echo#frag"), 400),
    "userinfo in absolute target": (_valid(target="http://u@x/echo"), 400),
    "relative target": (_valid(target="echo"), 400),
    "space in target": (_valid(target="/ec ho"), 400),
    "NUL in target": (_valid(target="/ec\x00ho"), 400),
    "HTTP/1.2": (_valid(version="1.2"), 400),
    "HTTP/2.0": (_valid(version="2.0"), 400),
    "HTTP/0.9 line": (b"GET /echo\r\n\r\n", 400),
    "lower-case version": (_valid().replace(b"HTTP/1.1", b"http/1.1", 1), 400),
    "unknown method": (_valid(method="FROB"), 400),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400),
    "header section too large": (_valid(extra="X-Big: " + "a" * 40_000 + "\r\n"), 431),
    "too many headers": (_valid(extra="".join(f"X-H{i}: {i}\r\n" for i in range(120))), 431),
    "body over limit (CL)": (_valid(body=b"q" * 5000)[:-5000], 413),
}


def test_mutated_request_rejected_and_nothing_forwarded(proxy):
    sw, o = proxy("limits: {max_body_bytes: 4KiB}\n")

    @given(name=st.sampled_from(sorted(MUTATIONS)), prefix=st.lists(st.integers(0, 3000), max_size=2),
           data=st.data(), pause=pauses)
    @sized(90)
    def run(name, prefix, data, pause):
        bad, status = MUTATIONS[name]
        good = [_valid(body=body_bytes(n, n)) for n in prefix]
        lead = b"".join(good)
        before = o.requests
        with Conn(sw.port) as c:
            # Random pieces up to the bad request; the bad request itself in one write, so the
            # switch has read everything before it closes (no RST racing the 400).
            send_pieces(c, lead, cuts_for(data, len(lead)), pause)
            try:
                c.send(bad)
            except OSError:
                pass
            for n in prefix:
                r = c.response()
                assert r.status == 200 and r.json()["body_len"] == n, r
            r = c.response()
            assert r.status == status, (name, r)
            assert r.header("connection") == "close"
            assert c.is_closed(), name
        time.sleep(0.01)
        assert o.requests - before == len(prefix), name
    run()


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_mutation_alone(proxy, name):
    """Every mutation at least once, independent of what hypothesis happens to draw."""
    sw, o = proxy("limits: {max_body_bytes: 4KiB}\n")
    bad, status = MUTATIONS[name]
    with Conn(sw.port) as c:
        c.send(bad)
        r = c.response()
        assert r.status == status, r
        assert c.is_closed()
    time.sleep(0.01)
    assert o.requests == 0


# ---- regressions for bugs found by the tests above ---------------------------------------------

def warm_pool(port: int) -> None:
    with Conn(port) as c:
        c.send(get("/echo"))
        assert c.response().status == 200


def test_regression_body_bytes_flushed_when_a_later_pipelined_request_is_bad(proxy):
    """A read holding a good request's body and then a bad request: the good request's body
    must still reach the server (it used to stay in Exchange.to_up: the origin waited for it
    forever and the client never got its response)."""
    sw, o = proxy()
    for bad in (MUTATIONS["no Host"][0], MUTATIONS["TE not chunked last"][0], b"\x00garbage\r\n\r\n"):
        warm_pool(sw.port)  # a pooled connection is attached synchronously, inside the parse
        body = b"b" * 937
        with Conn(sw.port, timeout=3) as c:
            c.send(_valid(body=body) + bad)
            r = c.response()
            assert r.status == 200 and r.json()["body_len"] == 937, r
            assert r.header("connection") is None
            r = c.response()
            assert r.status == 400
            assert c.is_closed()


def test_regression_queued_request_answered_before_pending_400(proxy):
    """good, good, bad in one read, the first response still pending: both good requests are
    answered (self-delimited, no Connection: close), then the 400, then the close. The first
    response used to carry Connection: close and the connection closed after it, dropping the
    queued request and the 400."""
    sw, o = proxy()
    with Conn(sw.port, timeout=3) as c:
        c.send(get("/delay/50") + get("/echo") + MUTATIONS["second Host"][0])
        r1 = c.response()
        assert r1.status == 200 and r1.header("connection") is None, r1
        r2 = c.response()
        assert r2.status == 200 and r2.json()["method"] == "GET", r2
        assert r2.header("connection") is None
        r3 = c.response()
        assert r3.status == 400 and r3.header("connection") == "close"
        assert c.is_closed()
    assert o.requests == 2


# ---- 4. differential oracle: h11's reading of the client bytes vs what the origin received ----

def _full_echo(req) -> OriginResponse:
    doc = {"method": req.method, "url": req.url, "headers": [[n, v] for n, v in req.headers],
           "body": req.body.decode("latin-1")}
    return OriginResponse(200, [("Content-Type", "application/json")], json.dumps(doc).encode())


SEGMENTS = [".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "a", "b", "", "%41", "%7e", "%7E", "~", "%2F",
            "%2f", "%25", "%20", "%zz", "%", "%c3%a9", "x:y", "@", "!$&'()*+,;=", "a.b", "..a", "-_"]


@st.composite
def oracle_request(draw):
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + "/".join(draw(st.lists(st.sampled_from(SEGMENTS), max_size=6)))
    query = draw(st.one_of(st.none(), st.lists(st.sampled_from(["a=1", "b", "/..", "%2e", "?", "x=%20"]),
                                                max_size=3).map("&".join)))
    target = path + ("" if query is None else "?" + query)
    if draw(st.integers(0, 5)) == 0:
        target = "http://x" + target
    lines = [f"{method} {target} HTTP/1.1", "Host: x"]
    ows = st.sampled_from(["", " ", "  ", "\t", " \t"])
    for n, v in draw(st.lists(st.tuples(ext_names, field_values), max_size=4)):
        lines.append(f"{n}:{draw(ows)}{v}{draw(ows)}")
    framing = draw(st.sampled_from(["none", "cl", "chunked"]))
    body = body_bytes(draw(st.integers(0, 3000)), draw(st.integers(0, 99))) if framing != "none" else b""
    if framing == "cl":
        n = len(body)
        # (Identical duplicates, as a second line or "n, n", are left out: RFC 9112 §6.3 lets a
        # recipient reject them, and llhttp does, while h11 accepts them.)
        spelled = draw(st.sampled_from([str(n), "00" + str(n), str(n) + " ", str(n) + "\t"]))
        lines.append(f"Content-Length: {spelled}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: " + draw(st.sampled_from(["chunked", "Chunked", "CHUNKED"])))
        cuts = draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=4))
        parts, prev = [], 0
        for p in sorted({c for c in cuts if 0 < c < len(body)}) + [len(body)]:
            if p > prev:
                size = draw(st.sampled_from(["%x", "%X", "00%x"])) % (p - prev)
                ext = draw(st.sampled_from(["", ";a=b", ';a="q"', ";flag"]))
                parts.append(f"{size}{ext}\r\n".encode() + body[prev:p] + b"\r\n")
            prev = p
        parts.append(b"0\r\n")
        if draw(st.booleans()):
            parts.append(b"X-Trailer: t\r\n")
        parts.append(b"\r\n")
        payload = b"".join(parts)
    else:
        payload = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def h11_view(raw: bytes):
    """(method, target, headers, body) as h11 reads the request, or None if h11 rejects it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    body = b""
    req = None
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                req = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif ev is h11.NEED_DATA:
                raise AssertionError("h11 wants more bytes than the generated request has")
    except h11.RemoteProtocolError:
        return None
    return req.method, req.target, list(req.headers.raw_items()), body


def test_differential_against_h11(origin_factory, switch_factory):
    o = origin_factory("oracle", handler=_full_echo)
    sw = switch_factory(simple_config(o.port))

    @given(raw=oracle_request(), data=st.data(), pause=pauses)
    @sized(80)
    def run(raw, data, pause):
        view = h11_view(raw)
        with Conn(sw.port) as c:
            try:
                send_pieces(c, raw, cuts_for(data, len(raw), 4), pause)
            except OSError:
                pass  # closed early after an error response: read it below
            r = c.response()
        if view is None:
            return  # h11 refuses it; the switch may be more lenient, within RFC 9112
        method, target, h11_headers, body = view
        assert r.status == 200, (raw, r)  # everything generated here is valid HTTP/1.1
        doc = r.json()
        assert doc["method"].encode() == method
        if target.lower().startswith(b"http://"):
            target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
        path, q, query = target.decode("latin-1").partition("?")
        assert doc["url"] == normalize_path(path) + q + query
        assert doc["body"].encode("latin-1") == body
        ext = [(n.lower(), v) for n, v in doc["headers"] if n.lower().startswith("x-")
               and not n.lower().startswith("x-forwarded") and n.lower() != "x-request-id"]
        assert ext == [(n.decode().lower(), v.decode("latin-1")) for n, v in h11_headers
                       if n.lower().startswith(b"x-")]
    run()


def test_regression_trailing_ows_not_part_of_header_value(origin_factory, switch_factory):
    """llhttp keeps trailing SP/HTAB in a header value. Rules matched on "a " where every
    RFC 9110 parser behind the switch reads "a" (an anchored header rule was skipped), and the
    whitespace was forwarded as part of the value."""
    o_def, o_t = origin_factory("def"), origin_factory("tenant")
    sw = switch_factory(f"""
listen: [{{address: 127.0.0.1:0}}]
pools:
  default: {{servers: [127.0.0.1:{o_def.port}]}}
  t: {{servers: [127.0.0.1:{o_t.port}]}}
rules:
  - name: tenant
    match: {{header: {{X-Tenant: "^a$"}}}}
    pool: t
default_pool: default
""")
    with Conn(sw.port) as c:
        for spelled in ("a", "a ", "a\t", " a \t "):
            c.send(get("/echo", extra=f"X-Tenant:{spelled}\r\n"))
            doc = c.response().json()
            assert doc["server"] == "tenant", spelled
            assert ["X-Tenant", "a"] in doc["headers"] or ["x-tenant", "a"] in doc["headers"], doc


# ---- 5. half-closes, resets, early responses -----------------------------------------------------

def test_half_closed_client_after_pipelined_burst(proxy):
    """Requests then shutdown(SHUT_WR): every request is answered, in order, then the switch
    closes (RFC 9112 §9.6)."""
    sw, o = proxy()

    @given(reqs=bursts(), data=st.data())
    @sized(20)
    def run(reqs, data):
        raw = b"".join(r["raw"] for r in reqs)
        with Conn(sw.port) as c:
            send_pieces(c, raw, cuts_for(data, len(raw), 4), 0)
            c.sock.shutdown(socket.SHUT_WR)
            for req in reqs:
                r = c.response(head=req["method"] == "HEAD")
                assert r.status == 200, r
                if req["method"] != "HEAD":
                    check_echo(r.json(), req)
            assert c.is_closed()
    run()


def _rst_close(c: Conn) -> None:
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def test_client_reset_mid_body_never_completes_a_request(lt, proxy):
    sw, o = proxy()

    @given(size=st.one_of(st.integers(1, 3000), st.integers(SPLICE - 100, SPLICE + 100),
                          st.integers(SPLICE, 300_000)),
           chunked=st.booleans(), frac=st.floats(0.0, 0.99), data=st.data())
    @sized(25)
    def run(size, chunked, frac, data):
        body = body_bytes(size, size)
        if chunked:
            head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            payload = chunk_body(body, cuts_for(data, size, 3), False, [])[:-5]  # no last-chunk
        else:
            head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            payload = body
        sent = head + payload[:int(len(payload) * frac)]
        before = o.requests
        c = Conn(sw.port)
        send_pieces(c, sent, cuts_for(data, len(sent), 3), 0.001)
        time.sleep(0.005)
        _rst_close(c)
        assert wait_for(lambda: lt.call(lambda: len(sw.clients)) == 0, 2.0)
        time.sleep(0.02)
        assert o.requests == before
        # and the switch still works
        with Conn(sw.port) as c2:
            c2.send(get("/echo"))
            assert c2.response().status == 200
    run()


def test_server_answers_before_reading_the_body(raw_origin, switch_factory):
    """An origin that responds at the request head (a 413, a redirect...) and then either
    closes or waits: the client gets that response and the connection is closed after it (the
    request body's end is in doubt), never hangs, whatever the body size."""
    mode = {"close": True}

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        if mode["close"]:
            return
        while await reader.read(65536):  # keep reading (and discarding) the body
            pass

    ro = raw_origin(behave)
    # Streaming (buffer_body: 0): the server sees the head before the body has come, as with
    # HAProxy's default and nginx's proxy_request_buffering off.
    sw = switch_factory(simple_config(ro.port, extra=STREAMING))

    @given(size=st.one_of(st.integers(1, 3000), st.integers(SPLICE - 100, SPLICE + 100),
                          st.integers(300_000, 2_000_000)),
           chunked=st.booleans(), close=st.booleans(), send_rest=st.booleans(), data=st.data())
    @sized(25)
    def run(size, chunked, close, send_rest, data):
        mode["close"] = close
        body = body_bytes(size, size)
        if chunked:
            raw = (b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunk_body(body, cuts_for(data, size, 3), False, []))
        else:
            raw = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + body
        with Conn(sw.port) as c:
            split = raw.index(b"\r\n\r\n") + 4
            c.send(raw[:split])  # the head alone: the server answers before any body byte
            r = c.response()
            assert (r.status, r.body) == (413, b"nope")
            try:
                if send_rest:  # else the client stalls: it waits for the close, as curl does
                    c.send(raw[split:])
            except OSError:
                pass  # the switch may close (and reset) as soon as it has answered
            t0 = time.monotonic()
            try:
                c.read_to_close(limit=3.0)
            except TimeoutError:
                raise AssertionError(f"client connection left open {time.monotonic() - t0:.1f}s") from None
    run()


@pytest.mark.parametrize("server_closes", [True, False])
@pytest.mark.parametrize("size", [100, SPLICE + 4464, 1_000_000])
def test_regression_early_response_cancels_request_splice(lt, raw_origin, switch_factory, size,
                                                         server_closes):
    """The server answers at the head of a request whose body is spliced (>= threshold) and the
    client sends no more: the exchange finished, but its splice job kept dup()s of both sockets,
    so neither the client nor the server connection was ever closed."""
    origin_eof = []

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        if server_closes:
            return
        while await reader.read(65536):
            pass
        origin_eof.append(True)

    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port, extra=STREAMING))
    with Conn(sw.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"x" * 10)
        r = c.response()
        assert (r.status, r.body) == (413, b"nope")
        assert c.is_closed(2.0), "client connection left open"
    if not server_closes:
        assert wait_for(lambda: bool(origin_eof), 2.0), "server connection left open"
    assert wait_for(lambda: lt.call(lambda: len(sw.clients)) == 0, 2.0)
