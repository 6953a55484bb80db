"""Rule-file loading: the objects produced, and every class of error with its exact position."""

from __future__ import annotations

import dataclasses
import socket
import types
from pathlib import Path

import pytest

import l7switch.config.load
from l7switch.balance.schedulers import KEY_OPTIONS, SCHEDULERS, Option, Scheduler
from l7switch.balance.schedulers.base import integer
from l7switch.config import load_config, parse_config
from l7switch.config.yamlnodes import parse_address, parse_duration, parse_size
from l7switch.errors import ConfigError, ConfigIssue
from l7switch.http.rules import RequestView, Router
from l7switch.spec import (Config, Limits, ListenerSpec, PoolSpec, ServerSpec, SpliceSpec, Timeouts,
                           UpstreamSpec)

ROOT = Path(__file__).resolve().parents[2]
REAL_RESOLVE = l7switch.config.load.resolve_host  # tests/pure/conftest.py fakes it for every test

GOOD = """\
listen:
  - address: 127.0.0.1:8080
  - address: "[::1]:0"
pools:
  html:
    scheduler: wlc
    scheduler_options: {}
    servers:
      - 127.0.0.1:9001
      - {address: 127.0.0.1:9002, weight: 3, name: html2}
      - {address: "[::1]:9003", weight: 0}
  images: {servers: [localhost:9004]}
rules:
  - name: images
    match: {path_prefix: /images/}
    pool: images
  - pool: html
default_pool: html
timeouts: {connect: 250ms, server: 2m, client: 1h, header: 1.5}
limits: {max_header_bytes: 64KiB, max_headers: 50, max_body_bytes: 1k}
upstream: {max_idle: 0, idle_timeout: 30s}
splice: {enabled: off, threshold: 1MiB}
"""

MINIMAL = """\
listen: [{address: 127.0.0.1:8080}]
pools: {web: {servers: [127.0.0.1:9001]}}
default_pool: web
"""


def issues(text: str, filename: str = "f.yaml") -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, filename)
    return [str(i) for i in exc.value.issues]


def one_issue(text: str) -> str:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


# ---- good files --------------------------------------------------------------------------------

def test_good_file() -> None:
    c = parse_config(GOOD, "good.yaml")
    assert isinstance(c, Config) and c.path == "good.yaml"
    assert c.listeners == (ListenerSpec("127.0.0.1", 8080), ListenerSpec("::1", 0))
    assert list(c.pools) == ["html", "images"]
    assert c.pools["html"] == PoolSpec("html", "wlc", (
        ServerSpec("127.0.0.1:9001", "127.0.0.1", 9001, 1),
        ServerSpec("html2", "127.0.0.1", 9002, 3),
        ServerSpec("[::1]:9003", "::1", 9003, 0),
    ), types.MappingProxyType({}))
    assert c.pools["images"].scheduler == "rr"
    assert c.default_pool == "html" and c.default_pool == "html"
    assert [(r.name, r.index, r.pool, r.line) for r in c.rules] == [
        ("images", 0, "images", 14), (None, 1, "html", 17)]
    assert c.timeouts == Timeouts(connect=0.25, server=120.0, client=3600.0, header=1.5)
    assert c.limits == Limits(max_header_bytes=65536, max_headers=50, max_body_bytes=1024)
    assert c.upstream == UpstreamSpec(max_idle=0, idle_timeout=30.0)
    assert c.splice == SpliceSpec(enabled=False, threshold=1048576)


def test_defaults_and_immutability() -> None:
    c = parse_config(MINIMAL)
    assert c.timeouts == Timeouts(5.0, 60.0, 60.0, 10.0)
    assert c.limits == Limits(32768, 100, None)
    assert c.upstream == UpstreamSpec(64, 60.0) and c.splice == SpliceSpec(True, 65536)
    assert c.rules == () and c.path == "<string>"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.default_pool = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.pools["x"] = c.pools["web"]  # type: ignore[index]
    with pytest.raises(TypeError):
        c.pools["web"].scheduler_options["x"] = 1  # type: ignore[index]


def test_yaml_11_words_stay_text() -> None:
    rules = "rules: [{name: yes, match: {header: {X-B: no}}, pool: on}]\n"
    c = parse_config(MINIMAL.replace("web", "on") + rules)
    assert list(c.pools) == ["on"] and c.default_pool == "on"
    assert c.rules[0].name == "yes"
    assert c.rules[0].match.pattern.pattern == "no"


