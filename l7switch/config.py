"""Rule files: loading, checking, and the frozen objects the rest of l7switch runs on.

``parse_config`` walks the composed YAML node tree (see yamlnodes.py for why not safe_load),
checks everything in one pass and raises ``ConfigError`` listing every issue with its line and
column, or returns a ``Config``. Nothing in a ``Config`` can change after loading: a reload builds
a new one.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import rules as R
from .errors import ConfigError, ConfigIssue
from .config_persist import check_cookie_names, parse_persistence, server_cookie
from .schedulers import SCHEDULERS
from .yamlnodes import (Issues, address, boolean, compose, did_you_mean, duration, expect, integer,
                        is_null, kind, mapping, nonempty_text, parse_address, parse_duration,
                        parse_size, plain_value, record, regex, size, text_list)

__all__ = ["ListenerSpec", "TLSSpec", "ServerSpec", "PoolSpec", "PersistenceSpec", "Timeouts", "Limits", "UpstreamSpec", "SpliceSpec",
           "Config", "load_config", "parse_config", "parse_duration", "parse_size", "parse_address",
           "ConfigError", "ConfigIssue"]


@dataclass(frozen=True, slots=True)
class TLSSpec:
    """TLS termination on a listener."""
    certs: tuple[tuple[str, str], ...]  # (certificate chain file, key file); the first is the default
    min_version: str = "TLSv1.2"  # Mozilla "intermediate": TLS 1.2 and 1.3
    alpn: tuple[str, ...] = ("http/1.1",)


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    host: str
    port: int  # 0 = any free port (tests)
    mode: str = "http"  # "http" (optionally with tls) or "tls-passthrough"
    tls: TLSSpec | None = None  # http mode: terminate TLS with these certificates
    sni: tuple[tuple[str, str], ...] = ()  # tls-passthrough: (host name or *.domain, pool), in order
    default_pool: str | None = None  # tls-passthrough: pool when no SNI entry matches


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    host: str  # IPv6 without brackets
    port: int
    weight: int = 1  # ipvsadm's default weight; 0 = quiesced (drain, no new requests)
    cookie: str | None = None  # explicit persistence cookie value (HAProxy "server ... cookie X")


@dataclass(frozen=True, slots=True)
class PersistenceSpec:
    """One persistence method per pool (``persistence:``)."""
    method: str  # "cookie", "source" or "ssl_session"
    cookie_name: str = "SRVID"
    cookie_mode: str = "insert"  # insert | rewrite | prefix
    secure: bool = False
    httponly: bool = True
    max_age: int | None = None  # seconds; None = a session cookie
    domain: str | None = None
    timeout: float = 300.0  # source / ssl_session idle timeout: ipvsadm -p's default 300 s
    netmask: int = 32  # source: IPv4 prefix length (ipvsadm -M, default 255.255.255.255)
    netmask6: int = 128  # source: IPv6 prefix length
    max_entries: int = 100_000  # source / ssl_session table bound
    redispatch: bool = True  # sticky server down or refusing: pick another (HAProxy option redispatch)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    scheduler: str
    servers: tuple[ServerSpec, ...]
    scheduler_options: Mapping[str, Any]  # types.MappingProxyType
    persistence: PersistenceSpec | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0  # Envoy cluster connect_timeout default 5s (nginx proxy_connect_timeout: 60s)
    server: float = 60.0  # nginx proxy_read_timeout 60s
    client: float = 60.0  # nginx client_body_timeout / send_timeout 60s
    header: float = 10.0  # HAProxy "timeout http-request", commonly set to 10s against slowloris


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 32768  # Kestrel MaxRequestHeadersTotalSize 32 KB
    max_headers: int = 100  # Envoy max_headers_count 100 (Kestrel MaxRequestHeaderCount 100)
    max_body_bytes: int | None = None  # unlimited, as HAProxy and Envoy (nginx client_max_body_size: 1m)


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    max_idle: int = 64  # per server; our choice, above nginx's documented "keepalive 16" example
    idle_timeout: float = 60.0  # nginx keepalive_timeout 60s (upstream, since 1.15.3)


@dataclass(frozen=True, slots=True)
class SpliceSpec:
    enabled: bool = True  # used only where os.splice exists (Linux); cf. HAProxy "option splice-auto"
    threshold: int = 65536  # one pipe buffer: Linux's default pipe capacity is 64 KiB


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    listeners: tuple[ListenerSpec, ...]
    pools: Mapping[str, PoolSpec]
    router: R.Router
    default_pool: str
    timeouts: Timeouts
    limits: Limits
    upstream: UpstreamSpec
    splice: SpliceSpec

    @property
    def rules(self) -> tuple[R.Rule, ...]:
        return self.router.rules


# ---- the walk ---------------------------------------------------------------------------------------

TOP_KEYS = ("listen", "pools", "rules", "default_pool", "timeouts", "limits", "upstream", "splice")
POOL_KEYS = ("scheduler", "scheduler_options", "servers", "persistence")
SERVER_KEYS = ("address", "weight", "name", "cookie")
RULE_KEYS = ("name", "match", "pool")
MATCH_KEYS = ("path_prefix", "path_regex", "extension", "host", "method", "header", "cookie",
              "query", "any", "all", "not")
DEFAULT_SCHEDULER = "rr"  # HAProxy's default "balance roundrobin" (ipvsadm's default is wlc)
MAX_MATCH_DEPTH = 32  # deeper nesting is a mistake (or a recursive YAML alias)


def load_config(path: str | PathLike[str]) -> Config:
    """Read and parse the rule file at ``path``; every problem is raised as ``ConfigError``."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([ConfigIssue(name, 1, 1, f"cannot read file: {e.strerror or e}")]) from None
    try:
        source = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError([ConfigIssue(name, line, col, f"file is not UTF-8: {e.reason}")]) from None
    return parse_config(source, name)


