"""Session persistence for one pool: which server a request belongs to, and the cookie edits
that keep it there (HAProxy's ``cookie`` and ``server ... cookie`` keywords; ipvsadm(8)'s
``--persistent`` and ``--netmask``).

Pure, like the schedulers: request header fields (lower-cased names, bytes) and the client's
address go in; a server, a table key and the bytes to forward come out. balance/dispatch.py
decides with them, proxy/exchange.py acts on them.

- **cookie** (HAProxy ``cookie NAME insert indirect|rewrite|prefix`` + ``server ... cookie X``):
  every server has an id, its explicit ``cookie:`` value or 16 hex digits of BLAKE2b over the
  pool's and the server's *names*, so the id survives restarts, reloads and address changes and
  never reveals an address. ``insert``: the switch sets ``NAME=<id>`` when the client has no
  cookie naming the server that answered, and removes NAME before forwarding (``indirect``).
  ``rewrite``: the server's own ``Set-Cookie: NAME=...`` gets the id as its value.
  ``prefix``: the server's ``NAME=v`` becomes ``NAME=<id>~v`` and the server gets ``v`` back.
- **source** (``ipvsadm -p TIMEOUT -M NETMASK``): the client address masked to a prefix is the
  key of a table (balance/store.py) holding the server's name; every request refreshes the entry, as
  IPVS's template lives from the last activity.

The decision when the named server cannot serve is ``verdict``: up (even at weight 0, a quiesced
server keeps its sessions, as IPVS and HAProxy drain) -> that server; down -> the scheduler picks
(``redispatch: true``, the default) or the request gets 503 (``redispatch: false``).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any, Final

from ..http.fields import edit_values, has_field
from ..spec import PersistenceSpec, PoolSpec, ServerSpec
from .servers import Server
from .store import Store, Tables

Headers = Sequence[tuple[bytes, bytes]]
#: What ``Persistence.sticky`` finds: (server named, table key, Cookie values to forward).
Sticky = tuple[Server | None, str | None, list[bytes] | None]

INSERT: Final = "insert"
REWRITE: Final = "rewrite"
PREFIX: Final = "prefix"
COOKIE_MODES: Final = (INSERT, REWRITE, PREFIX)
#: Prefix mode's separator between the id and the application's value: HAProxy's COOKIE_DELIM.
DELIM: Final = b"~"
#: Added with an inserted cookie when the response says nothing about caching: a shared cache
#: must not hand one client's server cookie to everyone (HAProxy's ``nocache`` option).
CACHE_PRIVATE: Final = b"Cache-Control: private\r\n"

# verdict() results
STICK: Final = 0
PICK: Final = 1
REFUSE: Final = 2

#: How often the switch's clock drops expired table entries. Lookups already ignore them and
#: MemoryStore.expire stops at the first live entry, so this only bounds the memory held by
#: clients that never come back; Redis's lazy+periodic expiry works the same way.
SWEEP_INTERVAL: Final = 5.0


def server_cookie_id(pool: str, server: str) -> str:
    """The derived cookie id of server ``server`` in pool ``pool``: 16 hex digits of BLAKE2b.

    Names, not addresses (as the schedulers' hash rings), so that moving a server to another
    address keeps its sessions and the cookie tells a client nothing about the network. (HAProxy's
    ``dynamic`` cookies hash the address with a secret key instead.)"""
    return hashlib.blake2b(f"{pool}\0{server}".encode(), digest_size=8,
                           person=b"l7switch-cookie").hexdigest()


def cookie_ids(pool: str, servers: Sequence[ServerSpec]) -> list[str]:
    """Each server's id, in pool order: its explicit ``cookie:`` value or the derived one."""
    return [s.cookie if s.cookie is not None else server_cookie_id(pool, s.name) for s in servers]


# ---- cookie fields ------------------------------------------------------------------------------

def _unquote(value: bytes) -> tuple[bytes, bool]:
    # RFC 6265 §4.1.1: cookie-value = *cookie-octet / ( DQUOTE *cookie-octet DQUOTE )
    if len(value) >= 2 and value[0] == 34 and value[-1] == 34:
        return value[1:-1], True
    return value, False


_WS: Final = b" \t"


@functools.lru_cache(maxsize=None)
def _cookie_patterns(name: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes], bytes]:
    """For cookie ``name``: its pair with the ';' before it (group 1: the raw value), its pair up
    to the first '~' (group 1: what stays), and "NAME=". A pair starts the field or follows ';',
    so "XNAME=" and "a=NAME=" never count; ``[^;]`` keeps a match inside its own pair."""
    n = re.escape(name)
    return (re.compile(rb"(?:^|;)[ \t]*" + n + rb"=([^;]*)"),
            re.compile(rb"((?:^|;)[ \t]*" + n + rb'=[ \t]*"?)[^;~]*~'), name + b"=")


