"""tlshello.py: real ClientHellos/ServerHellos from Python's ssl module, fed whole, truncated,
fragmented at every byte boundary and split into random pieces; hand-built malformed ones."""

from __future__ import annotations

import os
import ssl
import struct

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from l7switch.passthrough.tlshello import (ALERT_DECODE_ERROR, ALERT_HANDSHAKE_FAILURE, ALERT_RECORD_OVERFLOW,
                                           ALERT_UNEXPECTED_MESSAGE, CLIENT_HELLO, MAX_RECORD, NEED_MORE,
                                           SERVER_HELLO, TLS12, TLS13, BadHello, ClientHello, HelloReader,
                                           ServerHello, alert)

# ---- real hellos ---------------------------------------------------------------------------------

CA = trustme.CA()
CERT = CA.issue_cert("api.example.test", "www.example.test")


def server_context(max_version: ssl.TLSVersion | None = None, tickets: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    CERT.configure_cert(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def client_context(max_version: ssl.TLSVersion | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    CA.configure_trust(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_hello_bytes(ctx: ssl.SSLContext, sni: str | None = "api.example.test",
                       session: ssl.SSLSession | None = None) -> bytes:
    """What a client writes first: do_handshake on a MemoryBIO, read the outgoing bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni, session=session)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def handshake_in_memory(cctx: ssl.SSLContext, sctx: ssl.SSLContext, session: ssl.SSLSession | None = None
                        ) -> tuple[bytes, bytes, ssl.SSLObject]:
    """A full in-memory handshake; returns (client's first flight, server's first flight, client)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname="api.example.test", session=session)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    first_c = first_s = b""
    for _ in range(10):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        out = c_out.read()
        first_c = first_c or out
        s_in.write(out)
        back = s_out.read()
        first_s = first_s or back
        c_in.write(back)
        if not out and not back:
            break
    # Close with close_notify both ways: OpenSSL drops a session from the server's cache when
    # its connection ends without a clean shutdown, and the client reads TLS 1.3 tickets here.
    for obj, src, dst in ((client, c_out, s_in), (server, s_out, c_in), (client, c_out, s_in)):
        try:
            obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLError):
            pass
        dst.write(src.read())
    return first_c, first_s, client


def parse(data: bytes, expect: int = CLIENT_HELLO):
    return HelloReader(expect).feed(data)


@pytest.mark.parametrize("max_version,sni,versions", [
    (None, "api.example.test", (TLS13, TLS12)),
    (ssl.TLSVersion.TLSv1_2, "api.example.test", ()),
    (None, None, (TLS13, TLS12)),
    (ssl.TLSVersion.TLSv1_2, None, ()),
    (None, "API.Example.TEST", (TLS13, TLS12)),
])
def test_real_client_hellos(max_version, sni, versions) -> None:
    data = client_hello_bytes(client_context(max_version), sni)
    hello = parse(data)
    assert isinstance(hello, ClientHello)
    assert hello.legacy_version == TLS12  # RFC 8446 §4.1.2: TLS 1.3 clients send 0x0303 here
    assert hello.sni == (sni.lower() if sni else None)
    assert hello.supported_versions == versions
    assert hello.offers_tls13 == bool(versions)
    assert hello.size == len(data) - 5  # one record
    # TLS 1.3 clients send a random 32-byte legacy_session_id (middlebox compatibility mode).
    assert len(hello.session_id) == (32 if versions else 0)
    assert not hello.has_ticket


def test_alpn_is_read() -> None:
    hello = parse(client_hello_bytes(client_context(alpn=["h2", "http/1.1"])))
    assert hello.alpn == ("h2", "http/1.1")


def test_resumption_by_session_id_tls12() -> None:
    """TLS 1.2 without tickets: the resuming hello carries the ID the server's hello issued."""
    sctx = server_context(ssl.TLSVersion.TLSv1_2, tickets=False)
    cctx = client_context(ssl.TLSVersion.TLSv1_2)
    _, first_s, client = handshake_in_memory(cctx, sctx)
    sh = parse(first_s, SERVER_HELLO)
    assert isinstance(sh, ServerHello)
    assert sh.version == TLS12 and not sh.tls13
    assert len(sh.session_id) == 32
    session = client.session
    assert session is not None and session.id == sh.session_id
    again = parse(client_hello_bytes(cctx, session=session))
    assert again.session_id == sh.session_id
    assert not again.has_ticket
    c2, s2, client2 = handshake_in_memory(cctx, sctx, session)
    assert client2.session_reused
    assert parse(s2, SERVER_HELLO).session_id == sh.session_id  # the server echoes it


def test_resumption_by_ticket_tls12() -> None:
    sctx = server_context(ssl.TLSVersion.TLSv1_2, tickets=True)
    cctx = client_context(ssl.TLSVersion.TLSv1_2)
    _, _, client = handshake_in_memory(cctx, sctx)
    again = parse(client_hello_bytes(cctx, session=client.session))
    assert again.has_ticket


def test_server_hello_tls13_is_marked() -> None:
    first_c, first_s, _ = handshake_in_memory(client_context(), server_context())
    sh = parse(first_s, SERVER_HELLO)
    assert sh.tls13 and sh.version == TLS13 and sh.legacy_version == TLS12
    # The legacy ID is the client's random one, echoed (RFC 8446 §4.1.3): useless for stickiness.
    assert sh.session_id == parse(first_c).session_id


# ---- incremental feeding -------------------------------------------------------------------------

HELLO13 = client_hello_bytes(client_context())
HELLO12 = client_hello_bytes(client_context(ssl.TLSVersion.TLSv1_2), sni=None)


def refragment(data: bytes, sizes: list[int]) -> bytes:
    """The same handshake message re-cut into records of the given fragment sizes."""
    message = b""
    pos = 0
    while pos < len(data):
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        message += data[pos + 5:pos + 5 + n]
        pos += 5 + n
    out = b""
    i = 0
    for size in sizes:
        if i >= len(message):
            break
        chunk = message[i:i + size]
        out += bytes((22, 3, 1)) + struct.pack("!H", len(chunk)) + chunk
        i += len(chunk)
    if i < len(message):
        chunk = message[i:]
        out += bytes((22, 3, 1)) + struct.pack("!H", len(chunk)) + chunk
    return out


@pytest.mark.parametrize("data", [HELLO13, HELLO12, refragment(HELLO13, [1, 2, 3, 100])],
                         ids=["tls13", "tls12", "records"])
def test_every_truncation_needs_more(data: bytes) -> None:
    for cut in range(len(data)):
        assert HelloReader().feed(data[:cut]) is NEED_MORE, cut
    assert isinstance(HelloReader().feed(data), ClientHello)


def test_byte_at_a_time() -> None:
    reader = HelloReader()
    for b in HELLO13[:-1]:
        assert reader.feed(bytes((b,))) is NEED_MORE
    hello = reader.feed(HELLO13[-1:])
    assert hello.sni == "api.example.test"
    assert bytes(reader.raw) == HELLO13  # kept whole for forwarding
    assert reader.feed(b"more") is hello  # done is done


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 600), min_size=1, max_size=40), st.lists(st.integers(1, 80), max_size=30))
def test_any_segmentation(record_sizes: list[int], tcp_cuts: list[int]) -> None:
    """Any record fragmentation, split into any TCP segments, parses the same hello."""
    data = refragment(HELLO13, record_sizes)
    reader = HelloReader()
    pos = 0
    result = NEED_MORE
    for cut in tcp_cuts:
        result = reader.feed(data[pos:pos + cut])
        pos += cut
        if pos >= len(data):
            break
    if pos < len(data):
        result = reader.feed(data[pos:])
    assert isinstance(result, ClientHello)
    assert result.sni == "api.example.test" and result.supported_versions == (TLS13, TLS12)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_garbage_never_escapes_bad_hello(data: bytes) -> None:
    reader = HelloReader()
    try:
        result = reader.feed(data)
    except BadHello:
        return
    assert result is NEED_MORE or isinstance(result, ClientHello)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(HELLO13) - 1), st.integers(0, 255))