def parse_config(text: str, filename: str = "<string>") -> Config:
    issues = Issues(filename)
    root = compose(text, issues)
    if root is None:
        if not issues:
            issues.at(1, 1, "the file is empty; expected a mapping with listen, pools and default_pool")
        raise ConfigError(issues.sorted())
    if not isinstance(root, MappingNode):
        issues.add(root, f"top level: expected a mapping with listen, pools and default_pool, "
                   f"found {kind(root)}")
        raise ConfigError(issues.sorted())
    # default_pool is required only where HTTP is routed: checked once the listeners are read.
    top = mapping(root, "", issues, TOP_KEYS, required=("listen", "pools")) or {}

    def section(key: str, fn: Callable[[Node, Issues], Any], default: Any) -> Any:
        entry = top.get(key)
        if entry is None or is_null(entry[1]):
            return default
        return fn(entry[1], issues)

    from .config_listen import Listen, check_pool_use, parse_listen  # it imports this module's specs
    listen = parse_listen(top["listen"][1], issues, filename) if "listen" in top else Listen(http=True)
    pools, pool_names = section("pools", _pools, ({}, []))
    if "pools" in top:
        pnode = top["pools"][1]
        if is_null(pnode) or (isinstance(pnode, MappingNode) and not pnode.value):
            issues.add(pnode, "pools: expected at least one pool")
    rule_list = section("rules", lambda n, i: _rules(n, i, pool_names), ())
    default_pool = ""
    if "default_pool" in top:
        node = top["default_pool"][1]
        default_pool = nonempty_text(node, "default_pool", issues, "a pool name") or ""
        if default_pool and pool_names and default_pool not in pool_names:
            issues.add(node, f"default_pool: unknown pool {default_pool!r}"
                       f"{did_you_mean(default_pool, pool_names, 'defined pools')}")
    elif listen.http:
        issues.add(root, "missing required key 'default_pool'")
    check_pool_use(listen, pools, pool_names, top["pools"][1] if "pools" in top else None,
                   [(r.pool, f"rule #{r.index + 1} (line {r.line})") for r in rule_list]
                   + ([(default_pool, "default_pool")] if default_pool else []), issues)
    timeouts = section("timeouts", _timeouts, Timeouts())
    limits = section("limits", _limits, Limits())
    upstream = section("upstream", _upstream, UpstreamSpec())
    splice = section("splice", _splice, SpliceSpec())
    if issues:
        raise ConfigError(issues.sorted())
    return Config(
        path=filename, listeners=tuple(listen.specs), pools=types.MappingProxyType(pools),
        router=R.Router(rule_list, default_pool), default_pool=default_pool, timeouts=timeouts,
        limits=limits, upstream=upstream, splice=splice,
    )


