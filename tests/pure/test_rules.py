"""Routing: every match key and the composition keys, positive and negative, table-driven.

Each case is a ``match`` mapping written as YAML (as a webmaster would, so YAML 1.1 spellings
like ``yes``/``on``/``off`` are exercised for real), a request, and whether the rule must match.
"""

from __future__ import annotations

import pytest

from l7switch.config import parse_config
from l7switch.http.rules import AllOf, Always, Extension, Host, Method, PathPrefix, RequestView, Router, Rule

BASE = """\
listen: [{address: 127.0.0.1:0}]
pools:
  hit: {servers: [127.0.0.1:9001]}
  miss: {servers: [127.0.0.1:9002]}
default_pool: miss
rules:
  - name: r
    match: %s
    pool: hit
"""


def router(config) -> Router:
    return Router.from_specs(config.rules, config.default_pool)


def view(url: str = "/", method: str = "GET", **headers: str) -> RequestView:
    return RequestView.from_url(method, url, [(k.replace("_", "-"), v) for k, v in headers.items()])


def routes_to_hit(match_yaml: str, v: RequestView) -> bool:
    config = parse_config(BASE % match_yaml)
    rule, pool = router(config).route(v)
    assert (rule is not None) == (pool == "hit")
    # route() and explain() must agree, or explain would lie about the proxy.
    ok, reasons = router(config).rules[0].explain(v)
    assert ok == (pool == "hit"), reasons
    assert reasons
    return pool == "hit"


CASES = [
    # path_prefix
    ("{path_prefix: /images/}", view("/images/a.png"), True),
    ("{path_prefix: /images/}", view("/images"), False),
    ("{path_prefix: /images/}", view("/img/images/a.png"), False),
    # path_regex (search, not fullmatch)
    (r"{path_regex: '\.php$'}", view("/a/b/index.php"), True),
    (r"{path_regex: '\.php$'}", view("/a/b/index.php5"), False),
    ("{path_regex: 'v[0-9]+'}", view("/api/v2/users"), True),
    ("{path_regex: '^/v[0-9]+'}", view("/api/v2/users"), False),
    # extension: case-insensitive, dot optional, last segment only, str or list
    ("{extension: png}", view("/a/logo.png"), True),
    ("{extension: png}", view("/a/LOGO.PNG"), True),
    ("{extension: .PNG}", view("/a/logo.png"), True),
    ("{extension: [jpg, .gif]}", view("/x.GIF"), True),
    ("{extension: [jpg, .gif]}", view("/x.png"), False),
    ("{extension: png}", view("/a.png/readme"), False),
    ("{extension: png}", view("/apng"), False),
    ("{extension: png}", view("/a/logo.png?x=1"), True),
    ("{extension: tar.gz}", view("/dist/pkg.tar.gz"), True),
    # host: exact case-insensitive, wildcard matches subdomains but not the apex
    ("{host: www.example.com}", view("http://WWW.Example.COM/"), True),
    ("{host: WWW.example.com}", view("http://www.example.com:8080/"), True),
    ("{host: www.example.com}", view("http://api.example.com/"), False),
    ("{host: '*.example.com'}", view("http://api.example.com/"), True),
    ("{host: '*.example.com'}", view("http://a.b.example.com/"), True),
    ("{host: '*.example.com'}", view("http://example.com/"), False),
    ("{host: '*.example.com'}", view("http://badexample.com/"), False),
    ("{host: [example.com, '*.example.com']}", view("http://example.com/"), True),
    ("{host: example.com}", view("/", Host="example.com:80"), True),
    ("{host: example.com}", view("/"), False),
    # method: case-sensitive, str or list
    ("{method: POST}", view("/", "POST"), True),
    ("{method: POST}", view("/", "post"), False),
    ("{method: [GET, HEAD]}", view("/", "HEAD"), True),
    ("{method: [GET, HEAD]}", view("/", "DELETE"), False),
    # header: name case-insensitive, regex search on the value, absent never matches
    ("{header: {X-Beta: yes}}", view("/", X_Beta="yes"), True),
    ("{header: {X-Beta: yes}}", view("/", X_Beta="true"), False),
    ("{header: {x-beta: '^1$'}}", view("/", X_BETA="1"), True),
    ("{header: {X-Beta: '.*'}}", view("/"), False),
    ("{header: {X-Beta: ''}}", view("/"), False),
    ("{header: {User-Agent: Mobile}}", view("/", User_Agent="Mozilla/5.0 (iPhone) Mobile/15E"), True),
    ("{header: {A: x, B: y}}", view("/", A="x"), False),
    ("{header: {A: x, B: y}}", view("/", A="x", B="y"), True),
    # cookie: name case-sensitive; `on: off` is the cookie "on" with regex "off"
    ("{cookie: {on: off}}", view("/", Cookie="on=off"), True),
    ("{cookie: {on: off}}", view("/", Cookie="on=true"), False),
    ("{cookie: {on: off}}", view("/", Cookie="ON=off"), False),
    ("{cookie: {session: '^[a-f0-9]+$'}}", view("/", Cookie="a=1; session=deadbeef"), True),
    ("{cookie: {session: '.'}}", view("/", Cookie="sessionx=1"), False),
    ("{cookie: {session: '.'}}", view("/"), False),
    # query: first value, blank values kept
    ("{query: {beta: yes}}", view("/?beta=yes"), True),
    ("{query: {beta: yes}}", view("/?beta=no&beta=yes"), False),
    ("{query: {beta: '^$'}}", view("/?beta"), True),
    ("{query: {beta: '.*'}}", view("/?alpha=1"), False),
    ("{query: {q: 'a b'}}", view("/?q=a+b"), True),
    # empty match and no match at all take everything
    ("{}", view("/anything", "DELETE"), True),
    ("", view("/anything"), True),
    # several keys: all must hold
    ("{path_prefix: /api/, method: POST}", view("/api/x", "POST"), True),
    ("{path_prefix: /api/, method: POST}", view("/api/x", "GET"), False),
    # any / all / not, nested, and alongside plain keys
    ("{any: [{extension: png}, {path_prefix: /img/}]}", view("/img/a"), True),
    ("{any: [{extension: png}, {path_prefix: /img/}]}", view("/a.png"), True),
    ("{any: [{extension: png}, {path_prefix: /img/}]}", view("/a.txt"), False),
    ("{all: [{method: GET}, {path_prefix: /a}]}", view("/a", "GET"), True),
    ("{all: [{method: GET}, {path_prefix: /a}]}", view("/b", "GET"), False),
    ("{not: {method: GET}}", view("/", "POST"), True),
    ("{not: {method: GET}}", view("/", "GET"), False),
    ("{not: {header: {X-Beta: yes}}}", view("/"), True),
    ("{path_prefix: /a, not: {extension: tmp}}", view("/a/x.tmp"), False),
    ("{path_prefix: /a, not: {extension: tmp}}", view("/a/x.txt"), True),
    ("{not: {any: [{method: GET}, {all: [{method: POST}, {query: {x: '1'}}]}]}}",
     view("/?x=1", "POST"), False),
    ("{not: {any: [{method: GET}, {all: [{method: POST}, {query: {x: '1'}}]}]}}",
     view("/?x=2", "POST"), True),
]


