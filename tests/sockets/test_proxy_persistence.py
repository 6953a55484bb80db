"""Persistence end to end: real origins that say who they are (X-Server, /echo's "server" and the
headers they received), real sockets, a real switch."""

from __future__ import annotations

import pytest
from kit import Conn, get, wait_for

from l7switch.balance.persistence import server_cookie_id
from l7switch.devtools.origin import OriginResponse, standard_handler


def config(ports: list[int], persistence: str, weights: list[int] | None = None,
           cookies: list[str] | None = None, scheduler: str = "rr") -> str:
    servers = []
    for i, p in enumerate(ports):
        s = f"{{address: 127.0.0.1:{p}, name: o{i}"
        if weights:
            s += f", weight: {weights[i]}"
        if cookies:
            s += f", cookie: {cookies[i]}"
        servers.append(s + "}")
    lines = ["listen: [{address: 127.0.0.1:0}]\ndefault_pool: app\npools:\n  app:\n",
             f"    scheduler: {scheduler}\n    servers: [{', '.join(servers)}]\n"]
    if persistence:
        lines.append(f"    persistence: {persistence}\n")
    return "".join(lines)


def app_handler(name: str):
    """The standard routes plus /login, which starts an application session (as a Java app's
    JSESSIONID), its value holding a '~' of its own."""
    std = standard_handler(name)

    def handler(req):
        if req.path == "/login":
            return OriginResponse(200, [("Set-Cookie", f"JSESSIONID=sess-{name}~1; Path=/; HttpOnly"),
                                        ("Set-Cookie", "theme=dark"), ("Content-Type", "text/plain")],
                                  f"{name}: welcome\n".encode())
        return std(req)
    return handler


@pytest.fixture
def three(origin_factory):
    return [origin_factory(f"o{i}") for i in range(3)]


def ask(c: Conn, path: str = "/echo", cookie: str | None = None):
    c.send(get(path, extra=f"Cookie: {cookie}\r\n" if cookie else ""))
    r = c.response()
    assert r.status == 200, r
    return r


def received(r, name: str) -> list[str]:
    """Values of header ``name`` the origin received (from /echo)."""
    return [v for n, v in r.json()["headers"] if n.lower() == name]


def sid(name: str) -> str:
    return server_cookie_id("app", name)


def pool_call(lt, sw, method: str, server: str, *args):
    pool = sw.pools["app"]
    s = next(x for x in pool.servers if x.name == server)
    return lt.call(getattr(pool, method), s, *args)


def test_insert_sticks_across_requests_and_connections(three, switch_factory, lt):
    sw = switch_factory(config([o.port for o in three], "{cookie: {name: SRVID, mode: insert}}"))
    with Conn(sw.port) as c:
        first = ask(c, cookie="app=1")
        server = first.header("x-server")
        assert first.all("set-cookie") == [f"SRVID={sid(server)}; Path=/; HttpOnly"]
        assert first.header("cache-control") == "private"  # with an inserted cookie only
        cookie = f"app=1; SRVID={sid(server)}; lang=en"
        for _ in range(20):
            r = ask(c, cookie=cookie)
            assert r.header("x-server") == server
            assert r.all("set-cookie") == [] and r.header("cache-control") is None
            # HAProxy "indirect": the server never sees SRVID; the other cookies reach it intact.
            assert received(r, "cookie") == ["app=1; lang=en"]
    for _ in range(5):
        with Conn(sw.port) as c:
            assert ask(c, cookie=cookie).header("x-server") == server
    # Without the cookie, rr spreads the requests (the cookie, not luck, kept them together).
    with Conn(sw.port) as c:
        assert len({ask(c).header("x-server") for _ in range(6)}) == 3
    # Only our cookie: the Cookie field goes entirely; several Cookie fields are each edited.
    with Conn(sw.port) as c:
        r = ask(c, cookie=f"SRVID={sid(server)}")
        assert r.header("x-server") == server and received(r, "cookie") == []
        c.send(get("/echo", extra=f"Cookie: a=1\r\nCookie: SRVID={sid(server)}\r\nCookie: b=2\r\n"))
        r = c.response()
        assert r.header("x-server") == server and received(r, "cookie") == ["a=1", "b=2"]