def _pools(node: Node, issues: Issues) -> tuple[dict[str, PoolSpec], list[str]]:
    """The valid pools, and the names of all pools written (so rules naming a pool that has its
    own error are not also reported as unknown)."""
    entries = mapping(node, "pools", issues)
    if entries is None:
        return {}, []
    pools: dict[str, PoolSpec] = {}
    for name, (key, value) in entries.items():
        spec = _pool(name, key, value, issues)
        if spec is not None:
            pools[name] = spec
    check_cookie_names(pools, entries, issues)
    return pools, list(entries)


def _pool(name: str, key: Node, node: Node, issues: Issues) -> PoolSpec | None:
    path = f"pools.{name}"
    if not name.strip():
        issues.add(key, "pools: pool names must not be empty")
    m = mapping(node, path, issues, POOL_KEYS, required=("servers",))
    if m is None:
        return None
    n_before = len(issues)
    scheduler = DEFAULT_SCHEDULER
    if "scheduler" in m:
        snode = m["scheduler"][1]
        scheduler = nonempty_text(snode, f"{path}.scheduler", issues, "a scheduler name") or ""
        if scheduler and scheduler not in SCHEDULERS:
            issues.add(snode, f"{path}.scheduler: unknown scheduler {scheduler!r}"
                       f"{did_you_mean(scheduler, SCHEDULERS, 'known')}")
    options: dict[str, Any] = {}
    cls = SCHEDULERS.get(scheduler)
    onode = m["scheduler_options"] if "scheduler_options" in m else None
    if onode is not None and not is_null(onode[1]):
        opath = f"{path}.scheduler_options"
        entries = mapping(onode[1], opath, issues) or {}
        for oname, (okey, ovalue) in entries.items():
            if cls is None:
                continue  # an unknown scheduler is already reported; its options cannot be judged
            if oname not in cls.options:
                allowed = sorted(cls.options)
                hint = did_you_mean(oname, allowed) if allowed else "; it takes no options"
                issues.add(okey, f"{opath}: unknown option {oname!r} for scheduler {scheduler!r}{hint}")
                continue
            value = plain_value(ovalue, f"{opath}.{oname}", issues)
            try:
                options[oname] = cls.parse_option(oname, value)
            except ValueError as e:
                issues.add(ovalue, f"{opath}.{oname}: {e}")
    servers: list[ServerSpec] = []
    if "servers" in m:
        servers = _servers(m["servers"][1], f"{path}.servers", name, issues)
    if cls is not None and len(issues) == n_before:
        # Checks across options and the pool size (t_low < t_high, a Maglev table size > 100·N).
        full = {oname: opt.default for oname, opt in cls.options.items()} | options
        where = onode[0] if onode is not None else m["scheduler"][0] if "scheduler" in m else key
        for problem in cls.check(full, len(servers)):
            issues.add(where, f"{path}.scheduler_options: {problem}")
    persistence = None
    if "persistence" in m:  # after the servers: cookie ids are checked against them
        persistence = parse_persistence(m["persistence"][1], f"{path}.persistence", name, servers, issues)
    if len(issues) != n_before:
        return None
    return PoolSpec(name, scheduler, tuple(servers), types.MappingProxyType(options), persistence)