def edit_cookie_field(field: bytes, name: bytes, mode: str) -> tuple[bool, bytes | None, bytes]:
    """One ``Cookie`` field value: (NAME present, its server id, the value to forward).

    Pairs are ``;``-separated (RFC 6265 §5.4: "; "). The first NAME pair gives the id: insert and
    rewrite take its value (quotes removed); prefix the part before the first ``~``, or None
    when there is none. Insert drops every NAME pair (HAProxy ``indirect``), prefix strips
    ``<id>~`` from each, rewrite changes nothing. Only those bytes change: the other pairs are
    never split or rejoined, and a regex search in C keeps a browser's 30-cookie field cheap.
    The value comes back as the same object when nothing changed, and b"" when no pair is left.
    """
    pair, prefixed, needle = _cookie_patterns(name)
    m = pair.search(field)
    if m is None:
        return False, None, field
    value = m.group(1).strip(_WS)
    if len(value) >= 2 and value[0] == 34 == value[-1]:  # RFC 6265 §4.1.1: DQUOTE ... DQUOTE
        value = value[1:-1]
    if mode == INSERT:
        start, end = m.span()
        if field.find(needle, end) < 0:  # the usual single pair: cut it out (with its ';')
            new = (field[:start] + field[end:]).strip(_WS)
        else:
            new = pair.sub(b"", field).strip(_WS)
        if new[:1] == b";":  # the first pair went: drop the separator after it
            new = new[1:].lstrip(_WS)
        return True, value, new
    if mode == PREFIX:
        ident, tilde, _ = value.partition(DELIM)
        # HAProxy strips up to the first delimiter whatever the id: an unknown id is a stale one
        # of ours, and the application's value may itself contain '~'. A value without '~' was
        # set before prefixing was on: forwarded as is.
        new, n = prefixed.subn(rb"\1", field)
        return True, (ident if tilde else None), (new if n else field)
    return True, value, field


def scan_request_cookies(headers: Headers, name: bytes, mode: str) -> tuple[bytes | None, list[bytes] | None]:
    """(the server id the request's first NAME cookie carries, the Cookie field values to forward
    in order, or None when they pass unchanged). A field left empty is dropped."""
    needle = name + b"="
    ident: bytes | None = None
    found = changed = False
    out: list[bytes] = []
    for n, v in headers:
        if n != b"cookie":
            continue
        if needle in v:  # cheap pre-check; the parse below decides (it could be "XNAME=")
            here, this, new = edit_cookie_field(v, name, mode)
            if here and not found:
                found, ident = True, this
            if new is not v:
                changed = True
                if not new:
                    continue
                v = new
        out.append(v)
    return ident, (out if changed else None)


def edit_set_cookie(value: bytes, name: bytes, ident: bytes, mode: str) -> bytes | None:
    """A server's ``Set-Cookie`` value with the id put in (rewrite: as the value; prefix: before
    it, ``id~value``), or None when it sets another cookie. Attributes are kept as they are."""
    k, eq, rest = value.partition(b"=")
    if not eq or k.strip(b" \t") != name:
        return None
    val, semi, attrs = rest.partition(b";")
    if mode == REWRITE:
        new = ident
    else:
        inner, quoted = _unquote(val.strip(b" \t"))
        new = b'"' + ident + DELIM + inner + b'"' if quoted else ident + DELIM + inner
    return k + b"=" + new + semi + attrs