def test_stale_cookie_is_replaced(three, switch_factory):
    sw = switch_factory(config([o.port for o in three], "{cookie: {}}"))
    with Conn(sw.port) as c:
        r = ask(c, cookie="SRVID=0000000000000000")
        assert r.all("set-cookie") == [f"SRVID={sid(r.header('x-server'))}; Path=/; HttpOnly"]


def test_explicit_cookie_values_and_attributes(three, switch_factory):
    sw = switch_factory(config([o.port for o in three], "{cookie: {name: S, secure: true, max_age: 1h, "
                               "domain: example.com, httponly: false}}", cookies=["s0", "s1", "s2"]))
    with Conn(sw.port) as c:
        for want in ("o0", "o1", "o2"):
            r = ask(c, cookie=f"S=s{want[1]}")
            assert r.header("x-server") == want and r.all("set-cookie") == []
        r = ask(c)
        assert r.header("set-cookie") == (f"S=s{r.header('x-server')[1]}; Path=/; Secure; Max-Age=3600; "
                                          "Domain=example.com")


def test_prefix_mode(origin_factory, switch_factory):
    origins = [origin_factory(f"o{i}", handler=app_handler(f"o{i}")) for i in range(3)]
    sw = switch_factory(config([o.port for o in origins], "{cookie: {name: JSESSIONID, mode: prefix}}"))
    with Conn(sw.port) as c:
        r = ask(c, "/login")
        server = r.header("x-server")
        # The client sees the application's cookie with the server id before it; attributes stay.
        assert r.all("set-cookie") == [f"JSESSIONID={sid(server)}~sess-{server}~1; Path=/; HttpOnly",
                                       "theme=dark"]
        cookie = f"theme=dark; JSESSIONID={sid(server)}~sess-{server}~1"
        for _ in range(20):
            r = ask(c, cookie=cookie)
            assert r.header("x-server") == server
            # ...and the server gets its own value back, '~' inside it included.
            assert received(r, "cookie") == [f"theme=dark; JSESSIONID=sess-{server}~1"]
            assert r.all("set-cookie") == []
        # An application cookie set before prefixing was on passes as is and is balanced.
        r = ask(c, cookie="JSESSIONID=legacy")
        assert received(r, "cookie") == ["JSESSIONID=legacy"]


def test_rewrite_mode(origin_factory, switch_factory):
    origins = [origin_factory(f"o{i}", handler=app_handler(f"o{i}")) for i in range(2)]
    sw = switch_factory(config([o.port for o in origins], "{cookie: {name: JSESSIONID, mode: rewrite}}",
                               cookies=["a", "b"]))
    with Conn(sw.port) as c:
        r = ask(c, "/login")
        server = r.header("x-server")
        ident = "ab"[int(server[1])]
        assert r.all("set-cookie") == [f"JSESSIONID={ident}; Path=/; HttpOnly", "theme=dark"]
        for _ in range(10):
            r = ask(c, cookie=f"JSESSIONID={ident}")
            assert r.header("x-server") == server
            assert received(r, "cookie") == [f"JSESSIONID={ident}"]  # rewrite forwards as is
        # No Set-Cookie from the server: none from the switch either.
        assert ask(c).all("set-cookie") == []


def test_redispatch_when_the_sticky_origin_stops(three, switch_factory, lt):
    sw = switch_factory(config([o.port for o in three], "{cookie: {}}"))
    with Conn(sw.port) as c:
        server = ask(c).header("x-server")
    victim = three[int(server[1])]
    lt.run(victim.stop())
    s = next(x for x in sw.pools["app"].servers if x.name == server)
    assert wait_for(lambda: s.conns == 0)
    with Conn(sw.port) as c:
        # The connect is refused: another server answers and the cookie moves to it.
        r = ask(c, cookie=f"SRVID={sid(server)}")
        moved = r.header("x-server")
        assert moved != server
        assert r.all("set-cookie") == [f"SRVID={sid(moved)}; Path=/; HttpOnly"]
        for _ in range(5):
            r = ask(c, cookie=f"SRVID={sid(moved)}")
            assert r.header("x-server") == moved and r.all("set-cookie") == []
    assert s.failures >= 1