def _servers(node: Node, path: str, pool: str, issues: Issues) -> list[ServerSpec]:
    if is_null(node) or (isinstance(node, SequenceNode) and not node.value):
        issues.add(node, f"{path}: pool {pool!r} has no servers; expected at least one host:port")
        return []
    if not expect(node, SequenceNode, path, issues):
        return []
    out: list[ServerSpec] = []
    names: dict[str, int] = {}
    cookies: dict[str, int] = {}  # explicit persistence cookie values -> line
    for i, item in enumerate(node.value):
        ipath = f"{path}[{i}]"
        weight, name, name_node, cookie = 1, None, item, None
        if isinstance(item, ScalarNode):  # short form: "host:port"
            addr_node, apath = item, ipath
        else:
            m = mapping(item, ipath, issues, SERVER_KEYS, required=("address",))
            if m is None or "address" not in m:
                continue
            addr_node, apath = m["address"][1], f"{ipath}.address"
            if "weight" in m:
                weight = integer(m["weight"][1], f"{ipath}.weight", issues, minimum=0)
            if "name" in m:
                name_node = m["name"][1]
                name = nonempty_text(name_node, f"{ipath}.name", issues, "a server name")
                if name is None:
                    continue
            if "cookie" in m:
                cookie = server_cookie(m["cookie"][1], f"{ipath}.cookie", issues, cookies)
                if cookie is None:
                    continue
        addr = address(addr_node, apath, issues)
        if addr is None or weight is None:
            continue
        name = name if name is not None else addr_node.value.strip()
        if name in names:
            issues.add(name_node, f"{ipath}: duplicate server name {name!r} in pool {pool!r} "
                       f"(first at line {names[name]})")
            continue
        names[name] = name_node.start_mark.line + 1
        out.append(ServerSpec(name, addr[0], addr[1], weight, cookie))
    return out


def _rules(node: Node, issues: Issues, pool_names: list[str]) -> tuple[R.Rule, ...]:
    # Rules with errors are left out; any error stops the Config being built anyway.
    if not expect(node, SequenceNode, "rules", issues):
        return ()
    out: list[R.Rule] = []
    names: dict[str, int] = {}
    for i, item in enumerate(node.value):
        path = f"rules[{i}]"
        m = mapping(item, path, issues, RULE_KEYS, required=("pool",))
        if m is None:
            continue
        name = None
        if "name" in m:
            name_node = m["name"][1]
            name = nonempty_text(name_node, f"{path}.name", issues, "a rule name")
            if name is not None and name in names:
                issues.add(name_node, f"{path}.name: duplicate rule name {name!r} "
                           f"(first at line {names[name]})")
            elif name is not None:
                names[name] = name_node.start_mark.line + 1
        pool = None
        if "pool" in m:
            pool = nonempty_text(m["pool"][1], f"{path}.pool", issues, "a pool name")
            if pool and pool_names and pool not in pool_names:
                issues.add(m["pool"][1], f"{path}.pool: unknown pool {pool!r}"
                           f"{did_you_mean(pool, pool_names, 'defined pools')}")
        cond = _match(m["match"][1], f"{path}.match", issues, 0) if "match" in m else R.Always()
        if pool and cond is not None:
            out.append(R.Rule(name, i, pool, item.start_mark.line + 1, cond))
    return tuple(out)


# ---- match compilation ----------------------------------------------------------------------------

