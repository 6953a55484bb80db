"""The first TLS handshake message of each direction, read without decrypting anything (sans-IO).

A tls-passthrough listener (connection.py) must route on the ClientHello before any server is
chosen, and ssl_session persistence must learn the session ID from the server's ServerHello.
Both messages are plaintext: TLS records (RFC 8446 §5.1, RFC 5246 §6.2.1) carrying one handshake
message, which a client may fragment over several records and TCP may split at any byte.

``HelloReader(CLIENT_HELLO).feed(data)`` returns ``NEED_MORE`` until the whole message has
arrived, then a ``ClientHello`` (or ``ServerHello``); anything that is not a well-formed hello
raises ``BadHello`` with a reason a log line can carry. The reader holds at most ``max_size``
bytes of handshake message, so a peer cannot make it buffer without bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Record layer (RFC 8446 §5.1). 22 = handshake; 20/21/23 are the other types a first byte could
# carry, all wrong before the hello.
CONTENT_HANDSHAKE = 22
CONTENT_NAMES = {20: "change_cipher_spec", 21: "alert", 23: "application_data", 24: "heartbeat"}
RECORD_HEADER = 5
# RFC 5246 §6.2.3: a TLSCiphertext fragment is at most 2^14 + 2048 bytes (RFC 8446 §5.2 lowers
# it to 2^14 + 256); plaintext hellos are bounded by 2^14, so this is the most liberal limit.
MAX_RECORD = (1 << 14) + 2048
# Handshake types (RFC 8446 §4).
CLIENT_HELLO = 1
SERVER_HELLO = 2
HANDSHAKE_NAMES = {CLIENT_HELLO: "ClientHello", SERVER_HELLO: "ServerHello"}
# Our bound on one hello. Real ones are 200-2000 bytes; post-quantum key shares (ML-KEM-768,
# ~1.2 KB each) and big PSK identities stay far below this. HAProxy's tune.bufsize is 16 KiB.
MAX_HELLO = 64 * 1024
# Extension types (IANA TLS ExtensionType registry).
EXT_SERVER_NAME = 0  # RFC 6066 §3
EXT_ALPN = 16  # RFC 7301 §3.1
EXT_SESSION_TICKET = 35  # RFC 5077 §3.2
EXT_SUPPORTED_VERSIONS = 43  # RFC 8446 §4.2.1
HOST_NAME = 0  # RFC 6066 §3 NameType host_name
TLS12 = 0x0303
TLS13 = 0x0304
# Alert descriptions (RFC 8446 §6.2) a passthrough listener may send before closing.
ALERT_UNEXPECTED_MESSAGE = 10
ALERT_RECORD_OVERFLOW = 22
ALERT_HANDSHAKE_FAILURE = 40
ALERT_DECODE_ERROR = 50
ALERT_INTERNAL_ERROR = 80
ALERT_UNRECOGNIZED_NAME = 112

# RFC 6066 §3: an ASCII DNS host name (A-labels for IDNs) without a trailing dot. Underscores
# occur in real host names, so they pass; empty labels and labels over 63 octets do not.
_HOST_RE = re.compile(rb"(?!-)[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
# Method tokens that start an HTTP/1.x request line, for a clearer reason than "content type 71".
_HTTP_RE = re.compile(rb"[A-Z]{3,10} ")


class BadHello(Exception):
    """Not a well-formed hello. ``alert`` is the TLS alert to send back (RFC 8446 §6.2), or None
    when the peer does not speak TLS records at all (plain HTTP, SSLv2, garbage)."""

    def __init__(self, reason: str, alert: int | None = ALERT_DECODE_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert


class _NeedMore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore()


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    session_id: bytes  # 0-32 bytes; in TLS 1.3 a random compatibility value (RFC 8446 §4.1.2)
    sni: str | None  # the host_name, lower-cased
    alpn: tuple[str, ...]
    supported_versions: tuple[int, ...]  # empty when the client sent no such extension (≤ TLS 1.2)
    has_ticket: bool  # a non-empty session_ticket extension: resuming by ticket, not by ID
    size: int  # bytes of the handshake message

    @property
    def offers_tls13(self) -> bool:
        return TLS13 in self.supported_versions


@dataclass(frozen=True, slots=True)
class ServerHello:
    legacy_version: int
    session_id: bytes
    cipher_suite: int
    version: int  # negotiated: supported_versions' selection, else legacy_version

    @property
    def tls13(self) -> bool:
        return self.version >= TLS13


class HelloReader:
    """Incremental reader of the first handshake message of type ``expect``.

    Every check that a prefix allows runs as soon as its bytes are in, so garbage is refused at
    its first byte and a lying length before its body arrives.
    """

    __slots__ = ("expect", "max_size", "raw", "pos", "message", "result")

    def __init__(self, expect: int = CLIENT_HELLO, max_size: int = MAX_HELLO) -> None:
        self.expect = expect
        self.max_size = max_size
        self.raw = bytearray()  # everything fed, kept for whoever forwards it
        self.pos = 0  # start of the first record not yet taken apart
        self.message = bytearray()  # handshake bytes reassembled from record fragments
        self.result: ClientHello | ServerHello | None = None

    def feed(self, data: bytes) -> ClientHello | ServerHello | _NeedMore:
        if self.result is not None:
            return self.result
        self.raw += data
        raw = self.raw
        while True:
            avail = len(raw) - self.pos
            if avail <= 0:
                return NEED_MORE
            if self.pos == 0 and raw[0] & 0x80 and avail < 3:
                return NEED_MORE  # maybe an SSLv2 hello: its third byte tells (see _not_tls)
            self._check_header(bytes(raw[self.pos:self.pos + RECORD_HEADER]))
            if avail < RECORD_HEADER:
                return NEED_MORE
            length = int.from_bytes(raw[self.pos + 3:self.pos + 5], "big")
            start = self.pos + RECORD_HEADER
            if avail < RECORD_HEADER + length:
                # Judge the handshake header from a partial fragment too: a hello that will be
                # too large is refused before its bytes are buffered.
                self._check_head(self.message + raw[start:])
                return NEED_MORE
            self.message += raw[start:start + length]
            self.pos = start + length
            done = self._check_message()
            if done is not None:
                self.result = done
                return done

    def _check_header(self, h: bytes) -> None:
        """Validate as much of a record header as has arrived."""
        first = self.pos == 0
        if h[0] != CONTENT_HANDSHAKE:
            if not first:
                # RFC 8446 §5.1: handshake messages MUST NOT be interleaved with other records.
                name = CONTENT_NAMES.get(h[0], str(h[0]))
                raise BadHello(f"{name} record in the middle of the {self._name}",
                               ALERT_UNEXPECTED_MESSAGE)
            raise _not_tls(bytes(self.raw[:16]), self._name)
        if len(h) >= 2 and h[1] != 3:
            raise BadHello(f"record version {h[1]}.x is not TLS (expected 3.x)", None if first else
                           ALERT_DECODE_ERROR)
        if len(h) >= RECORD_HEADER:
            length = int.from_bytes(h[3:5], "big")
            if length == 0:
                # RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
                raise BadHello("empty handshake record")
            if length > MAX_RECORD:
                raise BadHello(f"record of {length} bytes exceeds 2^14 + 2048 (RFC 5246 §6.2.3)",
                               ALERT_RECORD_OVERFLOW)

    def _check_head(self, msg: bytes | bytearray) -> int | None:
        """The handshake message's length once its 4-byte header is in, checked; else None."""
        if not msg:
            return None
        if msg[0] != self.expect:
            raise BadHello(f"handshake message type {msg[0]}, expected {self._name} ({self.expect})",
                           ALERT_UNEXPECTED_MESSAGE)
        if len(msg) < 4:
            return None
        length = int.from_bytes(msg[1:4], "big")
        if length + 4 > self.max_size:
            raise BadHello(f"{self._name} of {length} bytes exceeds the {self.max_size}-byte limit",
                           ALERT_HANDSHAKE_FAILURE)
        return length

    def _check_message(self) -> ClientHello | ServerHello | None:
        msg = self.message
        length = self._check_head(msg)
        if length is None or len(msg) < 4 + length:
            return None
        body = bytes(msg[4:4 + length])
        if self.expect == CLIENT_HELLO:
            return parse_client_hello(body)
        return parse_server_hello(body)

    @property
    def _name(self) -> str:
        return HANDSHAKE_NAMES.get(self.expect, f"handshake type {self.expect}")


