"""Persistence decisions, pure: cookie ids, Cookie / Set-Cookie edits, masks, source tables with a
fake clock, redispatch verdicts, explain lines and the rule-file section (no sockets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from l7switch.balance.build import build_pool, explain_choice
from l7switch.balance.persistence import (PICK, REFUSE, STICK, CookiePersistence, SourcePersistence,
                                          edit_cookie_field, edit_set_cookie, scan_request_cookies,
                                          server_cookie_id, source_key)
from l7switch.balance.pool import ServerPool
from l7switch.balance.store import MemoryStore, Tables
from l7switch.config import load_config, parse_config
from l7switch.config.persist import parse_persistence
from l7switch.config.yamlnodes import Issues
from l7switch.errors import ConfigError
from l7switch.http.framing import forward_response_head
from l7switch.http.message import RequestHead, forward_request_head
from l7switch.http.rules import RequestView
from l7switch.spec import PersistenceSpec, PoolSpec

PINNED_A1 = "950840a92fe7c263"  # server_cookie_id("app", "a1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_yaml(persistence: str, servers: str = "[{address: 127.0.0.1:9001, name: a1}, "
              "{address: 127.0.0.1:9002, name: a2}, {address: 127.0.0.1:9003, name: a3}]",
              extra: str = "") -> str:
    return (f"listen: [{{address: 127.0.0.1:0}}]\ndefault_pool: app\npools:\n  app:\n"
            f"    servers: {servers}\n    persistence: {persistence}\n{extra}")


def pool(persistence: str, tables: Tables | None = None, **kw: str) -> ServerPool:
    cfg = parse_config(pool_yaml(persistence, **kw), "t.yaml")
    return build_pool(cfg.pools["app"], tables=tables)


def ck(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x")] + [(b"cookie", v.encode()) for v in values]


# ---- ids --------------------------------------------------------------------------------------

def test_ids_are_stable_opaque_and_per_pool() -> None:
    a = server_cookie_id("app", "a1")
    assert a == server_cookie_id("app", "a1") and len(a) == 16 and int(a, 16) >= 0
    assert a != server_cookie_id("app", "a2") != server_cookie_id("other", "a1")
    p1 = pool("{cookie: {}}")
    p2 = pool("{cookie: {}}")  # another build (a reload, a restart): same ids
    assert p1.persistence.ids == p2.persistence.ids  # type: ignore[union-attr]
    assert b"127.0.0.1" not in b"".join(p1.persistence.ids)  # type: ignore[union-attr]


def test_derived_id_value_is_pinned() -> None:
    # The same text on every machine, Python and release (no salt): changing it would move every
    # session of every deployment on upgrade.
    assert server_cookie_id("app", "a1") == PINNED_A1


def test_explicit_cookie_value_wins() -> None:
    p = pool("{cookie: {}}", servers="[{address: 127.0.0.1:9001, name: a1, cookie: s1}, 127.0.0.1:9002]")
    persist = p.persistence
    assert isinstance(persist, CookiePersistence)
    assert persist.ids[0] == b"s1"
    assert persist.ids[1] == server_cookie_id("app", "127.0.0.1:9002").encode()
    assert persist.sticky(ck("SRVID=s1"), "10.0.0.1")[0] is p.servers[0]


# ---- request Cookie fields ------------------------------------------------------------------------

@pytest.mark.parametrize("field, mode, want", [
    # insert drops NAME (HAProxy indirect), other pairs byte for byte
    ("a=1; SRVID=s1; b=2", "insert", (True, b"s1", b"a=1; b=2")),
    ("SRVID=s1; b=2", "insert", (True, b"s1", b"b=2")),
    ("a=1;SRVID=s1", "insert", (True, b"s1", b"a=1")),
    ("SRVID=s1", "insert", (True, b"s1", b"")),
    ("SRVID=\"s1\"; x=\"q;\"", "insert", (True, b"s1", b"x=\"q;\"")),  # quoted value; odd pair kept
    ("XSRVID=s1; SRVIDX=2", "insert", (False, None, "same")),  # names match exactly
    ("srvid=s1", "insert", (False, None, "same")),  # names are case-sensitive
    ("SRVID=s1; SRVID=s2", "insert", (True, b"s1", b"")),  # the first names the server, all go
    ("a=1; SRVID=s1", "rewrite", (True, b"s1", "same")),
    # prefix: id before the first '~'; the server gets the rest, '~' inside it kept
    ("JS=s1~abc", "prefix", (True, b"s1", b"JS=abc")),
    ("k=v; JS=s1~a~b~c; z=9", "prefix", (True, b"s1", b"k=v; JS=a~b~c; z=9")),
    ("JS=\"s1~abc\"", "prefix", (True, b"s1", b"JS=\"abc\"")),
    ("JS=plain", "prefix", (True, None, "same")),  # set before prefixing was on: as is
    ("JS=~abc", "prefix", (True, b"", b"JS=abc")),
    ("JS=s1~a; JS=s2~b; x=JS=s3~c", "prefix", (True, b"s1", b"JS=a; JS=b; x=JS=s3~c")),
    # separators with odd spacing, empty values, a value containing "NAME="
    ("a=1 ; SRVID=s1", "insert", (True, b"s1", b"a=1")),
    ("SRVID=s1 ;a=1", "insert", (True, b"s1", b"a=1")),
    ("a=1; SRVID=s1; SRVID=s2; b=2", "insert", (True, b"s1", b"a=1; b=2")),
    ("a=SRVID=x; SRVID=s1", "insert", (True, b"s1", b"a=SRVID=x")),
    ("SRVID=; a=1", "insert", (True, b"", b"a=1")),
    ("SRVID; a=1", "insert", (False, None, "same")),
])
def test_edit_cookie_field(field: str, mode: str, want: tuple) -> None:
    name = b"JS" if mode == "prefix" else b"SRVID"
    found, ident, new = edit_cookie_field(field.encode(), name, mode)
    assert (found, ident) == want[:2]
    if want[2] == "same":
        assert new is not None and new == field.encode()
    else:
        assert new == want[2]


NAMES = ["SRVID", "XSRVID", "SRVIDX", "a", "b"]
VALUE = st.text(alphabet="s1~xyz=", max_size=6).map(lambda v: v if len(v) % 3 else f'"{v}"')


def reference(pairs: list[tuple[str, str]], mode: str) -> tuple[bool, str | None, str]:
    """The same edit the plain way: split, edit the SRVID pairs, join with "; "."""
    found, ident, out = False, None, []
    for k, v in pairs:
        if k != "SRVID":
            out.append(f"{k}={v}")
            continue
        quoted = len(v) >= 2 and v[0] == v[-1] == '"'
        inner = v[1:-1] if quoted else v
        this = inner
        if mode == "prefix":
            this, tilde, rest = inner.partition("~")
            if tilde:
                inner = rest
            else:
                this = None
            out.append(f"SRVID={chr(34) + inner + chr(34) if quoted else inner}")
        elif mode == "rewrite":
            out.append(f"{k}={v}")
        if not found:
            found, ident = True, this
    return found, ident, "; ".join(out)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), VALUE), max_size=6),
       st.sampled_from(["insert", "prefix", "rewrite"]))
def test_edit_cookie_field_agrees_with_splitting(pairs: list[tuple[str, str]], mode: str) -> None:
    field = "; ".join(f"{k}={v}" for k, v in pairs).encode()
    found, ident, new = edit_cookie_field(field, b"SRVID", mode)
    want = reference(pairs, mode)
    assert (found, ident, new) == (want[0], None if want[1] is None else want[1].encode(), want[2].encode())


def test_scan_several_cookie_fields() -> None:
    headers = ck("a=1", "SRVID=s2; b=2", "SRVID=s3", "c=3")
    ident, out = scan_request_cookies(headers, b"SRVID", "insert")
    assert ident == b"s2"  # the first occurrence, across fields
    assert out == [b"a=1", b"b=2", b"c=3"]  # emptied field dropped, order kept
    # Nothing to change: None (the default, fast path of forward_request_head).
    assert scan_request_cookies(ck("a=1", "b=2"), b"SRVID", "insert") == (None, None)
    assert scan_request_cookies(ck("SRVID=s1"), b"SRVID", "rewrite") == (b"s1", None)
    assert scan_request_cookies([(b"host", b"x")], b"SRVID", "insert") == (None, None)
    # Prefix: every field stripped; one without a prefix counts as "no id".
    ident, out = scan_request_cookies(ck("JS=plain", "JS=s1~x"), b"JS", "prefix")
    assert ident is None and out == [b"JS=plain", b"JS=x"]


def test_forward_request_head_replaces_cookie_fields() -> None:
    head = RequestHead()
    head.method, head.target, head.host = b"GET", b"/", b"x"
    head.headers = [(b"host", b"x"), (b"cookie", b"a=1; SRVID=s1"), (b"accept", b"*/*"),
                    (b"cookie", b"SRVID=s1")]
    plain = forward_request_head(head, "10.0.0.1", b"http", False)
    assert plain.count(b"cookie: ") == 2  # default: as received
    out = forward_request_head(head, "10.0.0.1", b"http", False, [b"a=1"])
    assert b"Cookie: a=1\r\n" in out and out.lower().count(b"cookie:") == 1
    assert b"accept: */*\r\n" in out
    none = forward_request_head(head, "10.0.0.1", b"http", False, [])
    assert b"cookie" not in none.lower()
    # A Connection-named field is still dropped when cookies are rewritten.
    head.headers.append((b"connection", b"x-secret"))
    head.headers.append((b"x-secret", b"1"))
    out = forward_request_head(head, "10.0.0.1", b"http", False, [b"a=1"])
    assert b"x-secret" not in out


# ---- responses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, mode, want", [
    ("JS=abc; Path=/; HttpOnly", "rewrite", b"JS=s1; Path=/; HttpOnly"),
    ("JS=abc", "prefix", b"JS=s1~abc"),
    ("JS=a~b; Path=/app", "prefix", b"JS=s1~a~b; Path=/app"),
    ("JS=\"abc\"; Secure", "prefix", b"JS=\"s1~abc\"; Secure"),
    ("JSX=abc", "prefix", None),
    ("other=1; JS=2", "rewrite", None),
])
def test_edit_set_cookie(value: str, mode: str, want: bytes | None) -> None:
    assert edit_set_cookie(value.encode(), b"JS", b"s1", mode) == want


def test_insert_sets_cookie_only_when_the_client_does_not_name_the_server() -> None:
    p = pool("{cookie: {name: SRVID, mode: insert, secure: true, max_age: 1h, domain: example.com}}")
    persist = p.persistence
    a1, a2 = p.servers[0], p.servers[1]
    head = [b"HTTP/1.1 200 OK", b"Content-Type: text/plain"]
    line, lines = persist.response(a1, None, head)
    assert lines is head
    id1 = persist.ids[0].decode()
    assert line == (f"Set-Cookie: SRVID={id1}; Path=/; HttpOnly; Secure; Max-Age=3600; "
                    f"Domain=example.com\r\nCache-Control: private\r\n").encode()
    assert persist.response(a1, a1, [b""])[0] == b""  # the client already names a1
    assert persist.response(a1, a2, [b""])[0].startswith(f"Set-Cookie: SRVID={id1};".encode())  # moved
    # The server said something about caching, in whatever case: its word stands.
    for said in ([b"", b"cache-control: no-store"], [b"", b"Date: d", b"Cache-Control:no-store"]):
        assert b"Cache-Control" not in persist.response(a1, None, said)[0]
    assert b"Cache-Control" in persist.response(a1, None, [b"", b"X-Cache-Control: no"])[0]
    assert b"Cache-Control" in persist.response(a1, None, [b"", b"Cache-Controls: no", b"Cache-Contro: l"])[0]
    head = forward_response_head(200, b"", [b"", b"Content-Length: 0"], b"Content-Length: 0\r\n",
                                 False, extra=persist.response(a1, None, [b""])[0])
    assert head.count(b"\r\n\r\n") == 1 and b"\r\nSet-Cookie: SRVID=" in head


def test_httponly_off_and_session_cookie() -> None:
    persist = pool("{cookie: {name: S, httponly: false}}").persistence
    assert persist.lines[0] == f"Set-Cookie: S={persist.ids[0].decode()}; Path=/\r\n".encode()


def test_rewrite_and_prefix_edit_the_servers_own_cookie_in_place() -> None:
    p = pool("{cookie: {name: JSESSIONID, mode: prefix}}",
             servers="[{address: 127.0.0.1:9001, name: a1, cookie: s1}]")
    lines = [b"HTTP/1.1 200 OK", b"Set-Cookie: other=1", b"set-cookie:JSESSIONID=xyz; Path=/"]
    assert p.persistence.response(p.servers[0], None, lines) == (
        b"", [b"HTTP/1.1 200 OK", b"Set-Cookie: other=1", b"set-cookie: JSESSIONID=s1~xyz; Path=/"])
    p = pool("{cookie: {name: JSESSIONID, mode: rewrite}}",
             servers="[{address: 127.0.0.1:9001, name: a1, cookie: s1}]")
    lines = [b"HTTP/1.1 200 OK", b"Set-Cookie: JSESSIONID=xyz; Path=/"]
    assert p.persistence.response(p.servers[0], None, lines) == (
        b"", [b"HTTP/1.1 200 OK", b"Set-Cookie: JSESSIONID=s1; Path=/"])
    # No Set-Cookie from the server: nothing added (the application decides, as HAProxy rewrite).
    lines = [b"HTTP/1.1 200 OK", b"Content-Type: text/html"]
    assert p.persistence.response(p.servers[0], None, lines)[1] is lines


# ---- verdicts ---------------------------------------------------------------------------------------

def test_verdicts_follow_health_and_redispatch() -> None:
    p = pool("{cookie: {}}")
    persist, a1 = p.persistence, p.servers[0]
    assert persist.verdict(None) == PICK
    assert persist.verdict(a1) == STICK
    p.set_weight(a1, 0)
    assert persist.verdict(a1) == STICK  # quiesced: keeps its sessions
    p.mark_down(a1)
    assert persist.verdict(a1) == PICK  # down: redispatch (default on)
    assert persist.may_leave(a1, a1)
    strict = pool("{cookie: {redispatch: false}}")
    b1 = strict.servers[0]
    strict.mark_down(b1)
    assert strict.persistence.verdict(b1) == REFUSE
    assert not strict.persistence.may_leave(b1, b1)  # refused connect to the session's server
    assert strict.persistence.may_leave(None, b1)  # a new session may go elsewhere


def test_sticky_names_server_by_cookie_stale_ids_name_none() -> None:
    p = pool("{cookie: {}}")
    persist = p.persistence
    id2 = persist.ids[1].decode()
    named, key, cookies = persist.sticky(ck(f"a=1; SRVID={id2}"), "10.0.0.1")
    assert named is p.servers[1] and key is None and cookies == [b"a=1"]
    assert persist.sticky(ck("SRVID=0123456789abcdef"), "10.0.0.1")[0] is None  # stale
    assert persist.sticky(ck(f'SRVID="{id2}"'), "10.0.0.1")[0] is p.servers[1]  # quoted


# ---- source -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ip, m4, m6, want", [
    ("192.0.2.77", 32, 128, "192.0.2.77"),
    ("192.0.2.77", 24, 128, "192.0.2.0/24"),
    ("192.0.2.77", 0, 128, "0.0.0.0/0"),
    ("2001:db8:1:2:3:4:5:6", 32, 64, "2001:db8:1:2::/64"),
    ("2001:db8::1", 32, 128, "2001:db8::1"),
    ("::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"),  # IPv4-mapped counts as IPv4
    ("::ffff:192.0.2.77", 32, 64, "192.0.2.77"),
    ("", 24, 64, None),
    ("not-an-ip", 24, 64, None),
])
def test_source_key_masks(ip: str, m4: int, m6: int, want: str | None) -> None:
    assert source_key(ip, m4, m6) == want


def test_source_table_sticks_refreshes_and_expires() -> None:
    clock = FakeClock()
    tables = Tables(factory=lambda n: MemoryStore(n, clock=clock))
    p = pool("{source: {timeout: 300s, netmask: 24}}", tables=tables)
    persist = p.persistence
    assert isinstance(persist, SourcePersistence)
    named, key, cookies = persist.sticky([], "192.0.2.10")
    assert named is None and key == "192.0.2.0/24" and cookies is None
    persist.after_pick(p.servers[2], key)
    assert persist.sticky([], "192.0.2.99")[0] is p.servers[2]  # same /24
    assert persist.sticky([], "192.0.3.1")[0] is None
    clock.now += 200
    persist.after_pick(p.servers[2], key)  # used again: lives 300 s from now (IPVS)
    clock.now += 200
    assert persist.sticky([], "192.0.2.10")[0] is p.servers[2]
    clock.now += 101
    assert persist.sticky([], "192.0.2.10")[0] is None  # idle past the timeout
    assert tables.snapshot() == {"source:app": 0}
    persist.after_pick(p.servers[0], key)
    assert p.snapshot()["persistence"] == {"method": "source", "redispatch": True,
                                           "table": "source:app", "entries": 1, "timeout": 300.0,
                                           "netmask": 24, "netmask6": 128}


def test_source_table_is_bounded_and_survives_a_rebuilt_pool() -> None:
    tables = Tables()
    p = pool("{source: {max_entries: 2}}", tables=tables)
    for i in range(5):
        p.persistence.after_pick(p.servers[0], f"10.0.0.{i}")
    assert len(p.persistence.table) == 2
    # A reload builds new pools on the same Tables: the client keeps its server.
    again = pool("{source: {max_entries: 2}}", tables=tables)
    assert again.persistence.sticky([], "10.0.0.4")[0] is again.servers[0]


def test_stale_server_name_in_table_picks_anew() -> None:
    tables = Tables()
    tables.table("source:app").set("10.0.0.1", "gone", 300)
    p = pool("{source: {}}", tables=tables)
    assert p.persistence.sticky([], "10.0.0.1")[0] is None


def test_a_pool_without_persistence_has_none() -> None:
    cfg = parse_config(pool_yaml("", extra=""), "t.yaml")
    assert cfg.pools["app"].persistence is None
    p = build_pool(cfg.pools["app"])
    assert p.persistence is None and p.snapshot()["persistence"] is None


def ssl_session_pool(text: str) -> tuple[PoolSpec, list[str]]:
    """An HTTP pool with the ssl_session spec read from ``text`` (the check that only
    tls-passthrough pools use it is config_listen's; here only the section is read)."""
    found = Issues("f.yaml")
    spec = parse_persistence(yaml.compose(text), "p", "app", [], found)
    base = parse_config(pool_yaml(""), "t.yaml").pools["app"]
    return dataclasses.replace(base, persistence=spec), [str(i) for i in found.items]


def test_ssl_session_is_parsed_but_not_an_http_persistence() -> None:
    spec, found = ssl_session_pool("{ssl_session: {timeout: 30m, max_entries: 30000, redispatch: no}}")
    assert not found and spec.persistence == PersistenceSpec(
        method="ssl_session", timeout=1800.0, max_entries=30000, redispatch=False)
    assert build_pool(spec).persistence is None
    assert ssl_session_pool("{ssl_session: {netmask: 24}}")[1] == [
        "f.yaml:1:16: p.ssl_session: unknown key 'netmask'; expected one of: max_entries, "
        "redispatch, timeout"]


# ---- explain ----------------------------------------------------------------------------------------

def explain(persistence: str, url: str = "/", headers: list[tuple[str, str]] = (), client: str = "192.0.2.7",
            servers: str | None = None) -> str:
    kw = {"servers": servers} if servers else {}
    cfg = parse_config(pool_yaml(persistence, **kw), "t.yaml")
    view = RequestView.from_url("GET", url, list(headers))
    return "\n".join(explain_choice(cfg.pools["app"], view, client))


def test_explain_lines() -> None:
    id1 = server_cookie_id("app", "a1")
    out = explain("{cookie: {}}")
    assert f"persistence: cookie SRVID (insert): the request carries no SRVID; the scheduler picks " \
           f"and the response sets SRVID={id1} (a1)" in out
    out = explain("{cookie: {}}", headers=[("Cookie", f"x=1; SRVID={id1}")])
    assert f"SRVID={id1} names server a1 (127.0.0.1:9001), up; SRVID is removed before forwarding" in out
    out = explain("{cookie: {}}", headers=[("Cookie", "SRVID=nope")])
    assert "SRVID=nope names no server of this pool (stale)" in out
    out = explain("{cookie: {name: JS, mode: prefix}}", headers=[("Cookie", "JS=abc")])
    assert "JS carries no '<id>~' prefix" in out
    out = explain("{source: {netmask: 24}}")
    assert "persistence: source 192.0.2.0/24 (netmask 24/128) -> table source:app" in out
    spec, _ = ssl_session_pool("{ssl_session: {}}")
    out = "\n".join(explain_choice(spec, RequestView.from_url("GET", "/", []), "192.0.2.7"))
    assert "persistence: ssl_session (decided on the TLS ClientHello" in out
    assert "persistence" not in explain("")


# ---- the rule-file section --------------------------------------------------------------------------

def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "f.yaml")
    return [str(i) for i in exc.value.issues]