def _match(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
    if depth > MAX_MATCH_DEPTH:
        issues.add(node, f"{path}: match nested deeper than {MAX_MATCH_DEPTH} levels "
                   "(a recursive YAML alias?)")
        return None
    if is_null(node):
        return R.Always()
    m = mapping(node, path, issues, MATCH_KEYS)
    if m is None:
        return None
    n_before = len(issues)
    conds: list[R.Condition] = []
    for key, (_, value) in m.items():
        cond = _MATCHERS[key](value, f"{path}.{key}", issues, depth)
        if cond is not None:
            conds.append(cond)
    if len(issues) != n_before:
        return None
    if not conds:
        return R.Always()
    return conds[0] if len(conds) == 1 else R.AllOf(conds, implicit=True)


def _path_prefix(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
    value = nonempty_text(node, path, issues, "a path prefix")
    if value is None:
        return None
    if not value.startswith("/"):
        issues.add(node, f"{path}: expected a path starting with '/', found {value!r}")
        return None
    return R.PathPrefix(value)


def _path_regex(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
    pattern = regex(node, path, issues)
    return None if pattern is None else R.PathRegex(pattern)


def _extension(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
    items = text_list(node, path, issues, "an extension")
    if items is None:
        return None
    exts = []
    for value, item in items:
        ext = value.strip().lstrip(".")
        if not ext or "/" in ext:
            issues.add(item, f"{path}: expected a file extension such as 'png', found {value!r}")
            return None
        exts.append(ext)
    return R.Extension(exts)


_HOST_RE = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")


def _host(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
    items = text_list(node, path, issues, "a host name")
    if items is None:
        return None
    hosts = []
    for value, item in items:
        host = value.strip().lower()
        if not _HOST_RE.fullmatch(host):
            hint = " (no port: rules see the host without it)" if re.search(r":\d+$", host) else ""
            issues.add(item, f"{path}: expected a host name such as 'www.example.com' or "
                       f"'*.example.com', found {value!r}{hint}")
            return None
        hosts.append(host)
    return R.Host(hosts)


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token


def _method(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
    items = text_list(node, path, issues, "a method")
    if items is None:
        return None
    methods = []
    for value, item in items:
        if not _TOKEN_RE.fullmatch(value):
            issues.add(item, f"{path}: expected an HTTP method such as 'GET', found {value!r}")
            return None
        if value != value.upper():
            issues.add(item, f"{path}: methods are case-sensitive; did you mean {value.upper()!r}?")
            return None
        methods.append(value)
    return R.Method(methods)


def _fields(cls: type[R.Condition], what: str) -> Callable[[Node, str, Issues, int], R.Condition | None]:
    def build(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
        entries = mapping(node, path, issues)
        if entries is None:
            return None
        if not entries:
            issues.add(node, f"{path}: expected a mapping of {what} name to regex, found an empty one")
            return None
        conds = []
        for name, (key, value) in entries.items():
            if not name or (what == "header" and not _TOKEN_RE.fullmatch(name)):
                issues.add(key, f"{path}: bad {what} name {name!r}")
                continue
            pattern = regex(value, f"{path}.{name}", issues)
            if pattern is not None:
                conds.append(cls(name, pattern))  # type: ignore[call-arg]
        if len(conds) != len(entries):
            return None
        return conds[0] if len(conds) == 1 else R.AllOf(conds, implicit=True)
    return build


def _list_of_matches(combine: Callable[[list[R.Condition]], R.Condition]) -> Callable[..., Any]:
    def build(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
        if not expect(node, SequenceNode, path, issues):
            return None
        if not node.value:
            issues.add(node, f"{path}: expected a list of at least one match, found an empty list")
            return None
        conds = [_match(item, f"{path}[{i}]", issues, depth + 1) for i, item in enumerate(node.value)]
        if any(c is None for c in conds):
            return None
        return combine(conds)  # type: ignore[arg-type]
    return build


def _not(node: Node, path: str, issues: Issues, depth: int) -> R.Condition | None:
    inner = _match(node, path, issues, depth + 1)
    return None if inner is None else R.Not(inner)


_MATCHERS: dict[str, Callable[[Node, str, Issues, int], R.Condition | None]] = {
    "path_prefix": _path_prefix, "path_regex": _path_regex, "extension": _extension,
    "host": _host, "method": _method, "header": _fields(R.Header, "header"),
    "cookie": _fields(R.Cookie, "cookie"), "query": _fields(R.Query, "query"),
    "any": _list_of_matches(R.AnyOf), "all": _list_of_matches(R.AllOf), "not": _not,
}


# ---- small sections ---------------------------------------------------------------------------------

def _timeouts(node: Node, issues: Issues) -> Timeouts:
    return record(node, issues, "timeouts", Timeouts, dict.fromkeys(Timeouts.__slots__, duration))


def _limits(node: Node, issues: Issues) -> Limits:
    def body(n: Node, path: str, iss: Issues) -> Any:
        if is_null(n) or (isinstance(n, ScalarNode) and n.value.lower() in ("none", "unlimited")):
            return _UNLIMITED
        return size(n, path, iss)

    limits = record(node, issues, "limits", Limits, {
        "max_header_bytes": size, "max_body_bytes": body,
        "max_headers": lambda n, p, i: integer(n, p, i, minimum=1),
    })
    if limits.max_body_bytes is _UNLIMITED:
        limits = Limits(limits.max_header_bytes, limits.max_headers, None)
    return limits


_UNLIMITED: Any = object()  # "none" read fine; distinct from None, which means "failed"


def _upstream(node: Node, issues: Issues) -> UpstreamSpec:
    return record(node, issues, "upstream", UpstreamSpec, {
        "max_idle": integer, "idle_timeout": lambda n, p, i: duration(n, p, i, allow_zero=True),
    })


def _splice(node: Node, issues: Issues) -> SpliceSpec:
    return record(node, issues, "splice", SpliceSpec, {
        "enabled": boolean, "threshold": lambda n, p, i: size(n, p, i, minimum=0),
    })