def set_cookie_line(spec: PersistenceSpec, ident: str) -> bytes:
    """The ``Set-Cookie`` line insert mode adds for a server."""
    parts = [f"Set-Cookie: {spec.cookie_name}={ident}; Path=/"]
    if spec.httponly:
        parts.append("HttpOnly")
    if spec.secure:
        parts.append("Secure")
    if spec.max_age is not None:
        parts.append(f"Max-Age={spec.max_age}")
    if spec.domain:
        parts.append(f"Domain={spec.domain}")
    return ("; ".join(parts) + "\r\n").encode("latin-1")


# ---- client addresses ---------------------------------------------------------------------------

_V4_MAPPED: Final = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d (RFC 4291 §2.5.5.2)

def source_key(ip: str, netmask: int = 32, netmask6: int = 128) -> str | None:
    """The table key for a client address, masked as ``ipvsadm -M`` does: "192.0.2.0/24"; a full
    mask keeps the address itself. An IPv4-mapped IPv6 address counts as IPv4. None for a peer
    that is not an IP address (the request is then balanced without persistence)."""
    if netmask == 32 and ":" not in ip and ip:
        return ip  # the common case: no parsing (the kernel's text form is canonical)
    # inet_pton/ntop and an integer mask give what ipaddress.ip_network(strict=False) gives, at
    # about 2 µs instead of 20 (timeit, a /24): this runs per request.
    try:
        if ":" in ip:
            packed = inet_pton(AF_INET6, ip.partition("%")[0])  # a link-local scope is not a client
            if packed[:12] != _V4_MAPPED:
                if netmask6 == 128:
                    return inet_ntop(AF_INET6, packed)
                n = int.from_bytes(packed, "big") & ~((1 << (128 - netmask6)) - 1)
                return f"{inet_ntop(AF_INET6, n.to_bytes(16, 'big'))}/{netmask6}"
            packed = packed[12:]
        else:
            packed = inet_pton(AF_INET, ip)
    except OSError:
        return None
    if netmask == 32:
        return inet_ntop(AF_INET, packed)
    n = int.from_bytes(packed, "big") & ~((1 << (32 - netmask)) - 1)
    return f"{inet_ntop(AF_INET, n.to_bytes(4, 'big'))}/{netmask}"


# ---- per-pool objects ---------------------------------------------------------------------------

class Persistence:
    """What a pool's persistence decides; one object per pool, built by ``build_persistence``
    (called from balance/build.py)."""

    __slots__ = ("spec", "pool_name", "redispatch", "by_name")
    method = ""
    #: Decides per HTTP request (proxy/exchange.py) / on a tls-passthrough ClientHello
    #: (passthrough/connection.py).
    http = True
    tls_hello = True
    #: Learns session IDs from ServerHellos (tls-passthrough listeners watch for one if set).
    learns_sessions = False

    def __init__(self, spec: PersistenceSpec, pool_name: str, servers: Sequence[Server]) -> None:
        self.spec = spec
        self.pool_name = pool_name
        self.redispatch = spec.redispatch
        self.by_name: dict[str, Server] = {s.name: s for s in servers}

    def sticky(self, headers: Headers, client_ip: str) -> Sticky:
        """(the server this request belongs to or None, the table key to record the choice under
        or None, the Cookie field values to forward or None for unchanged)."""
        raise NotImplementedError

    def hello_sticky(self, session_id: bytes, client_ip: str) -> tuple[Server | None, str | None]:
        """For a tls-passthrough connection, decided on its ClientHello: (the server it belongs
        to or None, the table key). Methods that need no HTTP header work as for a request."""
        named, key, _ = self.sticky((), client_ip)
        return named, key

    def verdict(self, named: Server | None) -> int:
        """STICK to ``named``, PICK with the scheduler, or REFUSE (503)."""
        if named is None:
            return PICK
        if named.up:
            return STICK  # at weight 0 too: quiesced servers keep the sessions they hold
        return PICK if self.redispatch else REFUSE

    def may_leave(self, named: Server | None, server: Server) -> bool:
        """May a request whose connect to ``server`` was refused go to another server?"""
        return self.redispatch or server is not named

    def after_pick(self, server: Server, key: str | None) -> None:
        """``server`` takes the request (sticky or newly picked)."""

    def response(self, server: Server, named: Server | None, lines: list[bytes]) -> tuple[bytes, list[bytes]]:
        """For the response of ``server`` whose head's lines (http/fields.py) are ``lines``:
        the lines to add, and the lines to forward (``lines`` itself unless a field was edited)."""
        return b"", lines

    def snapshot(self) -> dict[str, Any]:
        return {"method": self.method, "redispatch": self.redispatch}

    def explain(self, headers: Headers, client_ip: str, first_pick: Server | None) -> list[str]:
        raise NotImplementedError

    def _fallback(self) -> str:
        return ("the scheduler picks another" if self.redispatch
                else "the request gets 503 (redispatch: false)")


