"""Rule files: reading one and checking everything in it, into the frozen ``spec.Config``.

``parse_config`` walks the composed YAML node tree (see yamlnodes.py for why not safe_load),
checks everything in one pass and raises ``ConfigError`` listing every issue with its line and
column, or returns a ``Config``. The sections have their own modules: listen.py, matches.py
(rules), persist.py (pools' persistence); pools, servers and the small sections are read here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import types
from collections.abc import Callable
from os import PathLike
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..balance.schedulers import SCHEDULERS
from ..errors import ConfigError, ConfigIssue
from ..spec import AdminSpec, Config, Limits, LogSpec, PoolSpec, ServerSpec, SpliceSpec, Timeouts, UpstreamSpec
from . import health
from . import protect
from .listen import Listen, check_pool_use, parse_listen
from .logs import parse_admin, parse_log
from .monitor import parse_metrics, parse_monitor
from .selftests import parse_tests, run_tests
from .matches import parse_rules
from .persist import check_cookie_names, parse_persistence, server_cookie
from .yamlnodes import (Issues, address, boolean, compose, did_you_mean, duration, expect, integer,
                        is_ip, is_null, kind, mapping, nonempty_text, plain_value, record, size)

TOP_KEYS = ("listen", "pools", "rules", "default_pool", "timeouts", "limits", "upstream", "splice", "log",
            "admin", "tests", "hard_stop_after", "workers", "worker_steering", "monitor", "metrics")
POOL_KEYS = ("scheduler", "scheduler_options", "servers", "persistence", *health.POOL_KEYS)
SERVER_KEYS = ("address", "weight", "name", "cookie", "resolve", *health.SERVER_KEYS)
# When a server's host name must resolve: at check time (as HAProxy and nginx refuse to start on
# "host not found in upstream"), or only where and when the switch connects.
RESOLVE_MODES = ("now", "later")
DEFAULT_SCHEDULER = "rr"  # HAProxy's default "balance roundrobin" (ipvsadm's default is wlc)


def resolve_host(host: str, port: int) -> None:
    """Raise OSError (socket.gaierror) if ``host`` does not resolve; a module-level function so
    tests can put a fake in its place and stay off the network."""
    socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Resolved:
    """Host names looked up once per (host, port) in a file, however many servers name them."""

    __slots__ = ("results",)

    def __init__(self) -> None:
        self.results: dict[tuple[str, int], str | None] = {}  # None: resolves; else why not

    def problem(self, host: str, port: int) -> str | None:
        key = (host.lower(), port)
        if key not in self.results:
            try:
                resolve_host(host, port)
            except OSError as e:
                self.results[key] = e.strerror or str(e) or type(e).__name__
            except UnicodeError as e:  # an IDNA label too long or otherwise unencodable
                self.results[key] = f"not a valid host name: {e}"
            else:
                self.results[key] = None
        return self.results[key]


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

    listen = parse_listen(top["listen"][1], issues, filename) if "listen" in top else Listen(http=True)
    resolved = Resolved()
    pools, pool_names = section("pools", lambda n, i: _pools(n, i, resolved), ({}, []))
    if "pools" in top:
        pnode = top["pools"][1]
        if is_null(pnode) or (isinstance(pnode, MappingNode) and not pnode.value):
            issues.add(pnode, "pools: expected at least one pool")
    rule_list = section("rules", lambda n, i: parse_rules(n, i, pool_names), ())
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
    log_spec = section("log", lambda n, i: parse_log(n, i, filename), LogSpec())
    admin = section("admin", lambda n, i: parse_admin(n, i, filename), AdminSpec())
    tests = section("tests", parse_tests, ())
    monitor = section("monitor", lambda n, i: parse_monitor(n, i, filename), None)
    metrics = section("metrics", lambda n, i: parse_metrics(n, i, filename), None)
    hard_stop_after = section("hard_stop_after", lambda n, i: duration(n, "hard_stop_after", i), 30.0)
    workers = section("workers", _workers, 1)
    steering = section("worker_steering", _steering, "address")
    if not issues and default_pool:
        # Only a file that is otherwise sound routes anything: its own tests run last.
        run_tests(tests, rule_list, default_pool, list(pools), issues)
    if issues:
        raise ConfigError(issues.sorted())
    return Config(
        path=filename, listeners=tuple(listen.specs), pools=types.MappingProxyType(pools),
        rules=rule_list, default_pool=default_pool, timeouts=timeouts,
        limits=limits, upstream=upstream, splice=splice, log=log_spec,
        admin=admin, tests=tests, monitor=monitor, metrics=metrics, hard_stop_after=hard_stop_after, workers=workers,
        worker_steering=steering,
    )


def _pools(node: Node, issues: Issues, resolved: Resolved) -> tuple[dict[str, PoolSpec], list[str]]:
    """The valid pools, and the names of all pools written (so rules naming a pool that has its
    own error are not also reported as unknown)."""
    entries = mapping(node, "pools", issues)
    if entries is None:
        return {}, []
    pools: dict[str, PoolSpec] = {}
    for name, (key, value) in entries.items():
        spec = _pool(name, key, value, issues, resolved)
        if spec is not None:
            pools[name] = spec
    check_cookie_names(pools, entries, issues)
    return pools, list(entries)


def _pool(name: str, key: Node, node: Node, issues: Issues, resolved: Resolved) -> PoolSpec | None:
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
    defaults = health.Defaults(m, path, issues)
    seen = _Seen(name, defaults, resolved)
    servers: list[ServerSpec] = []
    if "servers" in m:
        servers = _servers(m["servers"][1], f"{path}.servers", seen, issues)
    backup: list[ServerSpec] = []
    if "backup" in m and not is_null(m["backup"][1]):  # absent, empty or [] alike: no backup
        seen.backup = True
        backup = _servers(m["backup"][1], f"{path}.backup", seen, issues)
    settings = health.pool_settings(m, path, issues)
    if cls is not None and len(issues) == n_before:
        # Checks across options and the pool size (t_low < t_high, a Maglev table size > 100·N).
        full = {oname: opt.default for oname, opt in cls.options.items()} | options
        where = onode[0] if onode is not None else m["scheduler"][0] if "scheduler" in m else key
        for problem in cls.check(full, len(servers)):
            issues.add(where, f"{path}.scheduler_options: {problem}")
    persistence = None
    if "persistence" in m:  # after the servers: cookie ids are checked against them
        persistence = parse_persistence(m["persistence"][1], f"{path}.persistence", name,
                                        servers + backup, issues)
    if len(issues) != n_before:
        return None
    return PoolSpec(name, scheduler, tuple(servers), types.MappingProxyType(options), persistence,
                    backup=tuple(backup), **settings)


class _Seen:
    """What a pool's server lists share: names, addresses and cookie values are unique across the
    primaries and the backups together, and each entry's own keys merge over ``defaults``."""

    def __init__(self, pool: str, defaults: health.Defaults, resolved: Resolved) -> None:
        self.pool, self.defaults, self.resolved = pool, defaults, resolved
        self.backup = False  # reading the backup: list
        self.names: dict[str, tuple[int, bool]] = {}  # name -> (line, is a backup)
        self.addresses: dict[tuple[str, int], tuple[int, bool]] = {}  # (canonical host, port) -> same
        self.cookies: dict[str, int] = {}  # explicit persistence cookie values -> line

    def clash(self, kind: str, value: str, first: tuple[int, bool]) -> str:
        """Why a server's address or name, met before at ``first``, is refused here. A backup that
        is also a primary would serve twice, once as either; the plain duplicate is the mistake
        HAProxy refuses as one server name twice in a backend."""
        if self.backup and not first[1]:
            shown = value if kind == "address" else f"name {value!r}"
            return f"backup server {shown} is also a primary server of pool {self.pool!r} (line {first[0]})"
        return f"duplicate server {kind} {value!r} in pool {self.pool!r} (first at line {first[0]})"