def _not_tls(head: bytes, what: str) -> BadHello:
    if len(head) >= 3 and head[0] & 0x80 and head[2] == CLIENT_HELLO:
        # SSL 2.0's two-byte header with the high bit set, then msg_type 1 (RFC 6176 prohibits
        # SSL 2.0; RFC 5246 Appendix E.2 describes the compatible hello).
        return BadHello("SSLv2-style ClientHello (SSL 2.0 is prohibited, RFC 6176)", None)
    if _HTTP_RE.match(head) or head.isalpha() and head.isupper():
        text = head.split(b"\r")[0].decode("ascii", "replace")
        return BadHello(f"plain HTTP on a TLS port (got {text!r}...)", None)
    name = CONTENT_NAMES.get(head[0])
    if name is not None:
        return BadHello(f"{name} record where the {what} was expected", ALERT_UNEXPECTED_MESSAGE)
    return BadHello(f"not a TLS record (first byte {head[0]:#04x})", None)


class _Cursor:
    """Bounds-checked reads from one structure; every overrun names what was cut short."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: bytes, what: str, pos: int = 0, end: int | None = None) -> None:
        self.buf, self.pos, self.what = buf, pos, what
        self.end = len(buf) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n > self.end - self.pos:
            raise BadHello(f"{self.what}: {field} truncated (needs {n} bytes, {self.left()} left)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "big")

    def vector(self, len_bytes: int, field: str, lo: int = 0, hi: int | None = None) -> _Cursor:
        """A length-prefixed vector (RFC 8446 §3.4) as a sub-cursor, its bounds checked."""
        n = self.uint(len_bytes, f"{field} length")
        if n < lo or (hi is not None and n > hi):
            raise BadHello(f"{self.what}: {field} length {n} outside {lo}..{hi}")
        start = self.pos
        self.take(n, field)
        return _Cursor(self.buf, f"{self.what} {field}", start, start + n)

    def done(self, field: str) -> None:
        if self.pos != self.end:
            raise BadHello(f"{self.what}: {self.left()} stray bytes after {field}")


def _extensions(c: _Cursor) -> dict[int, _Cursor]:
    """Extensions are optional before TLS 1.3 (RFC 5246 §7.4.1.2): none at all is fine."""
    if not c.left():
        return {}
    exts = c.vector(2, "extensions")
    c.done("extensions")
    out: dict[int, _Cursor] = {}
    while exts.left():
        etype = exts.uint(2, "extension type")
        data = exts.vector(2, f"extension {etype}")
        if etype in out:
            # RFC 8446 §4.2: no more than one extension of the same type.
            raise BadHello(f"{exts.what}: extension {etype} appears twice")
        out[etype] = data
    return out


def parse_client_hello(body: bytes) -> ClientHello:
    """The ClientHello body (after the 4-byte handshake header), RFC 8446 §4.1.2 / RFC 5246 §7.4.1.2."""
    c = _Cursor(body, "ClientHello")
    version = c.uint(2, "legacy_version")
    c.take(32, "random")
    session_id = c.vector(1, "session_id", 0, 32)
    suites = c.vector(2, "cipher_suites", 2, 0xFFFE)
    if suites.left() % 2:
        raise BadHello("ClientHello: odd cipher_suites length")
    c.vector(1, "compression_methods", 1, 255)
    exts = _extensions(c)
    sni = _server_name(exts[EXT_SERVER_NAME]) if EXT_SERVER_NAME in exts else None
    alpn: tuple[str, ...] = ()
    if EXT_ALPN in exts:
        e = exts[EXT_ALPN]
        names = e.vector(2, "protocol_name_list", 2, 0xFFFF)
        e.done("protocol_name_list")
        protos = []
        while names.left():
            protos.append(_take_all(names.vector(1, "protocol name", 1, 255)).decode("latin-1"))
        alpn = tuple(protos)
    versions: tuple[int, ...] = ()
    if EXT_SUPPORTED_VERSIONS in exts:
        e = exts[EXT_SUPPORTED_VERSIONS]
        v = e.vector(1, "supported_versions", 2, 254)
        e.done("supported_versions")
        if v.left() % 2:
            raise BadHello("ClientHello: odd supported_versions length")
        versions = tuple(v.uint(2, "version") for _ in range(v.left() // 2))
    ticket = EXT_SESSION_TICKET in exts and exts[EXT_SESSION_TICKET].left() > 0
    return ClientHello(version, _take_all(session_id), sni, alpn, versions, ticket, len(body) + 4)


def _take_all(c: _Cursor) -> bytes:
    return c.take(c.left(), "")


def _server_name(e: _Cursor) -> str | None:
    names = e.vector(2, "server_name_list", 1, 0xFFFF)
    e.done("server_name_list")
    host: bytes | None = None
    while names.left():
        ntype = names.uint(1, "name_type")
        # RFC 6066 §3: every NameType's data starts with a 16-bit length, so unknown types can
        # be skipped; at most one name per type.
        name = _take_all(names.vector(2, "host_name", 1, 0xFFFF))
        if ntype != HOST_NAME:
            continue
        if host is not None:
            raise BadHello("ClientHello: more than one host_name in server_name")
        host = name
    if host is None:
        return None
    low = host.lower()
    if len(low) > 253 or not _HOST_RE.fullmatch(low):
        shown = host[:64].decode("ascii", "replace")
        raise BadHello(f"ClientHello: malformed server name {shown!r} (RFC 6066 §3)")
    return low.decode("ascii")


def parse_server_hello(body: bytes) -> ServerHello:
    """The ServerHello body, RFC 8446 §4.1.3 / RFC 5246 §7.4.1.3."""
    c = _Cursor(body, "ServerHello")
    version = c.uint(2, "legacy_version")
    c.take(32, "random")
    session_id = _take_all(c.vector(1, "session_id", 0, 32))
    suite = c.uint(2, "cipher_suite")
    c.uint(1, "compression_method")
    exts = _extensions(c)
    selected = version
    if EXT_SUPPORTED_VERSIONS in exts:
        e = exts[EXT_SUPPORTED_VERSIONS]
        selected = e.uint(2, "selected_version")
        e.done("selected_version")
    return ServerHello(version, session_id, suite, selected)


def alert(description: int) -> bytes:
    """A fatal alert record (RFC 8446 §6): level 2, in a TLS 1.2-versioned record (§5.1)."""
    return bytes((21, 3, 3, 0, 2, 2, description))