@pytest.mark.parametrize("match,request_view,expected", CASES,
                         ids=[f"{i}:{c[0]}" for i, c in enumerate(CASES)])
def test_match(match: str, request_view: RequestView, expected: bool) -> None:
    assert routes_to_hit(match, request_view) is expected


def test_first_match_wins_and_default() -> None:
    config = parse_config("""\
listen: [{address: 127.0.0.1:0}]
pools: {a: {servers: [127.0.0.1:1]}, b: {servers: [127.0.0.1:2]}, c: {servers: [127.0.0.1:3]}}
rules:
  - {match: {path_prefix: /x}, pool: a}
  - {name: second, match: {path_prefix: /x/y}, pool: b}
default_pool: c
""")
    rule, pool = router(config).route(view("/x/y"))
    assert (rule.index, rule.label, rule.line, pool) == (0, "#1", 4, "a")
    rule, pool = router(config).route(view("/z"))
    assert (rule, pool) == (None, "c")
    rules = router(config).rules
    assert rules[1].label == "second" and rules[1].line == 5
    assert rules[1].matches(view("/x/y/z")) and not rules[1].matches(view("/x"))


def test_router_in_code() -> None:
    rules = (Rule("img", 0, "images", 0, AllOf([PathPrefix("/i/"), Extension([".PNG"])], implicit=True)),
             Rule(None, 1, "api", 0, Host(["*.api.test"])),
             Rule(None, 2, "writes", 0, Method(["POST"])))
    router = Router(rules, "web")
    assert router.route(view("/i/a.png"))[1] == "images"
    assert router.route(view("http://v1.api.test/i/a.gif"))[1] == "api"
    assert router.route(view("/", "POST"))[1] == "writes"
    assert router.route(view("/"))[1] == "web"
    assert Rule(None, 0, "p", 0).matches(view("/"))  # default condition: Always
    assert isinstance(Rule(None, 0, "p", 0).condition, Always)