@pytest.mark.parametrize("value,enabled", [("true", True), ("yes", True), ("On", True),
                                           ("false", False), ("no", False), ("off", False)])
def test_booleans(value: str, enabled: bool) -> None:
    assert parse_config(MINIMAL + f"splice: {{enabled: {value}}}\n").splice.enabled is enabled


def test_unlimited_body_and_empty_sections() -> None:
    c = parse_config(MINIMAL + "limits: {max_body_bytes: none}\ntimeouts:\nrules:\n")
    assert c.limits.max_body_bytes is None and c.timeouts == Timeouts() and c.rules == ()


def test_merge_keys() -> None:
    c = parse_config("""\
listen: [{address: 127.0.0.1:0}]
pools:
  b: &common {scheduler: wlc, servers: [127.0.0.1:2]}
  a: {<<: *common, servers: [127.0.0.1:1]}
default_pool: a
""")
    assert c.pools["a"].scheduler == "wlc" and c.pools["a"].servers[0].port == 1


def test_scheduler_options_validated_against_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    class Opt(Scheduler):
        name = "opt"
        options = {**KEY_OPTIONS, "table_size": Option(integer(1), 7, "size"),
                   "low": Option(integer(0), 1, "low"), "high": Option(integer(0), 2, "high")}

        @classmethod
        def check(cls, opts, n_servers):  # type: ignore[no-untyped-def]
            return super().check(opts, n_servers) + (
                ["low must be below high"] if opts["low"] >= opts["high"] else [])

    monkeypatch.setitem(SCHEDULERS, "opt", Opt)
    base = "listen: [{address: 127.0.0.1:0}]\ndefault_pool: p\npools:\n  p:\n    scheduler: opt\n"
    c = parse_config(base + "    scheduler_options: {hash_key: Header:X-User, table_size: 251}\n"
                            "    servers: [h:1]\n")
    assert dict(c.pools["p"].scheduler_options) == {"hash_key": "header:x-user", "table_size": 251}
    assert one_issue(base + "    scheduler_options: {hash_ky: path}\n    servers: [h:1]\n") == (
        "f.yaml:6:25: pools.p.scheduler_options: unknown option 'hash_ky' for scheduler 'opt'; "
        "did you mean 'hash_key'?")
    assert one_issue(base.replace("opt", "rr") + "    scheduler_options: {x: 1}\n    servers: [h:1]\n") == (
        "f.yaml:6:25: pools.p.scheduler_options: unknown option 'x' for scheduler 'rr'; it takes no options")
    assert one_issue(base + "    scheduler_options: [1]\n    servers: [h:1]\n") == (
        "f.yaml:6:24: pools.p.scheduler_options: expected a mapping, found a list")
    assert one_issue(base + "    scheduler_options: {table_size: big}\n    servers: [h:1]\n") == (
        "f.yaml:6:37: pools.p.scheduler_options.table_size: expected an integer, found 'big'")
    assert one_issue(base + "    scheduler_options: {hash_key: pth}\n    servers: [h:1]\n") == (
        "f.yaml:6:35: pools.p.scheduler_options.hash_key: hash_key 'pth' is not one of path, url, "
        "host, source, header:NAME, cookie:NAME, param:NAME; did you mean 'path'?")
    assert one_issue(base + "    scheduler_options: {low: 5, high: 3}\n    servers: [h:1]\n") == (
        "f.yaml:6:5: pools.p.scheduler_options: low must be below high")
    assert one_issue(base + "    scheduler_options: {trust_forwarded: true}\n    servers: [h:1]\n") == (
        "f.yaml:6:5: pools.p.scheduler_options: trust_forwarded only applies with hash_key: source")