def test_redispatch_when_the_sticky_server_is_down(three, switch_factory, lt):
    sw = switch_factory(config([o.port for o in three], "{cookie: {}}"))
    with Conn(sw.port) as c:
        pool_call(lt, sw, "mark_down", "o1")
        r = ask(c, cookie=f"SRVID={sid('o1')}")
        assert r.header("x-server") != "o1"
        assert r.all("set-cookie") == [f"SRVID={sid(r.header('x-server'))}; Path=/; HttpOnly"]
        pool_call(lt, sw, "mark_up", "o1")
        assert ask(c, cookie=f"SRVID={sid('o1')}").header("x-server") == "o1"


def test_no_redispatch_gives_503(three, switch_factory, lt, caplog):
    sw = switch_factory(config([o.port for o in three], "{cookie: {redispatch: false}}"))
    with Conn(sw.port) as c:
        pool_call(lt, sw, "mark_down", "o1")
        c.send(get("/echo", extra=f"Cookie: SRVID={sid('o1')}\r\n"))
        r = c.response()
        assert r.status == 503
        assert "server 'o1' holding this session in pool 'app' is down and redispatch is off" in caplog.text
        assert r.header("x-request-id") in caplog.text
    with Conn(sw.port) as c:
        r = ask(c)  # a new session is balanced as usual
        assert r.header("x-server") in ("o0", "o2")
    lt.run(three[2].stop())
    with Conn(sw.port) as c:
        c.send(get("/echo", extra=f"Cookie: SRVID={sid('o2')}\r\n"))
        r = c.response()
        assert r.status == 503 and "server 'o2' holding this session refused the connection" in caplog.text
    with Conn(sw.port) as c:
        for _ in range(4):  # no cookie: a refused connect is still retried elsewhere
            assert ask(c).header("x-server") == "o0"


def test_weight_zero_keeps_its_sessions(three, switch_factory, lt):
    sw = switch_factory(config([o.port for o in three], "{cookie: {}}"))
    pool_call(lt, sw, "set_weight", "o2", 0)
    with Conn(sw.port) as c:
        for _ in range(10):
            r = ask(c, cookie=f"SRVID={sid('o2')}")
            assert r.header("x-server") == "o2" and r.all("set-cookie") == []
        assert "o2" not in {ask(c).header("x-server") for _ in range(10)}  # no new sessions


def test_source_persistence(three, switch_factory, lt):
    sw = switch_factory(config([o.port for o in three], "{source: {timeout: 300s, netmask: 24}}"))
    got = set()
    for _ in range(10):
        with Conn(sw.port) as c:
            got |= {ask(c).header("x-server") for _ in range(3)}
    assert len(got) == 1  # rr would have used all three
    server = got.pop()
    snap = lt.call(sw.snapshot)["pools"]["app"]["persistence"]
    assert snap["method"] == "source" and snap["entries"] == 1 and snap["table"] == "source:app"
    assert lt.call(sw.tables.table("source:app").get, "127.0.0.0/24") == server
    # The server stops: the client moves, and the table follows it.
    s = next(x for x in sw.pools["app"].servers if x.name == server)
    lt.run(three[int(server[1])].stop())
    assert wait_for(lambda: s.conns == 0)
    with Conn(sw.port) as c:
        moved = ask(c).header("x-server")
        assert moved != server
        assert all(ask(c).header("x-server") == moved for _ in range(5))
    assert lt.call(sw.tables.table("source:app").get, "127.0.0.0/24") == moved


def test_a_pool_without_persistence_is_unchanged(three, switch_factory, lt):
    sw = switch_factory(config([o.port for o in three], ""))
    with Conn(sw.port) as c:
        seen = set()
        for _ in range(6):
            r = ask(c, cookie="SRVID=x; a=1")
            seen.add(r.header("x-server"))
            assert received(r, "cookie") == ["SRVID=x; a=1"]
            assert r.all("set-cookie") == [] and r.header("cache-control") is None
        assert len(seen) == 3
    assert lt.call(sw.snapshot)["pools"]["app"]["persistence"] is None


def test_tables_survive_a_new_switch(three, switch_factory, lt):
    """A reload builds a new Switch; handed the old one's tables, clients keep their servers."""
    from l7switch.config import parse_config
    from l7switch.runtime.switch import Switch

    text = config([o.port for o in three], "{source: {}}")
    sw = switch_factory(text)
    with Conn(sw.port) as c:
        server = ask(c).header("x-server")
    new = Switch(parse_config(text), tables=sw.tables)
    assert new.tables is sw.tables
    assert new.pools["app"].persistence.sticky([], "127.0.0.1")[0].name == server