class CookiePersistence(Persistence):
    __slots__ = ("name", "mode", "by_id", "ids", "lines", "lines_private")
    method = "cookie"
    tls_hello = False  # a cookie lives inside the TLS a passthrough listener does not open

    def __init__(self, spec: PersistenceSpec, pool_name: str, servers: Sequence[Server],
                 server_specs: Sequence[ServerSpec]) -> None:
        super().__init__(spec, pool_name, servers)
        self.name = spec.cookie_name.encode("latin-1")
        self.mode = COOKIE_MODES[COOKIE_MODES.index(spec.cookie_mode)]  # our constant: 'is' works
        ids = cookie_ids(pool_name, server_specs)
        self.ids = [i.encode("latin-1") for i in ids]  # by Server.index
        self.by_id: dict[bytes, Server] = {self.ids[s.index]: s for s in servers}
        # Built once: inserting a cookie costs no formatting per response.
        self.lines = [set_cookie_line(spec, i) for i in ids]
        self.lines_private = [line + CACHE_PRIVATE for line in self.lines]

    def sticky(self, headers: Headers, client_ip: str) -> Sticky:
        ident, cookies = scan_request_cookies(headers, self.name, self.mode)
        return (self.by_id.get(ident) if ident is not None else None), None, cookies

    def response(self, server: Server, named: Server | None, lines: list[bytes]) -> tuple[bytes, list[bytes]]:
        if self.mode is INSERT:
            if named is server:
                return b"", lines  # the client already names this server
            if has_field(lines, b"cache-control"):
                return self.lines[server.index], lines  # the server decided about caching
            return self.lines_private[server.index], lines
        ident, name, mode = self.ids[server.index], self.name, self.mode
        return b"", edit_values(lines, b"set-cookie", lambda v: edit_set_cookie(v, name, ident, mode))

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "cookie": self.spec.cookie_name, "mode": self.mode}

    def explain(self, headers: Headers, client_ip: str, first_pick: Server | None) -> list[str]:
        name, mode = self.spec.cookie_name, self.mode
        head = f"persistence: cookie {name} ({mode})"
        found = any(edit_cookie_field(v, self.name, mode)[0] for n, v in headers if n == b"cookie")
        ident, _ = scan_request_cookies(headers, self.name, mode)
        named = self.by_id.get(ident) if ident is not None else None
        pick = f" ({first_pick.name})" if first_pick is not None else ""
        if mode is INSERT:
            then = (f"the response sets {name}={self.ids[first_pick.index].decode()}{pick}"
                    if first_pick is not None else "no server is available")
        elif mode is REWRITE:
            then = f"a {name} cookie the server sets is given the id of the server that answered"
        else:
            then = f"a {name} cookie the server sets is prefixed with '<id>~'"
        if named is not None:
            state = ("up" if named.available else
                     "up at weight 0 (quiesced): it keeps the sessions it holds" if named.up
                     else f"down: {self._fallback()}")
            how = {INSERT: f"; {name} is removed before forwarding",
                   PREFIX: "; the server gets the value after '~'", REWRITE: ""}[mode]
            return [f"{head}: {name}={self.ids[named.index].decode()} names server {named.name} "
                    f"({named.address}), {state}{how}"]
        if not found:
            return [f"{head}: the request carries no {name}; the scheduler picks and {then}"]
        if ident is None:
            return [f"{head}: {name} carries no '<id>~' prefix; the scheduler picks and {then}"]
        return [f"{head}: {name}={ident.decode('latin-1')} names no server of this pool (stale); "
                f"the scheduler picks and {then}"]