def test_corrupted_hello_never_escapes_bad_hello(pos: int, value: int) -> None:
    data = bytearray(HELLO13)
    data[pos] = value
    try:
        HelloReader().feed(bytes(data))
    except BadHello:
        pass


def test_random_garbage_is_refused() -> None:
    for _ in range(50):
        junk = os.urandom(64)
        if junk[0] == 22:
            continue
        with pytest.raises(BadHello):
            HelloReader().feed(junk)


# ---- malformed, hand-built -----------------------------------------------------------------------

def record(body: bytes, ctype: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return bytes((ctype,)) + version + struct.pack("!H", len(body)) + body


def handshake(body: bytes, mtype: int = 1) -> bytes:
    return bytes((mtype,)) + len(body).to_bytes(3, "big") + body


def hello_body(session_id: bytes = b"", suites: bytes = b"\x13\x01", compression: bytes = b"\x00",
               extensions: bytes | None = b"") -> bytes:
    out = b"\x03\x03" + bytes(32) + bytes((len(session_id),)) + session_id
    out += struct.pack("!H", len(suites)) + suites + bytes((len(compression),)) + compression
    if extensions is not None:
        out += struct.pack("!H", len(extensions)) + extensions
    return out


def ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    lst = b"".join(bytes((t,)) + struct.pack("!H", len(n)) + n for t, n in names)
    return ext(0, struct.pack("!H", len(lst)) + lst)


def test_hand_built_minimal_hello_without_extensions() -> None:
    hello = parse(record(handshake(hello_body(extensions=None))))
    assert hello.sni is None and hello.alpn == () and hello.session_id == b""


def test_unknown_name_types_are_skipped() -> None:
    hello = parse(record(handshake(hello_body(extensions=sni_ext((7, b"x"), (0, b"a.example"))))))
    assert hello.sni == "a.example"


def test_session_ticket_without_data_is_not_a_ticket() -> None:
    assert not parse(record(handshake(hello_body(extensions=ext(35, b""))))).has_ticket
    assert parse(record(handshake(hello_body(extensions=ext(35, b"t" * 20))))).has_ticket


# Alert codes, short enough for one table row each.
UNEXPECTED, DECODE = ALERT_UNEXPECTED_MESSAGE, ALERT_DECODE_ERROR
OVERFLOW, FAILURE = ALERT_RECORD_OVERFLOW, ALERT_HANDSHAKE_FAILURE

BAD = [
    ("plain HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plain HTTP", None),
    ("plain HTTP, short", b"GET", "plain HTTP", None),
    ("PRI preface", b"PRI * HTTP/2.0\r\n", "plain HTTP", None),
    ("SSLv2 hello", b"\x80\x2e\x01\x00\x02\x00\x15", "SSLv2", None),
    ("alert first", record(b"\x02\x28", ctype=21), "alert record", UNEXPECTED),
    ("app data first", record(b"xx", ctype=23), "application_data", UNEXPECTED),
    ("junk byte", b"\x00\x01\x02", "not a TLS record", None),
    ("record version 2.0", b"\x16\x02\x00", "not TLS", None),
    ("empty record", record(b""), "empty handshake record", DECODE),
    ("huge record", b"\x16\x03\x01" + struct.pack("!H", MAX_RECORD + 1), "exceeds 2^14", OVERFLOW),
    ("server hello to server", record(handshake(b"", 2)), "expected ClientHello", UNEXPECTED),
    ("hello too large", record(b"\x01\x01\x00\x00"), "exceeds the 65536-byte limit", FAILURE),
    ("interleaved", record(b"\x01\x00\x00\x50") + record(b"\x01", ctype=21), "in the middle", UNEXPECTED),
    ("session id 33", record(handshake(hello_body(session_id=bytes(33)))), "session_id length 33", DECODE),
    ("odd suites", record(handshake(hello_body(suites=b"\x13\x01\x13"))), "odd cipher_suites", DECODE),
    ("no suites", record(handshake(hello_body(suites=b""))), "cipher_suites length 0", DECODE),
    ("no compression", record(handshake(hello_body(compression=b""))), "compression_methods length 0",
     DECODE),
    ("random cut", record(handshake(b"\x03\x03" + bytes(10))), "random truncated", DECODE),
    ("extensions overrun", record(handshake(hello_body(extensions=None) + b"\x00\x10\x00")),
     "extensions truncated", DECODE),
    ("extension overrun", record(handshake(hello_body(extensions=b"\x00\x00\x00\x09abc"))),
     "extension 0 truncated", DECODE),
    ("stray after extensions", record(handshake(hello_body(extensions=b"") + b"zz")), "stray bytes", DECODE),
    ("duplicate extension", record(handshake(hello_body(extensions=ext(16, b"") + ext(16, b"")))),
     "appears twice", DECODE),
    ("two host names", record(handshake(hello_body(extensions=sni_ext((0, b"a.test"), (0, b"b.test"))))),
     "more than one host_name", DECODE),
    ("bad host chars", record(handshake(hello_body(extensions=sni_ext((0, b"a b.test"))))),
     "malformed server name", DECODE),
    ("trailing dot", record(handshake(hello_body(extensions=sni_ext((0, b"a.test."))))),
     "malformed server name", DECODE),
    ("non-ascii host", record(handshake(hello_body(extensions=sni_ext((0, "bücher.test".encode()))))),
     "malformed server name", DECODE),
    ("empty sni list", record(handshake(hello_body(extensions=ext(0, b"\x00\x00")))),
     "server_name_list length 0", DECODE),
    ("sni stray", record(handshake(hello_body(extensions=ext(0, b"\x00\x04\x00\x00\x01a" + b"x")))),
     "stray bytes", DECODE),
    ("alpn short list", record(handshake(hello_body(extensions=ext(16, b"\x00\x01\x00")))),
     "protocol_name_list length 1", DECODE),
    ("alpn empty name", record(handshake(hello_body(extensions=ext(16, b"\x00\x02\x00\x00")))),
     "protocol name length 0", DECODE),
    ("versions odd", record(handshake(hello_body(extensions=ext(43, b"\x03\x03\x04\x03")))),
     "odd supported_versions", DECODE),
]


@pytest.mark.parametrize("data,reason,alert_code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed(data: bytes, reason: str, alert_code: int | None) -> None:
    with pytest.raises(BadHello) as info:
        HelloReader().feed(data)
    assert reason in info.value.reason
    assert info.value.alert == alert_code


def test_malformed_fed_byte_at_a_time_fails_the_same() -> None:
    """Early checks on partial data agree with the whole-message verdict."""
    for _, data, reason, _ in BAD:
        reader = HelloReader()
        with pytest.raises(BadHello) as info:
            for b in data:
                reader.feed(bytes((b,)))
        assert reason in info.value.reason or "plain HTTP" in info.value.reason


def test_smaller_size_limit() -> None:
    with pytest.raises(BadHello, match="exceeds the 100-byte limit"):
        HelloReader(max_size=100).feed(HELLO13[:9])


def test_alert_record() -> None:
    assert alert(112) == b"\x15\x03\x03\x00\x02\x02\x70"