def test_full_cookie_section_parses() -> None:
    cfg = parse_config(pool_yaml("{cookie: {name: SRVID, mode: insert, secure: false, httponly: true, "
                                 "max_age: 3600s, domain: example.com, redispatch: false}}"))
    assert cfg.pools["app"].persistence == PersistenceSpec(
        method="cookie", cookie_name="SRVID", cookie_mode="insert", secure=False, httponly=True,
        max_age=3600, domain="example.com", redispatch=False)
    cfg = parse_config(pool_yaml("{source: {timeout: 5m, netmask: 255.255.0.0, netmask6: 48, "
                                 "max_entries: 10}}"))
    assert cfg.pools["app"].persistence == PersistenceSpec(
        method="source", timeout=300.0, netmask=16, netmask6=48, max_entries=10)
    assert parse_config(pool_yaml("")).pools["app"].persistence is None
    assert parse_config(pool_yaml("{cookie: }")).pools["app"].persistence == PersistenceSpec("cookie")


@pytest.mark.parametrize("persistence, message", [
    ("{cookei: {}}", "f.yaml:6:19: pools.app.persistence: unknown key 'cookei'; did you mean 'cookie'?"),
    ("{cookie: {}, source: {}}",
     "f.yaml:6:31: pools.app.persistence: one method per pool, found cookie, source"),
    ("{}", "f.yaml:6:18: pools.app.persistence: expected one method: cookie, source, ssl_session"),
    ("{cookie: {nmae: X}}",
     "f.yaml:6:28: pools.app.persistence.cookie: unknown key 'nmae'; did you mean 'name'?"),
    ("{cookie: {mode: bogus}}", "f.yaml:6:34: pools.app.persistence.cookie.mode: unknown mode 'bogus'; "
     "expected one of: insert, prefix, rewrite"),
    ("{cookie: {mode: prefx}}", "f.yaml:6:34: pools.app.persistence.cookie.mode: unknown mode 'prefx'; "
     "did you mean 'prefix'?"),
    ("{cookie: {name: 'SRV ID'}}", "f.yaml:6:34: pools.app.persistence.cookie.name: 'SRV ID' is not a "
     "valid cookie name"),
    ("{cookie: {name: 'a=b'}}", "is not a valid cookie name"),
    ("{cookie: {max_age: 0s}}", "pools.app.persistence.cookie.max_age: expected a duration greater than 0"),
    ("{cookie: {domain: 'ex ample.com'}}", "expected a domain such as 'example.com'"),
    ("{cookie: {secure: maybe}}", "pools.app.persistence.cookie.secure: expected true or false"),
    ("{cookie: {timeout: 5s}}", "pools.app.persistence.cookie: unknown key 'timeout'"),
    ("{source: {netmask: 33}}", "f.yaml:6:37: pools.app.persistence.source.netmask: expected a prefix "
     "length from 0 to 32, found '33'"),
    ("{source: {netmask6: 129}}",
     "pools.app.persistence.source.netmask6: expected a prefix length from 0 to 128"),
    ("{source: {netmask: 255.0.255.0}}", "'255.0.255.0' is not a netmask"),
    ("{source: {timeout: soon}}", "pools.app.persistence.source.timeout: expected a duration"),
    ("{source: {max_entries: 0}}", "pools.app.persistence.source.max_entries: expected an integer >= 1"),
    ("{source: {name: X}}", "pools.app.persistence.source: unknown key 'name'"),
    ("cookie", "f.yaml:6:18: pools.app.persistence: expected a mapping, found 'cookie'"),
])
def test_section_errors(persistence: str, message: str) -> None:
    found = issues(pool_yaml(persistence))
    assert len(found) == 1, found
    assert message in found[0], found