def _servers(node: Node, path: str, seen: _Seen, issues: Issues) -> list[ServerSpec]:
    pool, resolved, addresses, names = seen.pool, seen.resolved, seen.addresses, seen.names
    if not seen.backup and (is_null(node) or (isinstance(node, SequenceNode) and not node.value)):
        issues.add(node, f"{path}: pool {pool!r} has no servers; expected at least one host:port")
        return []
    if not expect(node, SequenceNode, path, issues):
        return []
    out: list[ServerSpec] = []
    for i, item in enumerate(node.value):
        ipath = f"{path}[{i}]"
        weight: int | None = 1
        name: str | None = None
        name_node: Node = item
        cookie: str | None = None
        later = False
        over = health.Overrides()
        addr_node: Node
        if isinstance(item, ScalarNode):  # short form: "host:port"
            addr_node, apath = item, ipath
        else:
            m = mapping(item, ipath, issues, SERVER_KEYS, required=("address",))
            if m is None or "address" not in m:
                continue
            addr_node, apath = m["address"][1], f"{ipath}.address"
            over = health.read_overrides(m, ipath, issues)
            if "weight" in m:
                weight = integer(m["weight"][1], f"{ipath}.weight", issues, minimum=0)
            if "name" in m:
                name_node = m["name"][1]
                name = nonempty_text(name_node, f"{ipath}.name", issues, "a server name")
                if name is None:
                    continue
            if "cookie" in m:
                cookie = server_cookie(m["cookie"][1], f"{ipath}.cookie", issues, seen.cookies)
                if cookie is None:
                    continue
            if "resolve" in m:
                rnode = m["resolve"][1]
                mode = nonempty_text(rnode, f"{ipath}.resolve", issues, "now or later")
                if mode is None:
                    continue
                if mode not in RESOLVE_MODES:
                    issues.add(rnode, f"{ipath}.resolve: expected now or later, found {mode!r}"
                               f"{did_you_mean(mode, RESOLVE_MODES)}")
                    continue
                later = mode == "later"
        addr = address(addr_node, apath, issues)
        if addr is None or weight is None:
            continue
        # One address twice doubles its share silently and splits its persistence between two
        # names: the mistake HAProxy refuses as one server name twice in a backend.
        where = _canonical(*addr)
        if where in addresses:
            issues.add(addr_node, f"{ipath}: "
                       f"{seen.clash('address', addr_node.value.strip(), addresses[where])}")
            continue
        addresses[where] = (addr_node.start_mark.line + 1, seen.backup)
        if not later and not is_ip(addr[0]):
            problem = resolved.problem(*addr)
            if problem is not None:
                fix = ("add 'resolve: later'" if addr_node is not item else
                       f"write {{address: {addr_node.value.strip()}, resolve: later}}")
                issues.add(addr_node, f"{apath}: host {addr[0]!r} does not resolve ({problem}); fix "
                           f"the name, or {fix} if it resolves only where the switch runs")
        name = name if name is not None else addr_node.value.strip()
        if name in names:
            issues.add(name_node, f"{ipath}: {seen.clash('name', name, names[name])}")
            continue
        names[name] = (name_node.start_mark.line + 1, seen.backup)
        spec = seen.defaults.apply(ServerSpec(name, addr[0], addr[1], weight, cookie, later,
                                              backup=seen.backup), over, item, ipath, issues)
        if spec is not None:
            out.append(spec)
    return out