class SourcePersistence(Persistence):
    __slots__ = ("table", "table_name", "timeout", "netmask", "netmask6")
    method = "source"

    def __init__(self, spec: PersistenceSpec, pool_name: str, servers: Sequence[Server],
                 tables: Tables) -> None:
        super().__init__(spec, pool_name, servers)
        self.table_name = f"source:{pool_name}"
        self.table: Store = tables.table(self.table_name, spec.max_entries)
        self.timeout = spec.timeout
        self.netmask = spec.netmask
        self.netmask6 = spec.netmask6

    def sticky(self, headers: Headers, client_ip: str) -> Sticky:
        key = source_key(client_ip, self.netmask, self.netmask6)
        if key is None:
            return None, None, None
        name = self.table.get(key)
        # A name no longer in the pool (removed on reload) is a stale entry: pick anew.
        return (self.by_name.get(name) if name is not None else None), key, None

    def after_pick(self, server: Server, key: str | None) -> None:
        if key is not None:
            self.table.set(key, server.name, self.timeout)  # refreshed on every use, as IPVS

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "table": self.table_name, "entries": len(self.table),
                "timeout": self.timeout, "netmask": self.netmask, "netmask6": self.netmask6}

    def explain(self, headers: Headers, client_ip: str, first_pick: Server | None) -> list[str]:
        key = source_key(client_ip, self.netmask, self.netmask6)
        if key is None:
            return [f"persistence: source: {client_ip!r} is not an IP address; balanced without it"]
        return [f"persistence: source {key} (netmask {self.netmask}/{self.netmask6}) -> table "
                f"{self.table_name} is looked up at run time; a client not in it goes where the "
                f"scheduler picks and stays there {self.timeout:g}s after its last request; "
                f"if that server is down, {self._fallback()}"]


class SSLSessionPersistence(Persistence):
    """ssl_session: the session ID a server issued in its ServerHello -> that server, so a client
    resuming the session by ID returns to the one server that can resume it (TLS <= 1.2 only;
    RFC 5246 §7.4.1.2; TLS 1.3 resumes by PSK, RFC 8446 §2.2). Decided on the ClientHello by
    passthrough/connection.py; no HTTP request sees it."""

    __slots__ = ("table", "table_name", "timeout")
    method = "ssl_session"
    http = False
    learns_sessions = True

    def __init__(self, spec: PersistenceSpec, pool_name: str, servers: Sequence[Server],
                 tables: Tables) -> None:
        super().__init__(spec, pool_name, servers)
        self.table_name = f"ssl_session:{pool_name}"
        self.table: Store = tables.table(self.table_name, spec.max_entries)
        self.timeout = spec.timeout

    def hello_sticky(self, session_id: bytes, client_ip: str) -> tuple[Server | None, str | None]:
        if not session_id:
            return None, None
        sid = session_id.hex()
        name = self.table.get(sid)
        server = self.by_name.get(name) if name is not None else None
        # A server that is up, quiesced (weight 0) too, keeps its sessions, as HAProxy's "drain"
        # state keeps persistent connections; IPVS-style, the entry lives from the last use.
        if server is not None and server.up:
            self.table.touch(sid, self.timeout)
        return server, sid

    def learn(self, session_id: bytes, server: Server) -> None:
        """``server``'s ServerHello issued ``session_id`` (the caller skips TLS 1.3 echoes)."""
        self.table.set(session_id.hex(), server.name, self.timeout)


def build_persistence(spec: PoolSpec, servers: Sequence[Server], tables: Tables) -> Persistence | None:
    """The pool's persistence, or None when it has none (``http`` / ``tls_hello`` say where it
    applies: ssl_session only on a ClientHello, cookie only on HTTP requests)."""
    p = spec.persistence
    if p is None:
        return None
    if p.method == "cookie":
        return CookiePersistence(p, spec.name, servers, (*spec.servers, *spec.backup))
    if p.method == "source":
        return SourcePersistence(p, spec.name, servers, tables)
    return SSLSessionPersistence(p, spec.name, servers, tables)