# ---- RequestView ---------------------------------------------------------------------------------

def test_header_joins_repeats_and_is_case_insensitive() -> None:
    v = RequestView("GET", "/", "", "h", [("accept", "a"), ("x", "1"), ("accept", "b")])
    assert v.header("Accept") == "a, b"
    assert v.header("x") == "1"
    assert v.header("missing") is None


def test_cookie_from_all_cookie_headers() -> None:
    v = RequestView("GET", "/", "", "h", [("cookie", "a=1; b=2"), ("cookie", "c=3;d="), ("cookie", "a=9")])
    assert (v.cookie("a"), v.cookie("b"), v.cookie("c"), v.cookie("d")) == ("1", "2", "3", "")
    assert v.cookie("e") is None and v.cookie("A") is None


def test_param() -> None:
    v = RequestView("GET", "/", "a=1&a=2&b&c=x%20y&d=", "h", [])
    assert (v.param("a"), v.param("b"), v.param("c"), v.param("d")) == ("1", "", "x y", "")
    assert v.param("z") is None
    assert RequestView("GET", "/", "", "h", []).param("a") is None


@pytest.mark.parametrize("url,headers,path,query,host", [
    ("http://Example.COM:8080/a/b?x=1#frag", [], "/a/b", "x=1", "example.com"),
    ("http://example.com", [], "/", "", "example.com"),
    ("/p?q", [("Host", "Site.test:81")], "/p", "q", "site.test"),
    ("/p", [], "/p", "", ""),
    ("http://[::1]:8080/x", [], "/x", "", "[::1]"),
    ("http://new.test/", [("Host", "old.test")], "/", "", "new.test"),
    ("http://user:pw@h.test/", [], "/", "", "h.test"),
    ("www.example.com/x?y", [], "/x", "y", "www.example.com"),
])
def test_from_url(url: str, headers: list[tuple[str, str]], path: str, query: str, host: str) -> None:
    v = RequestView.from_url("GET", url, headers)
    assert (v.path, v.query, v.host) == (path, query, host)
    if url.startswith("http"):
        assert v.header("host") is not None  # an absolute URL supplies the Host header


# ---- explain -------------------------------------------------------------------------------------

EXPLAIN_CONFIG = """\
listen: [{address: 127.0.0.1:0}]
pools:
  api: {servers: [127.0.0.1:9001]}
  images: {scheduler: wlc, servers: [127.0.0.1:9002, {address: 127.0.0.1:9003, name: img2, weight: 2}]}
  html: {servers: [127.0.0.1:9004]}
rules:
  - name: api
    match: {host: api.example.com}
    pool: api
  - match: {path_prefix: /images/, not: {header: {X-Beta: yes}}}
    pool: images
  - {match: {}, pool: html}
default_pool: html
"""


def test_router_explain() -> None:
    config = parse_config(EXPLAIN_CONFIG)
    report = router(config).explain(view("http://www.example.com/images/logo.png"), config.pools)
    lines = report.splitlines()
    assert lines[0] == "request: GET /images/logo.png  (host 'www.example.com')"
    assert lines[1] == "rule #1 'api' (line 7): no match"
    assert "host 'api.example.com' does not match 'www.example.com'" in lines[2]
    assert lines[3] == "rule #2 (line 10): MATCH"
    assert "path_prefix '/images/' matches '/images/logo.png'" in report
    assert "header 'X-Beta' ~ 'yes': header is absent" in report
    assert "(1 later rule not tried)" in report
    assert "decision: rule #2 (line 10) -> pool 'images'" in report
    assert "pool 'images': scheduler wlc, 2 server(s)" in report
    assert "127.0.0.1:9003 (img2) weight 2" in report


def test_router_explain_default_pool() -> None:
    config = parse_config(EXPLAIN_CONFIG.replace("  - {match: {}, pool: html}\n", ""))
    report = router(config).explain(view("/other"))
    assert report.splitlines()[-1] == "decision: no rule matched -> default pool 'html'"
    assert Router((), "web").explain(view("/")).endswith("decision: no rules -> default pool 'web'")


def test_rule_explain_reasons() -> None:
    config = parse_config(BASE % "{any: [{method: POST}, {query: {beta: on}}], path_regex: '\\.php$'}")
    ok, reasons = router(config).rules[0].explain(view("/x.php?beta=on"))
    assert ok
    assert reasons == [
        "any of 2: one holds",
        "  alternative 1: no match",
        "    method [POST] does not match 'GET'",
        "  alternative 2: match",
        "    query 'beta' ~ 'on' matches 'on'",
        "path_regex '\\.php$' matches '/x.php'",
    ]