def _canonical(host: str, port: int) -> tuple[str, int]:
    """The key under which two spellings of one address compare equal: host names are
    case-insensitive (RFC 4343), and an IPv6 literal has many spellings ('::1', '0:0::1')."""
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host.lower().rstrip("."), port


# ---- small sections ---------------------------------------------------------------------------------

def _timeouts(node: Node, issues: Issues) -> Timeouts:
    return record(node, issues, "timeouts", Timeouts, dict.fromkeys(Timeouts.__slots__, duration))


def _limits(node: Node, issues: Issues) -> Limits:
    def body(n: Node, path: str, iss: Issues) -> Any:
        if is_null(n) or (isinstance(n, ScalarNode) and n.value.lower() in ("none", "unlimited")):
            return _UNLIMITED
        return size(n, path, iss)

    limits = record(node, issues, "limits", Limits, {
        "max_header_bytes": size, "max_body_bytes": body, "max_response_header_bytes": size,
        "max_headers": lambda n, p, i: integer(n, p, i, minimum=1),
        "max_connections": protect.max_connections, "per_client": protect.per_client,
        "min_body_rate": protect.min_body_rate, "buffer_body": protect.buffer_body,
    })
    if limits.max_body_bytes is _UNLIMITED:
        limits = dataclasses.replace(limits, max_body_bytes=None)
    if limits.max_connections is protect.AUTO:
        limits = dataclasses.replace(limits, max_connections=None)
    if limits.per_client is protect.OFF:
        limits = dataclasses.replace(limits, per_client=None)
    return limits


_UNLIMITED: Any = object()  # "none" read fine; distinct from None, which means "failed"


def _workers(node: Node, issues: Issues) -> int:
    """``workers: N`` (1..256) or ``auto`` (0: one per CPU)."""
    if isinstance(node, ScalarNode) and node.value.strip().lower() == "auto":
        return 0
    n = integer(node, "workers", issues, minimum=1)
    if n is not None and n > 256:
        issues.add(node, f"workers: at most 256, found {n}")
    return n or 1


def _steering(node: Node, issues: Issues) -> str:
    value = (nonempty_text(node, "worker_steering", issues, "address or connection") or "").strip().lower()
    if value and value not in ("address", "connection"):
        issues.add(node, f"worker_steering: expected address or connection, found {value!r}"
                   f"{did_you_mean(value, ('address', 'connection'))}")
    return value or "address"


def _upstream(node: Node, issues: Issues) -> UpstreamSpec:
    return record(node, issues, "upstream", UpstreamSpec, {
        "max_idle": integer, "idle_timeout": lambda n, p, i: duration(n, p, i, allow_zero=True),
    })


def _splice(node: Node, issues: Issues) -> SpliceSpec:
    return record(node, issues, "splice", SpliceSpec, {
        "enabled": boolean, "threshold": lambda n, p, i: size(n, p, i, minimum=0),
    })