@pytest.mark.parametrize("text,seconds", [("5s", 5), ("250ms", 0.25), ("2m", 120), ("1h", 3600),
                                          ("1m30s", 90), ("7", 7), ("0.5", 0.5), (" 10 ", 10)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "s", "-1s", "5 s s", "1d"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text,n", [("65536", 65536), ("64KiB", 65536), ("1MiB", 1 << 20), ("1k", 1024),
                                    ("10m", 10 << 20), ("2G", 2 << 30), ("512B", 512), ("1_000", 1000)])
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "1.5k", "-1", "k", "1 parsec"])
def test_parse_size_bad(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text,expected", [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:0", ("::1", 0)),
                                           ("example.com:65535", ("example.com", 65535))])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "h:65536", "h:-1", "h:http", "::1:80", "[::1]80",
                                  "[nope]:80", "a b:80"])
def test_parse_address_bad(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# ---- errors, one class at a time, with exact positions ---------------------------------------------

ERROR_CASES = [
    # YAML syntax
    ("listen: [\n", "f.yaml:1:10: invalid YAML: expected the node content, but found '<stream end>' "
                    "(while parsing a flow node)"),
    ("a:\n\tb: 1\n", "f.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token "
                     "(while scanning for the next token)"),
    # top level
    ("", "f.yaml:1:1: the file is empty; expected a mapping with listen, pools and default_pool"),
    ("- a\n", "f.yaml:1:1: top level: expected a mapping with listen, pools and default_pool, found a list"),
    # unknown keys, with and without a near miss
    (MINIMAL + "timeout: {connect: 1s}\n",
     "f.yaml:4:1: unknown top-level key 'timeout'; did you mean 'timeouts'?"),
    (MINIMAL + "timeouts: {conect: 1s}\n",
     "f.yaml:4:12: timeouts: unknown key 'conect'; did you mean 'connect'?"),
    (MINIMAL + "zzz: 1\n", "f.yaml:4:1: unknown top-level key 'zzz'; expected one of: admin, default_pool, hard_stop_after, limits, "
                           "listen, log, metrics, monitor, pools, rules, splice, tests, timeouts, upstream, worker_steering, workers"),
    (MINIMAL.replace("{servers:", "{severs: [], servers:"),
     "f.yaml:2:15: pools.web: unknown key 'severs'; did you mean 'servers'?"),
    # duplicate keys
    (MINIMAL + "default_pool: web\n",
     "f.yaml:4:1: duplicate top-level key 'default_pool' (first defined at line 3)"),
    (MINIMAL.replace("pools: {web: {servers: [127.0.0.1:9001]}}",
                     "pools:\n  web: {servers: [a:1]}\n  web: {servers: [b:1]}"),
     "f.yaml:4:3: pools: duplicate key 'web' (first defined at line 3)"),
    # unknown pools
    (MINIMAL.replace("default_pool: web", "default_pool: wbe"),
     "f.yaml:3:15: default_pool: unknown pool 'wbe'; did you mean 'web'?"),
    (MINIMAL + "rules:\n  - pool: nothing_like_it\n",
     "f.yaml:5:11: rules[0].pool: unknown pool 'nothing_like_it'; defined pools: web"),
    # missing required things
    ("listen: [{address: 127.0.0.1:8080}]\npools: {web: {servers: [127.0.0.1:9001]}}\n",
     "f.yaml:1:1: missing required key 'default_pool'"),
    (MINIMAL.replace("listen: [{address: 127.0.0.1:8080}]", "listen: []"),
     "f.yaml:1:9: listen: expected at least one listener, e.g. '- address: 127.0.0.1:8080'"),
    (MINIMAL.replace("listen: [{address: 127.0.0.1:8080}]", "listen:"),
     "f.yaml:1:8: listen: expected at least one listener, e.g. '- address: 127.0.0.1:8080'"),
    (MINIMAL.replace("[{address: 127.0.0.1:8080}]", "[{address: 127.0.0.1:8080, port: 80}]"),
     "f.yaml:1:36: listen[0]: unknown key 'port'; expected one of: address, default_pool, mode, sni, tls, "
     "upgrades"),
    (MINIMAL.replace("[{address: 127.0.0.1:8080}]", "[{}]"),
     "f.yaml:1:10: listen[0]: missing required key 'address'"),
    (MINIMAL.replace("{servers: [127.0.0.1:9001]}", "{servers: []}"),
     "f.yaml:2:24: pools.web.servers: pool 'web' has no servers; expected at least one host:port"),
    (MINIMAL.replace("{servers: [127.0.0.1:9001]}", "{scheduler: rr}"),
     "f.yaml:2:14: pools.web: missing required key 'servers'"),
    (MINIMAL.replace("pools: {web: {servers: [127.0.0.1:9001]}}", "pools: {}"),
     "f.yaml:2:8: pools: expected at least one pool"),
    (MINIMAL + "rules:\n  - name: x\n",
     "f.yaml:5:5: rules[0]: missing required key 'pool'"),
    # addresses
    (MINIMAL.replace("127.0.0.1:8080", "127.0.0.1"),
     "f.yaml:1:20: listen[0].address: expected host:port, found '127.0.0.1'"),
    (MINIMAL.replace("127.0.0.1:9001", "127.0.0.1:70000"),
     "f.yaml:2:25: pools.web.servers[0]: port must be a number 0-65535, found '70000' in '127.0.0.1:70000'"),
    (MINIMAL.replace("127.0.0.1:9001", "'::1:80'"),
     "f.yaml:2:25: pools.web.servers[0]: IPv6 addresses need brackets, e.g. '[::1]:80', found '::1:80'"),
    (MINIMAL.replace("127.0.0.1:9001", "{address: x:1, name: a}, {address: y:1, name: a}"),
     "f.yaml:2:71: pools.web.servers[1]: duplicate server name 'a' in pool 'web' (first at line 2)"),
    # weights
    (MINIMAL.replace("127.0.0.1:9001", "{address: h:1, weight: -1}"),
     "f.yaml:2:48: pools.web.servers[0].weight: expected an integer >= 0, found '-1'"),
    (MINIMAL.replace("127.0.0.1:9001", "{address: h:1, weight: heavy}"),
     "f.yaml:2:48: pools.web.servers[0].weight: expected an integer >= 0, found 'heavy'"),
    # schedulers
    (MINIMAL.replace("{servers:", "{scheduler: rrr, servers:"),
     "f.yaml:2:26: pools.web.scheduler: unknown scheduler 'rrr'; did you mean 'rr'?"),
    (MINIMAL.replace("{servers:", "{scheduler: zzzzzz, servers:"),
     "f.yaml:2:26: pools.web.scheduler: unknown scheduler 'zzzzzz'; known: " + ", ".join(sorted(SCHEDULERS))),
    # regexes
    (MINIMAL + "rules: [{match: {path_regex: '(a'}, pool: web}]\n",
     "f.yaml:4:30: rules[0].match.path_regex: bad regular expression '(a': "
     "missing ), unterminated subpattern at position 0"),
    (MINIMAL + "rules: [{match: {header: {X-A: '[z-a]'}}, pool: web}]\n",
     "f.yaml:4:32: rules[0].match.header.X-A: bad regular expression '[z-a]': "
     "bad character range z-a at position 1"),
    # match values
    (MINIMAL + "rules: [{match: {path_prefix: images}, pool: web}]\n",
     "f.yaml:4:31: rules[0].match.path_prefix: expected a path starting with '/', found 'images'"),
    (MINIMAL + "rules: [{match: {method: get}, pool: web}]\n",
     "f.yaml:4:26: rules[0].match.method: methods are case-sensitive; did you mean 'GET'?"),
    (MINIMAL + "rules: [{match: {host: 'a.test:80'}, pool: web}]\n",
     "f.yaml:4:24: rules[0].match.host: expected a host name such as 'www.example.com' or '*.example.com', "
     "found 'a.test:80' (no port: rules see the host without it)"),
    (MINIMAL + "rules: [{match: {any: []}, pool: web}]\n",
     "f.yaml:4:23: rules[0].match.any: expected a list of at least one match, found an empty list"),
    (MINIMAL + "rules: [{match: {all: [{pat_prefix: /}]}, pool: web}]\n",
     "f.yaml:4:25: rules[0].match.all[0]: unknown key 'pat_prefix'; did you mean 'path_prefix'?"),
    (MINIMAL + "rules: [{match: {not: {extension: []}}, pool: web}]\n",
     "f.yaml:4:35: rules[0].match.not.extension: expected an extension or a list of them, "
     "found an empty list"),
    (MINIMAL + "rules: [{match: [path_prefix: /], pool: web}]\n",
     "f.yaml:4:17: rules[0].match: expected a mapping, found a list"),
    (MINIMAL + "rules: [{name: a, pool: web}, {name: a, pool: web}]\n",
     "f.yaml:4:38: rules[1].name: duplicate rule name 'a' (first at line 4)"),
    # durations, sizes, booleans, integers
    (MINIMAL + "timeouts: {server: 5 minutes}\n",
     "f.yaml:4:20: timeouts.server: expected a duration such as '5s', '250ms', '2m', '1h' or seconds, "
     "found '5 minutes'"),
    (MINIMAL + "timeouts: {connect: 0s}\n",
     "f.yaml:4:21: timeouts.connect: expected a duration greater than 0, found '0s'"),
    (MINIMAL + "limits: {max_header_bytes: 32 KB please}\n",
     "f.yaml:4:28: limits.max_header_bytes: expected a size such as 65536, '64KiB', '1MiB' or '1k', "
     "found '32 KB please'"),
    (MINIMAL + "limits: {max_headers: 0}\n",
     "f.yaml:4:23: limits.max_headers: expected an integer >= 1, found '0'"),
    (MINIMAL + "splice: {enabled: maybe}\n",
     "f.yaml:4:19: splice.enabled: expected true or false (or yes/no, on/off), found 'maybe'"),
    (MINIMAL + "upstream: {max_idle: [1]}\n",
     "f.yaml:4:22: upstream.max_idle: expected an integer, found a list"),
    # wrong types
    (MINIMAL + "limits: [max_headers]\n", "f.yaml:4:9: limits: expected a mapping, found a list"),
    (MINIMAL.replace("{web: {servers: [127.0.0.1:9001]}}", "[web]"),
     "f.yaml:2:8: pools: expected a mapping, found a list"),
    (MINIMAL + "rules: {pool: web}\n", "f.yaml:4:8: rules: expected a list, found a mapping"),
    (MINIMAL.replace("default_pool: web", "default_pool: [web]"),
     "f.yaml:3:15: default_pool: expected a pool name, found a list"),
    (MINIMAL + "rules: [{name: [x], pool: web}]\n",
     "f.yaml:4:16: rules[0].name: expected a rule name, found a list"),
]


@pytest.mark.parametrize("text,expected", ERROR_CASES, ids=[str(i) for i in range(len(ERROR_CASES))])
def test_error(text: str, expected: str) -> None:
    assert one_issue(text) == expected


def test_all_issues_in_one_pass_sorted() -> None:
    text = """\
listen: []
pools:
  web: {scheduler: rrr, servers: [127.0.0.1:99999]}
rules:
  - match: {path_prefx: /a, path_regex: "("}
    pool: wbe
default_pool: htm
timeouts: {server: 5x}
"""
    found = issues(text)
    assert [i.split(":")[1] for i in found] == ["1", "3", "3", "5", "5", "6", "7", "8"]
    assert found[1] == "f.yaml:3:20: pools.web.scheduler: unknown scheduler 'rrr'; did you mean 'rr'?"


def test_recursive_alias_does_not_crash() -> None:
    text = MINIMAL + "rules:\n  - match: &m {not: *m}\n    pool: web\n"
    found = issues(text)
    assert len(found) == 1 and "nested deeper than" in found[0]


# ---- files -----------------------------------------------------------------------------------------

def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.issues == [ConfigIssue(str(path), 1, 1, "cannot read file: No such file or directory")]


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"listen: []\n# caf\xe9\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [(i.line, i.column) for i in exc.value.issues] == [(2, 6)]


def test_three_errors_file() -> None:
    path = ROOT / "tests" / "data" / "three_errors.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [(i.line, i.column) for i in exc.value.issues] == [(11, 13), (15, 11), (17, 25)]


@pytest.mark.parametrize("name", ["example.yaml", "minimal.yaml"])
def test_shipped_rule_files_load(name: str) -> None:
    c = load_config(ROOT / "rules" / name)
    assert c.pools and c.listeners and c.default_pool in c.pools
    assert all(r.pool in c.pools for r in c.rules)


# ---- extension globs -------------------------------------------------------------------------------

EXT_RULE = MINIMAL + "rules:\n  - match: {extension: %s}\n    pool: web\n"


def test_extension_globs_refused_with_a_hint_dotted_forms_kept() -> None:
    """``extension: ["*.png"]`` is an error at its own line and column, with the fix; ``*`` alone is
    an error with no fix to offer; every glob in a list is reported; ``.PNG`` still reads as png.

    Old code accepted "*.png" silently as the suffix ".*.png", which no path ever ends with, so
    the rule never matched (and "*" became the suffix ".*").
    """
    assert issues(EXT_RULE % '["*.png"]') == [
        "f.yaml:5:25: rules[0].match.extension: '*.png' is a glob; an extension is written "
        "without '*' (a leading dot is optional); write 'png'"]
    assert issues(EXT_RULE % '"*"') == [
        "f.yaml:5:24: rules[0].match.extension: '*' is a glob; an extension is written "
        "without '*' (a leading dot is optional)"]
    found = issues(EXT_RULE % '[png, "*.jpg", "*.gif"]')
    assert [(f.split(":")[1], f.split(":")[2], f.rsplit("; ", 1)[1]) for f in found] == [
        ("5", "30", "write 'jpg'"), ("5", "39", "write 'gif'")]
    c = parse_config(EXT_RULE % '[".PNG"]')
    assert c.rules[0].match.values == ("png",)
    rule, pool = Router.from_specs(c.rules, c.default_pool).route(
        RequestView.from_url("GET", "/a/logo.png", []))
    assert rule is not None and pool == "web"


# ---- servers: one address once per pool; host names that must resolve -----------------------------

def test_duplicate_server_address_in_a_pool() -> None:
    """The same address twice in one pool is reported at the second entry, naming the first's line;
    host names compare case-insensitively and IPv6 literals by value. The same address in two
    pools is fine.

    Old code accepted both entries: the address got twice its weight and two names, which split
    its persistence cookies and source-table entries between them.
    """
    text = MINIMAL.replace("{web: {servers: [127.0.0.1:9001]}}", """
  web:
    servers:
      - 127.0.0.1:9001
      - {address: 127.0.0.1:9001, name: again}
      - {address: Backend.Example:80, name: b1}
      - {address: backend.example:80, name: b2}
      - "[::1]:80"
      - "[0:0::1]:80"
  other: {servers: [127.0.0.1:9001, backend.example:80]}""")
    assert issues(text) == [
        "f.yaml:6:19: pools.web.servers[1]: duplicate server address '127.0.0.1:9001' in pool 'web' "
        "(first at line 5)",
        "f.yaml:8:19: pools.web.servers[3]: duplicate server address 'backend.example:80' in pool 'web' "
        "(first at line 7)",
        "f.yaml:10:9: pools.web.servers[5]: duplicate server address '[0:0::1]:80' in pool 'web' "
        "(first at line 9)",
    ]
    # Different ports of one host are different servers.
    c = parse_config(MINIMAL.replace("[127.0.0.1:9001]", "[127.0.0.1:9001, 127.0.0.1:9002]"))
    assert [s.port for s in c.pools["web"].servers] == [9001, 9002]


def test_unresolvable_server_host_is_an_error_unless_resolve_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server host name that does not resolve is an error at its address, with both fixes;
    ``resolve: later`` skips the lookup and is kept in the ServerSpec; each (host, port) is looked
    up once per file, IP literals never.

    Old code: the unresolvable name passed check and every request to it failed at run time
    (and ``resolve`` was an unknown key).
    """
    looked_up: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> None:
        looked_up.append((host, port))
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(l7switch.config.load, "resolve_host", resolve)
    text = MINIMAL.replace("{web: {servers: [127.0.0.1:9001]}}", """
  web:
    servers:
      - {address: no-such-host.invalid:80, name: a}
      - no-such-host.invalid:81
      - {address: app.internal:80, name: c}
  other:
    servers:
      - {address: No-Such-Host.invalid:80, name: a}
      - {address: app.internal:80, name: c}
      - "[::1]:80"
""")
    assert issues(text) == [
        "f.yaml:5:19: pools.web.servers[0].address: host 'no-such-host.invalid' does not resolve "
        "(Name or service not known); fix the name, or add 'resolve: later' if it resolves only "
        "where the switch runs",
        "f.yaml:6:9: pools.web.servers[1]: host 'no-such-host.invalid' does not resolve "
        "(Name or service not known); fix the name, or write {address: no-such-host.invalid:81, "
        "resolve: later} if it resolves only where the switch runs",
        "f.yaml:10:19: pools.other.servers[0].address: host 'No-Such-Host.invalid' does not resolve "
        "(Name or service not known); fix the name, or add 'resolve: later' if it resolves only "
        "where the switch runs",
    ]
    assert looked_up == [("no-such-host.invalid", 80), ("no-such-host.invalid", 81), ("app.internal", 80)]

    looked_up.clear()
    c = parse_config(MINIMAL.replace("127.0.0.1:9001", "{address: no-such-host.invalid:80, resolve: later}, "
                                     "{address: app.internal:80, resolve: now}"))
    assert [(s.host, s.resolve_later) for s in c.pools["web"].servers] == [
        ("no-such-host.invalid", True), ("app.internal", False)]
    assert looked_up == [("app.internal", 80)]
    assert one_issue(MINIMAL.replace("127.0.0.1:9001", "{address: app.internal:80, resolve: latr}")) == (
        "f.yaml:2:61: pools.web.servers[0].resolve: expected now or later, found 'latr'; did you mean 'later'?")
    assert one_issue(MINIMAL.replace("127.0.0.1:9001", "{address: app.internal:80, resolve: [later]}")) == (
        "f.yaml:2:61: pools.web.servers[0].resolve: expected now or later, found a list")


def test_localhost_resolves_with_the_real_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real lookup (socket.getaddrinfo; /etc/hosts answers for localhost, no socket opened)
    accepts a server named by host name.

    Old code never looked names up, so it passed too; this guards the real resolver's wiring
    (its signature, and that a success is not taken for a failure), which the fakes elsewhere skip.
    """
    monkeypatch.setattr(l7switch.config.load, "resolve_host", REAL_RESOLVE)
    c = parse_config(MINIMAL.replace("127.0.0.1:9001", "localhost:9001"))
    assert c.pools["web"].servers[0].host == "localhost"


# ---- YAML syntax errors at the line that has them ----------------------------------------------------

# 32 lines; the last one lacks its colon.
THIRTY_TWO = """\
# A small site: pages, images and an API.
listen:
  - address: 127.0.0.1:8080
  - address: 127.0.0.1:8081

pools:
  html:
    scheduler: wlc
    servers:
      - 127.0.0.1:9001
      - {address: 127.0.0.1:9002, weight: 3}
  images:
    scheduler: chash
    servers: [127.0.0.1:9003, 127.0.0.1:9004]
  api:
    servers: [127.0.0.1:9005]

rules:
  - name: api
    match: {host: api.example.com}
    pool: api
  - name: images
    match: {path_prefix: /images/}
    pool: images
  - name: static
    match: {extension: [png, jpg]}
    pool: images

timeouts: {connect: 5s, server: 60s}
limits: {max_header_bytes: 32KiB}

default_pool html
"""


def test_missing_colon_on_the_last_line_is_reported_there(tmp_path: Path) -> None:
    """A key without its colon on a file's last line is reported at that line (32), not after it.

    Old code reported PyYAML's problem mark, the token after the key: line 33, which the file
    does not have.
    """
    assert THIRTY_TWO.count("\n") == 32 and THIRTY_TWO.splitlines()[31] == "default_pool html"
    path = tmp_path / "site.yaml"
    path.write_text(THIRTY_TWO)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [str(i) for i in exc.value.issues] == [
        f"{path}:32:1: invalid YAML: could not find expected ':' (while scanning a simple key)"]
    path.write_text(THIRTY_TWO.rstrip("\n"))  # no final newline: the same line
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [(i.line, i.column) for i in exc.value.issues] == [(32, 1)]


def test_missing_colon_mid_file_is_reported_at_the_key(tmp_path: Path) -> None:
    """A key without its colon in the middle of a file is reported at the key's own line.

    Old code reported the line after it, where PyYAML found the next token.
    """
    path = tmp_path / "site.yaml"
    good = THIRTY_TWO.replace("default_pool html", "default_pool: html")
    path.write_text(good)
    assert load_config(path).default_pool == "html"
    path.write_text(good.replace("    pool: api\n", "    pool api\n"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [str(i) for i in exc.value.issues] == [
        f"{path}:21:5: invalid YAML: could not find expected ':' (while scanning a simple key)"]


def test_syntax_error_at_end_of_input_stays_within_the_file() -> None:
    """An error PyYAML finds at the end of input (an unclosed bracket or quote, trailing blank
    lines) is reported just after the last non-blank line, never on a line past it.

    Old code reported the end-of-stream mark: a line after the last, or a trailing blank line.
    """
    assert issues("listen: [\n") == [
        "f.yaml:1:10: invalid YAML: expected the node content, but found '<stream end>' "
        "(while parsing a flow node)"]
    assert issues(MINIMAL + "rules: [{pool: 'web}]\n\n\n") == [
        "f.yaml:4:22: invalid YAML: found unexpected end of stream (while scanning a quoted scalar)"]


# ---- listen[].upgrades -------------------------------------------------------------------------------

def listener_with(upgrades: str, mode: str = "") -> str:
    return MINIMAL.replace("[{address: 127.0.0.1:8080}]",
                           f"\n  - address: 127.0.0.1:8080\n{mode}    upgrades: {upgrades}")


def test_listener_upgrades_read_lower_case() -> None:
    """``upgrades`` lists the Upgrade tokens an http listener may tunnel, lower-cased; [] means none;
    without the key, websocket. Old code had no such key ('unknown key' for listen[0].upgrades).
    """
    assert parse_config(MINIMAL).listeners[0].upgrades == ("websocket",)
    assert parse_config(MINIMAL.replace("[{address: 127.0.0.1:8080}]", "[127.0.0.1:8080]")
                        ).listeners[0].upgrades == ("websocket",)
    assert parse_config(listener_with("[]")).listeners[0].upgrades == ()
    assert parse_config(listener_with("[WebSocket, Foo]")).listeners[0].upgrades == ("websocket", "foo")
    assert parse_config(listener_with("websocket")).listeners[0].upgrades == ("websocket",)


def test_listener_upgrades_errors() -> None:
    """h2c is refused with the reason, a non-token and a repeat are errors at their item, and a
    tls-passthrough listener may not have the key at all.

    Old code: every one of these was the same 'unknown key' error, with no reason given.
    """
    assert issues(listener_with("[websocket, H2C]")) == [
        "f.yaml:3:27: listen[0].upgrades: 'H2C' is never tunnelled (HTTP/2 frames would pass the rules "
        "unseen); clients that offer it are answered over HTTP/1.1"]
    assert issues(listener_with("['web socket', websocket, WEBSOCKET]")) == [
        "f.yaml:3:16: listen[0].upgrades: expected an Upgrade token such as 'websocket', found 'web socket'",
        "f.yaml:3:41: listen[0].upgrades: 'WEBSOCKET' is listed twice; keep one"]
    assert issues(listener_with("")) == [
        "f.yaml:3:14: listen[0].upgrades: expected a list of Upgrade tokens such as [websocket], or [] "
        "for none, found nothing"]
    assert issues(listener_with("[websocket]", mode="    mode: tls-passthrough\n    default_pool: web\n")) == [
        "f.yaml:5:5: listen[0].upgrades: only for http listeners (a tls-passthrough listener relays TLS "
        "bytes and never sees an Upgrade header)"]


# ---- limits.max_response_header_bytes ----------------------------------------------------------------

def test_max_response_header_bytes_read_and_checked() -> None:
    """``limits.max_response_header_bytes`` is a size like the other limits (default 64 KiB).

    Old code had no such key (refused as unknown): a server's response head was bounded only by
    a count of 101 fields, never in bytes.
    """
    assert parse_config(MINIMAL).limits.max_response_header_bytes == 65536
    c = parse_config(MINIMAL + "limits: {max_response_header_bytes: 16KiB}\n")
    assert c.limits.max_response_header_bytes == 16384
    assert c.limits.max_header_bytes == Limits().max_header_bytes  # the others keep their defaults
    assert one_issue(MINIMAL + "limits: {max_response_header_bytes: lots}\n") == (
        "f.yaml:4:37: limits.max_response_header_bytes: expected a size such as 65536, '64KiB', "
        "'1MiB' or '1k', found 'lots'")
    assert one_issue(MINIMAL + "limits: {max_response_header_bytes: 0}\n") == (
        "f.yaml:4:37: limits.max_response_header_bytes: expected a size of at least 1, found '0'")