def test_server_cookie_errors_with_lines() -> None:
    text = """\
listen: [{address: 127.0.0.1:0}]
default_pool: app
pools:
  app:
    servers:
      - {address: 127.0.0.1:9001, cookie: s1}
      - {address: 127.0.0.1:9002, cookie: s1}
      - {address: 127.0.0.1:9003, cookie: 'a;b'}
      - {address: 127.0.0.1:9004, cookie: 'x~y'}
      - {address: 127.0.0.1:9005, cokie: z}
    persistence: {cookie: {}}
"""
    found = issues(text)
    assert found == [
        "f.yaml:7:43: pools.app.servers[1].cookie: duplicate cookie value 's1' in this pool "
        "(first at line 6); each server needs its own",
        "f.yaml:8:43: pools.app.servers[2].cookie: cookie value 'a;b' must be a token (letters, digits "
        "and !#$%&'*+-.^_`|) without '~', which separates the id in prefix mode",
        "f.yaml:9:43: pools.app.servers[3].cookie: cookie value 'x~y' must be a token (letters, digits "
        "and !#$%&'*+-.^_`|) without '~', which separates the id in prefix mode",
        "f.yaml:10:35: pools.app.servers[4]: unknown key 'cokie'; did you mean 'cookie'?",
    ]


def test_explicit_value_equal_to_a_derived_id_is_refused() -> None:
    derived = server_cookie_id("app", "a2")
    servers = (f"[{{address: 127.0.0.1:9001, name: a2}}, "
               f"{{address: 127.0.0.1:9002, name: b, cookie: '{derived}'}}]")
    found = issues(pool_yaml("{cookie: {}}", servers=servers))
    assert len(found) == 1
    assert f"server 'b' has cookie '{derived}', the id derived for server 'a2'" in found[0]
    # The explicit value first: refused all the same (old code saw the clash only in this order).
    servers = (f"[{{address: 127.0.0.1:9002, name: b, cookie: '{derived}'}}, "
               f"{{address: 127.0.0.1:9001, name: a2}}]")
    found = issues(pool_yaml("{cookie: {}}", servers=servers))
    assert len(found) == 1
    assert f"server 'b' has cookie '{derived}', the id derived for server 'a2'" in found[0]


