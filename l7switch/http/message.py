"""Sans-IO HTTP/1.1 message work: validate a request head, rewrite heads for the next hop,
normalise the path the rules see, and build the switch's own short responses.

No sockets here; proxy/frontend.py and proxy/upstream.py feed values in and write the bytes out.
RFC numbers: RFC 9110 (semantics), RFC 9112 (HTTP/1.1 message syntax), RFC 3986 (URI).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from ..errors import BadRequest

VIA: Final = b"1.1 l7switch"
VIA_LINE: Final = b"Via: " + VIA + b"\r\n"

# RFC 9110 §7.6.1: hop-by-hop fields never forwarded, plus whatever Connection names.
# Proxy-Connection and Keep-Alive are the legacy ones the RFC says SHOULD go too.
# Transfer-Encoding and Content-Length are removed here because we write framing ourselves.
# HTTP2-Settings is hop-by-hop by definition (RFC 7540 §3.2.1): it goes with an h2c Upgrade,
# which the switch never forwards.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"http2-settings",
})
# Fields the switch owns on the way in: a client must not be able to forge them
# (Envoy's edge guidance: use_remote_address). X-Forwarded-For is appended to, as nginx's
# $proxy_add_x_forwarded_for does; Proto and Host are replaced.
OWNED_REQUEST: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"via", b"x-forwarded-for", b"host"})
# Cookie fields re-written by a pool's persistence: dropped in place, written after the others.
_COOKIE: Final = frozenset({b"cookie"})
_DROP_COOKIE: Final = HOP_BY_HOP | _COOKIE

# Upgrade tokens a listener may turn into tunnels (``listen[].upgrades``). h2c is never one: a
# tunnel would carry HTTP/2 frames past the rules (the h2c smuggling technique), and RFC 9113
# §3.1 retired the h2c upgrade anyway; such requests are answered over HTTP/1.1 instead.
DEFAULT_UPGRADES: Final = frozenset({b"websocket"})
NEVER_TUNNELLED: Final = frozenset({b"h2c"})

# RFC 9110 §5.6.2 token, and a Host value: reg-name / IPv4 / IP-literal with an optional port
# (RFC 9112 §3.2 — no userinfo, no path, no comma lists).
_TOKEN: Final = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST: Final = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?$")
def flag_table(flagged: bytes) -> bytes:
    """A ``bytes.translate`` table that changes exactly the bytes in ``flagged``: a value it
    leaves alone comes back as the same object (CPython and mypyc's translate both return it),
    so ``value.translate(table) is value`` says "none of them" in one C pass, without the
    exception ``bytes in bytes`` raises inside CPython or the argument parsing of ``find``."""
    return bytes((b + 1) & 0xFF if b in flagged else b for b in range(256))


_HASH_OR_QUERY: Final = flag_table(b"#?")

#: Host values that matched _HOST, exactly as they came (a site has a few), each with the name
#: the rules see (host_name): checked and converted once each.
_VALID_HOSTS: Final[dict[bytes, str]] = {}
VALID_HOSTS_MAX: Final = 4096

#: bytes.lower() as a table: ``name.translate(ASCII_LOWER)`` is a C call in the compiled build
#: (a method lookup and call otherwise) and returns ``name`` itself when it is lower case already.
ASCII_LOWER: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


# Precomputed status lines, as uvicorn's STATUS_LINE: no formatting on the hot path.
STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, _phrase(code)) for code in range(100, 600)}


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = STATUS_LINES.get(status)
    if line is not None and (not reason or line[13:-2] == reason):
        return line
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or _phrase(status))


def error_response(status: int, request_id: str = "", detail: str = "", close: bool = True,
                   retry_after: int | None = None) -> bytes:
    """The switch's own answer: a short text body, explicit framing, Connection: close if closing.

    ``detail`` is shown only for what the client can fix about its own request (a 400's reason);
    what went wrong behind the switch (which server, its address, the errno) never reaches the
    client: it is logged with ``request_id``, which the client gets to quote (as HAProxy's
    unique-id and nginx's $request_id are used)."""
    text = f"{status} {_phrase(status).decode()}"
    if detail:
        text += f": {detail}"
    if request_id:
        text += f"\nrequest id: {request_id}"
    body = (text + "\n").encode("utf-8", "replace")
    return b"".join((
        status_line(status),
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
        b"X-Request-Id: %s\r\n" % request_id.encode() if request_id else b"",
        b"Retry-After: %d\r\n" % retry_after if retry_after is not None else b"",
        b"Connection: close\r\n" if close else b"",
        VIA_LINE + b"\r\n",
        body,
    ))


# Connection values whose options are already hop-by-hop: no per-message token parsing needed.
PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade", b"Keep-Alive", b"Close",
                                     b"Upgrade"})


def hop_by_hop(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """HOP_BY_HOP plus whatever a Connection field names (RFC 9110 §7.6.1)."""
    for name, value in headers:
        if name == b"connection" and value not in PLAIN_CONNECTION:
            return HOP_BY_HOP | connection_tokens(headers)
    return HOP_BY_HOP


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Lower-cased options named in every Connection field (RFC 9110 §7.6.1)."""
    out: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            out.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return out


def parse_content_length(value: bytes, first: bool = False) -> int:
    """RFC 9110 §8.6: 1*DIGIT; leading zeros are legal and are normalised away when we forward.
    ``first``: of a list ("5, 5"), the first (a response's; RFC 9110 §8.6 lets a recipient
    take one of identical values).

    Byte by byte, not ``int()``: the value has been checked and converted in one pass, with
    no method call (``strip``, ``isdigit``, ``find``) and no ``int(bytes)`` (several hundred
    instructions each in the compiled build)."""
    start = 0
    end = len(value)
    if first:
        for i in range(end):
            if value[i] == 44:  # ","
                end = i
                break
    while start < end and value[start] in (32, 9):  # OWS (RFC 9110 §5.6.3)
        start += 1
    while end > start and value[end - 1] in (32, 9):
        end -= 1
    if start == end or end - start > 18:  # 18 digits stays far below 2**63
        raise BadRequest("invalid Content-Length")
    n = 0
    for i in range(start, end):
        c = value[i]
        if c < 48 or c > 57:  # ASCII digits only: 1*DIGIT exactly
            raise BadRequest("invalid Content-Length")
        n = n * 10 + (c - 48)
    return n


#: Two hex digits for each byte value, for hex40.
_HEX: Final = [b"%02x" % i for i in range(256)]


def hex40(n: int) -> bytes:
    """``b"%010x" % n`` from a table: half the cost of the formatting (compiled, timeit on the
    project's VM: 85 against 190 ns a call); the formatting itself past 10 digits."""
    if n >> 40:
        return b"%x" % n
    h = _HEX
    return b"%s%s%s%s%s" % (h[(n >> 32) & 255], h[(n >> 24) & 255], h[(n >> 16) & 255],
                             h[(n >> 8) & 255], h[n & 255])


def normalize_path(path: str) -> str:
    """The path the rules see and the server receives (RFC 3986 §6.2.2).

    Percent-encoded unreserved characters are decoded (§6.2.2.2) and dot segments removed
    (§5.2.4), so `/images/../admin` and `/%61dmin` route as `/admin` — the same string is
    forwarded, never a different one from what was routed on (a proxy and its server that
    normalise differently are the root of path-confusion attacks).
    """
    if "%" not in path and "/." not in path:
        return path
    if "%" in path:
        path = _PCT.sub(_decode_unreserved, path)
    if "/." in path:
        path = remove_dot_segments(path)
    return path


_PCT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(m: re.Match[str]) -> str:
    ch = chr(int(m.group(1), 16))
    return ch if ch in _UNRESERVED else "%" + m.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, on a path that starts with '/'."""
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    result = "/" + "/".join(out)
    if segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"
    return result


class RequestHead:
    """A validated request head, reduced to what routing and forwarding need."""

    __slots__ = ("method", "target", "path", "query", "host", "hostname", "headers", "version",
                 "keep_alive", "content_length", "chunked", "upgrade", "expect_continue")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.path = "/"
        self.query = ""
        self.host = b""
        self.hostname = ""  # what host rules match: host_name(host)
        self.headers: list[tuple[bytes, bytes]] = []
        self.version = "1.1"
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.expect_continue = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


_UPGRADES: Final[dict[tuple[str, ...], frozenset[bytes]]] = {}


def upgrade_tokens(names: tuple[str, ...]) -> frozenset[bytes]:
    """A listener's ``upgrades`` as the lower-case tokens check_request compares (built once per
    listener, not per connection)."""
    tokens = _UPGRADES.get(names)
    if tokens is None:
        tokens = _UPGRADES[names] = frozenset(n.lower().encode("ascii") for n in names)
    return tokens


def method_name(method: bytes) -> str:
    """``method.decode("latin-1")``, with GET (most requests) a comparison and a constant:
    half the cost of the decoding in the compiled build (a dict of methods costs more than
    the decoding: the method's bytes are new each time, so hashed each time)."""
    return "GET" if method == b"GET" else method.decode("latin-1")


def host_name(host: bytes) -> str:
    """The name host rules match for a (valid) Host value: lower case, without the port; an
    IP literal keeps its brackets."""
    if host.startswith(b"["):
        host = host[:host.find(b"]") + 1]
    else:
        host = host.split(b":", 1)[0]
    return host.decode("latin-1").lower()


def check_request(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], version: str,
                  keep_alive: bool, upgrade: bool,
                  upgrades: frozenset[bytes] = DEFAULT_UPGRADES) -> RequestHead:
    """Enforce what llhttp leaves to us (RFC 9112 framing, Host, target) and return a RequestHead.

    ``headers`` arrive with lower-cased names. Raises BadRequest (400, close) for anything
    whose framing or routing is in doubt. An Upgrade to a protocol not in ``upgrades`` (lower
    case) is not refused: the request is answered as plain HTTP/1.1, as RFC 9110 §7.8 lets a
    server ignore Upgrade, with the field and its Connection option dropped on the way.
    """
    if version not in ("1.1", "1.0"):
        # llhttp accepts HTTP/0.9 and HTTP/2.0 on an HTTP/1 connection; RFC 9112 §2.3.
        raise BadRequest(f"unsupported HTTP version {version}")
    head = RequestHead()
    head.method = method
    head.version = version
    head.keep_alive = keep_alive and version == "1.1"  # RFC 9112 §9.3: no persistence with 1.0 clients
    hosts = []
    cl_values = []
    te = None
    for name, value in headers:
        if name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            cl_values.append(value)
        elif name == b"transfer-encoding":
            te = value if te is None else te + b"," + value
        elif name == b"expect":
            if value.strip().lower() == b"100-continue" and version == "1.1":
                head.expect_continue = True  # RFC 9110 §10.1.1: ignored in HTTP/1.0
    if te is not None:
        if version == "1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 §6.1
        if cl_values:
            raise BadRequest("both Content-Length and Transfer-Encoding")  # RFC 9112 §6.1
        codings = [c.strip().lower() for c in te.split(b",") if c.strip()]
        if codings != [b"chunked"]:
            # Only chunked alone is framing we can verify; anything else is 501 territory but
            # a 400 + close is the safe answer for a proxy (RFC 9112 §6.3(4)).
            raise BadRequest("unsupported Transfer-Encoding")
        head.chunked = True
    elif cl_values:
        lengths = {parse_content_length(v) for cv in cl_values for v in cv.split(b",")}
        if len(lengths) != 1:
            raise BadRequest("conflicting Content-Length")  # RFC 9112 §6.3(5)
        head.content_length = lengths.pop()
    # Target: origin-form or absolute-form (RFC 9112 §3.2); '*' only for OPTIONS.
    if url.startswith(b"/"):
        target = url
    elif url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
        rest = url.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        if b"@" in authority:
            raise BadRequest("userinfo in request target")
        hosts = [authority]  # RFC 9112 §3.2.2: the target's authority replaces Host
    elif url == b"*" and method == b"OPTIONS":
        target = url
    else:
        raise BadRequest("invalid request target")
    # One C pass says whether the target has a "#" or a "?" at all (most have neither); only
    # then the searches, each a method call that parses its arguments (~900 instructions).
    plain = target.translate(_HASH_OR_QUERY) is target
    if not plain and target.find(b"#") >= 0:
        raise BadRequest("fragment in request target")  # not in request-target grammar
    if len(hosts) > 1:
        raise BadRequest("more than one Host")
    if not hosts:
        if version == "1.1":
            raise BadRequest("missing Host")  # RFC 9112 §3.2
        hosts = [b""]
    host = hosts[0]
    hostname = _VALID_HOSTS.get(host)  # a dict lookup instead of the regex for hosts seen before
    if hostname is None:
        host = host.strip()
        if not _HOST.match(host):
            raise BadRequest("invalid Host")
        hostname = host_name(host)
        if len(_VALID_HOSTS) >= VALID_HOSTS_MAX:
            _VALID_HOSTS.clear()  # random Host values cost a regex each, never memory
        _VALID_HOSTS[host] = hostname
    head.host = host
    head.hostname = hostname
    raw_path, _, query = (target, b"", b"") if plain else target.partition(b"?")
    head.query = query.decode("latin-1")
    if target == b"*":
        head.path = "*"
        head.target = target
    else:
        raw = raw_path.decode("latin-1")  # once: the normalised path is compared with it
        head.path = path = normalize_path(raw)
        # Forward exactly what was routed on: the normalised path, the query as it came.
        head.target = target if path == raw else (
            path.encode("latin-1") + (b"?" + query if b"?" in target else b""))
    if upgrade and method != b"CONNECT" and version == "1.1":
        # RFC 9110 §7.8: only the first protocol offered is ours to take; a list such as
        # "websocket, foo" is a websocket upgrade. Upgrade in HTTP/1.0 is ignored.
        proto = next((v for n, v in headers if n == b"upgrade"), b"").split(b",")[0].strip()
        token = proto.lower()
        if token in upgrades and token not in NEVER_TUNNELLED and b"upgrade" in connection_tokens(headers):
            head.upgrade = proto
    elif upgrade and method == b"CONNECT":
        raise BadRequest("CONNECT is not supported")  # a forward-proxy method (RFC 9110 §9.3.6)
    head.headers = headers
    return head


#: X-Forwarded-Proto and Via for each scheme: the same bytes on every request.
_PROTO_VIA_HTTP: Final = b"X-Forwarded-Proto: http\r\nVia: " + VIA + b"\r\n"
_PROTO_VIA_HTTPS: Final = b"X-Forwarded-Proto: https\r\nVia: " + VIA + b"\r\n"
#: The X-Forwarded-For line of each recent client address (a keep-alive client sends many
#: requests): made once, not per request. Bounded like _VALID_HOSTS.
_XFF_LINES: Final[dict[str, bytes]] = {}
XFF_LINES_MAX: Final = 4096


def xff_line(client_ip: str) -> bytes:
    line = _XFF_LINES.get(client_ip)
    if line is None:
        line = b"X-Forwarded-For: %s\r\n" % client_ip.encode()
        if len(_XFF_LINES) >= XFF_LINES_MAX:
            _XFF_LINES.clear()
        _XFF_LINES[client_ip] = line
    return line


class _IdHead:
    """The request-id line up to its last two hex digits, for the current block of 256 ids."""

    __slots__ = ("name", "prefix", "high", "head")

    def __init__(self) -> None:
        self.name = b""
        self.prefix = b""
        self.high = -1
        self.head = b""


_ID_HEAD: Final = _IdHead()
_HEX_CRLF: Final = [b"%02x\r\n" % i for i in range(256)]


def id_line(name: bytes, prefix: bytes, seq: int) -> bytes:
    """``b"%s: %s%s\r\n" % (name, prefix, hex40(seq))``, made with one concatenation: the
    line's start changes once every 256 requests (ids are sequential), only its end each time."""
    ids = _ID_HEAD
    high = seq >> 8
    if high != ids.high or name is not ids.name or prefix is not ids.prefix:
        ids.name, ids.prefix, ids.high = name, prefix, high
        ids.head = b"%s: %s%s" % (name, prefix, hex40(high << 8)[:-2])
    return ids.head + _HEX_CRLF[seq & 255]


def forward_request_head(head: RequestHead, client_ip: str, proto: bytes, chunked: bool,
                         cookies: list[bytes] | None = None, id_header: bytes = b"",
                         id_name: bytes = b"", id_prefix: bytes = b"", seq: int = 0) -> bytes:
    """The request head for the server: hop-by-hop gone, our X-Forwarded-* and Via added.

    Connection-listed fields are removed *before* ours are added, so `Connection:
    X-Forwarded-For` cannot delete what the switch adds (hop-by-hop header abuse).
    ``cookies`` (balance/persistence.py's edit) replaces the Cookie fields, in order; [] forwards none.
    ``id_header`` (lower case, e.g. b"x-request-id"): the switch's request id (``id_prefix`` and
    ``seq`` in hex, as SwitchState.request_id writes it) goes to the server as ``id_name`` unless
    the request already carries one (which then goes as it came).
    """
    drop = hop_by_hop(head.headers)
    if cookies is not None:
        drop = _DROP_COOKIE if drop is HOP_BY_HOP else drop | _COOKIE
    host = head.host
    out = [b"%s %s HTTP/1.1\r\nHost: %s\r\nX-Forwarded-Host: %s\r\n" % (head.method, head.target, host, host)]
    xff = None
    has_id = False
    for name, value in head.headers:
        if name in drop:
            continue
        if name == id_header:
            has_id = True
        if name in OWNED_REQUEST:
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if cookies is not None:
        for c in cookies:
            out.append(b"Cookie: %s\r\n" % c)
    if xff:
        out.append(b"X-Forwarded-For: %s, %s\r\n" % (xff, client_ip.encode()))
    else:
        out.append(xff_line(client_ip))
    if proto == b"http":
        out.append(_PROTO_VIA_HTTP)
    elif proto == b"https":
        out.append(_PROTO_VIA_HTTPS)
    else:
        out.append(b"X-Forwarded-Proto: %s\r\nVia: %s\r\n" % (proto, VIA))
    if id_header and not has_id:
        out.append(id_line(id_name, id_prefix, seq))
    if head.upgrade is not None:
        out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % head.upgrade)
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        out.append(b"Content-Length: %d\r\n" % head.content_length)
    out.append(b"\r\n")
    return b"".join(out)


def relay_head(status: int, fields: list[bytes], framing: bytes, close: bool, extra: bytes = b"",
               upgrade: bytes | None = None, reason: bytes = b"") -> bytes:
    """The response head for the client from ``fields`` (fields.field_lines, or
    framing.relay_fields: the server's field lines, hop-by-hop ones gone, index 0 free for the
    status line), ``framing`` (the line(s) we add), ``extra`` (more lines: persistence's
    Set-Cookie) and the Connection we say: upgrade (with ``upgrade``'s Upgrade field), close,
    or nothing."""
    fields[0] = status_line(status, reason)
    fields.append(VIA_LINE)
    if extra:
        fields.append(extra)
    if upgrade is not None:
        fields.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
    elif close:
        fields.append(b"Connection: close\r\n")
    fields.append(framing)
    fields.append(b"\r\n")
    return b"".join(fields)


def is_token(value: bytes) -> bool:
    return bool(_TOKEN.match(value))