def test_two_pools_sharing_a_cookie_name() -> None:
    text = """\
listen: [{address: 127.0.0.1:0}]
default_pool: a
pools:
  a: {servers: [127.0.0.1:9001], persistence: {cookie: {}}}
  b: {servers: [127.0.0.1:9002], persistence: {cookie: {}}}
  c: {servers: [127.0.0.1:9003], persistence: {cookie: {name: OTHER}}}
  d: {servers: [{address: 127.0.0.1:9004, cookie: s1}], persistence: {cookie: {name: SHARED}}}
  e: {servers: [{address: 127.0.0.1:9004, cookie: s1}], persistence: {cookie: {name: SHARED}}}
"""
    assert issues(text) == [
        "f.yaml:5:47: pools.b.persistence: cookie 'SRVID' is also used by pool 'a', whose servers "
        "have other ids; a client of both would have it overwritten by each. Give each pool its own "
        "cookie name (or the same servers the same explicit cookie values)"]


def test_config_errors_name_file_and_line(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text("listen: [{address: 127.0.0.1:0}]\ndefault_pool: app\npools:\n  app:\n"
                    "    servers: [127.0.0.1:9001]\n    persistence: {cookie: {mode: insrt}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [str(i) for i in exc.value.issues] == [
        f"{path}:6:34: pools.app.persistence.cookie.mode: unknown mode 'insrt'; did you mean 'insert'?"]
