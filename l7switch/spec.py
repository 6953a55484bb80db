"""The frozen objects a rule file becomes: what every other layer of l7switch is built from.

A leaf module: it imports nothing of ours. ``config/`` writes these (after checking everything,
with positions); ``http/rules.py`` compiles the match trees, ``balance/build.py`` turns pool specs
into live pools, and the runtime serves the listeners. Nothing here changes after loading: a reload
builds a new ``Config`` and compares it with the old one, which is why every value is plain,
hashable data that compares by value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Upgrade tokens a listener turns into tunnels unless told otherwise (RFC 9110 §7.8; the
# allow-list approach of Envoy's upgrade_configs). h2c is never tunnelled: see http/message.py.
DEFAULT_UPGRADES: tuple[str, ...] = ("websocket",)


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
    upgrades: tuple[str, ...] = DEFAULT_UPGRADES  # http: Upgrade tokens that may become tunnels

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HttpCheckSpec:
    """``health.http``: what an HTTP check sends and what counts as a pass (HAProxy ``option
    httpchk`` + ``http-check expect``)."""
    path: str = "/"
    method: str = "GET"
    host: str | None = None  # Host header; None: the server's address
    expect: tuple[tuple[int, int], ...] = ((200, 399),)  # status ranges, inclusive (HAProxy: 2xx/3xx pass)
    body: str | None = None  # a substring the start of the body must contain


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """Active checks (``health:``); the defaults are HAProxy's ``check``: inter 2s, rise 2, fall 3."""
    http: HttpCheckSpec | None = None  # None: a TCP connect check
    interval: float = 2.0
    timeout: float = 1.0  # must be below interval (a check never overlaps the next one)
    rise: int = 2  # consecutive passes for a down server to go up
    fall: int = 3  # consecutive failures for an up server to go down
    port: int | None = None  # check another port of the server's host


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """``agent:``: a line-based feedback agent on the server's host (HAProxy agent-check, LVS
    feedbackd)."""
    port: int
    interval: float = 5.0
    timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class PassiveSpec:
    """Passive checks from real traffic (HAProxy ``observe`` + ``error-limit`` + ``on-error
    mark-down``; Envoy outlier detection's base ejection time and its cap)."""
    observe: str = "layer4"  # off | layer4 (connect, reset, timeout) | layer7 (+ 5xx answers)
    error_limit: int = 5  # consecutive failures that mark a server down (Envoy consecutive_5xx: 5)
    ejection: float = 30.0  # without active checks: back after this, doubled on each repeat (Envoy 30s)
    max_ejection: float = 300.0  # Envoy max_ejection_time 300s


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """Requests waiting for a server below its ``maxconn`` (HAProxy ``timeout queue``, ``maxqueue``)."""
    timeout: float | None = None  # None: timeouts.queue
    max: int = 10_000


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    host: str  # IPv6 without brackets; a host name is resolved by the checker unless resolve_later
    port: int
    weight: int = 1  # ipvsadm's default weight; 0 = quiesced (drain, no new requests)
    cookie: str | None = None  # explicit persistence cookie value (HAProxy "server ... cookie X")
    resolve_later: bool = False  # `resolve: later`: the name may not resolve at check time
    # The pool's settings with this server's overrides applied, resolved by the checker:
    health: HealthSpec | None = None  # active checks; None: none
    agent: AgentSpec | None = None
    maxconn: int = 0  # requests in flight at most; 0: no limit
    init_down: bool = False  # `init_state: down`: starts down until `rise` checks pass
    backup: bool = False  # in the pool's `backup:` list: serves only while no primary is up

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
    backup: tuple[ServerSpec, ...] = ()  # LVS's sorry server, HAProxy's `backup`
    passive: PassiveSpec = field(default_factory=PassiveSpec)
    slow_start: float = 0.0  # seconds to ramp a returning server's weight; 0: off (HAProxy slowstart)
    retries: int = 2  # re-sends to another server after a failure, when safe
    retry_budget: float = 0.2  # retries in flight at most this share of requests (Envoy budget_percent 20%)
    queue: QueueSpec = field(default_factory=QueueSpec)


@dataclass(frozen=True, slots=True)
class MatchSpec:
    """One node of a rule's ``match`` tree, as written; http/rules.py compiles it into a test.

    ``kind`` is a match key (path_prefix, path_regex, extension, host, method, header, cookie,
    query) or a composition (all, any, not), or "always" for a rule without conditions.
    """
    kind: str
    values: tuple[str, ...] = ()  # path_prefix: (prefix,); extension, host, method: the list
    name: str = ""  # header, cookie, query: the field's name as written
    pattern: re.Pattern[str] | None = None  # path_regex, header, cookie, query
    children: tuple[MatchSpec, ...] = ()  # all, any; not has exactly one
    implicit: bool = False  # all: the several keys of one match mapping, not an explicit `all:`


ALWAYS = MatchSpec("always")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    name: str | None
    index: int  # 0-based position in the rule list
    pool: str
    line: int  # 1-based line of the rule in its file (0 if built in code)
    match: MatchSpec = ALWAYS


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Each is the longest a party may stay silent (HAProxy's timeout semantics), except
    ``header``, which is a total deadline for a request head (HAProxy ``timeout http-request``)."""
    connect: float = 5.0  # Envoy cluster connect_timeout default 5s (nginx proxy_connect_timeout: 60s)
    server: float = 60.0  # silence from a server that owes us bytes; nginx proxy_read_timeout 60s
    client: float = 60.0  # silence from a client sending a body or not reading; nginx client_body_timeout 60s
    header: float = 10.0  # a request head, from accept (or from the previous response) to its end:
    # HAProxy "timeout http-request", commonly set to 10s against slowloris
    keepalive: float = 5.0  # idle between requests; HAProxy "timeout http-keep-alive", Apache KeepAliveTimeout 5s
    queue: float = 5.0  # a request waiting for a server slot; HAProxy "timeout queue" defaults to connect
    tunnel: float = 3600.0  # idle Upgrade and passthrough tunnels; HAProxy's documented "timeout tunnel 1h"


@dataclass(frozen=True, slots=True)
class PerClientSpec:
    """``limits.per_client``: LVS's DoS defences / HAProxy stick-table rules, keyed by the
    client's address prefix. 0 means no limit of that kind."""
    connections: int = 0  # open connections per client; over it the new one is closed at once
    requests_per_second: float = 0.0  # token bucket rate; over it: 429 with Retry-After
    burst: int = 0  # bucket size; 0: the rate rounded up (one second's worth)
    netmask: int = 32  # IPv4 prefix length of the key (as source persistence)
    netmask6: int = 64  # IPv6 prefix length (one subscriber's /64)
    max_entries: int = 100_000  # LRU-bounded table: a spoofed flood cannot grow memory
    trusted: tuple[str, ...] = ()  # networks exempt (none by default, not even loopback)


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 32768  # Kestrel MaxRequestHeadersTotalSize 32 KB
    max_headers: int = 100  # Envoy max_headers_count 100 (Kestrel MaxRequestHeaderCount 100)
    max_body_bytes: int | None = None  # unlimited, as HAProxy and Envoy (nginx client_max_body_size: 1m)
    # A server's response head; Envoy's max_response_headers_kb defaults to 60 KiB.
    max_response_header_bytes: int = 65536
    # Client connections per process; None: derived from the fd limit at start (HAProxy derives
    # maxconn from ulimit-n the same way), leaving room for server connections and pipes.
    max_connections: int | None = None
    per_client: PerClientSpec | None = None
    # A request body slower than this (bytes/s over a sliding window, after a grace period) gets
    # 408; Apache mod_reqtimeout's default MinRate=500. 0: off.
    min_body_rate: int = 500
    # Bytes of a request body read before a server is chosen and connected (the whole body when
    # it is smaller), so a slow upload holds no server connection, pipe or fd on the server's side:
    # HAProxy's "option http-buffer-request", nginx's proxy_request_buffering (on by default).
    # At most 64 KiB (net/flow.HIGH_WATER, where reading pauses); 0: off.
    buffer_body: int = 65536


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    max_idle: int = 64  # per server; our choice, above nginx's documented "keepalive 16" example
    idle_timeout: float = 60.0  # nginx keepalive_timeout 60s (upstream, since 1.15.3)


@dataclass(frozen=True, slots=True)
class SpliceSpec:
    enabled: bool = True  # used only where os.splice exists (Linux); cf. HAProxy "option splice-auto"
    threshold: int = 65536  # one pipe buffer: Linux's default pipe capacity is 64 KiB


@dataclass(frozen=True, slots=True)
class LogSpec:
    # Where access lines go: "stdout", "stderr", a file path (absolute, resolved against the
    # rule file's directory), or None: off (the default, as HAProxy without a "log" line).
    access: str | None = None
    format: str = "combined"  # Apache/nginx "combined", or "json" (one object a line)
    # The request id (the access log's, the error pages') goes to servers under this header when
    # the request has none (nginx's $request_id, HAProxy's unique-id-header); "" : not sent.
    request_id_header: str = "X-Request-ID"


@dataclass(frozen=True, slots=True)
class RouteTest:
    """One of the rule file's ``tests``: a request and where it must go (config/selftests.py)."""

    number: int  # 1-based, as reported
    line: int
    column: int
    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    pool: str
    rule: str | None


@dataclass(frozen=True, slots=True)
class AdminSpec:
    # The Unix socket ``l7switch ctl`` talks to. None: the default path (runtime/admin.py
    # default_socket) when started by ``l7switch run``; "" (``admin: off``): no socket.
    socket: str | None = None
    mode: int = 0o600  # owner only: whoever can write to it can drain every server


@dataclass(frozen=True, slots=True)
class MonitorSpec:
    """The browser monitor (l7switch/monitor/): its own listener, behind TLS and a login."""
    host: str
    port: int
    users: str  # the file of user:role:hash lines (``l7switch passwd``), resolved
    tls: TLSSpec | None = None  # required unless ``insecure``
    insecure: bool = False  # plain HTTP, said out loud (a test bench on loopback)
    # How long a login lasts without use; HAProxy's stats page has no sessions at all, Grafana
    # keeps one 7 days: a working day is a middle.
    session_timeout: float = 8 * 3600.0


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    """Prometheus ``/metrics`` on its own listener, no auth: bind it where only scrapers reach."""
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    listeners: tuple[ListenerSpec, ...]
    pools: Mapping[str, PoolSpec]
    rules: tuple[RuleSpec, ...]
    default_pool: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    upstream: UpstreamSpec = field(default_factory=UpstreamSpec)
    splice: SpliceSpec = field(default_factory=SpliceSpec)
    log: LogSpec = field(default_factory=LogSpec)
    admin: AdminSpec = field(default_factory=AdminSpec)
    tests: tuple[RouteTest, ...] = ()
    monitor: MonitorSpec | None = None
    metrics: MetricsSpec | None = None
    # How long requests and tunnels of a configuration a reload replaced (or of a stopping
    # switch) may go on before their connections are cut: HAProxy's hard-stop-after, which has
    # no default there; 30 s is Kubernetes' default termination grace period.
    hard_stop_after: float = 30.0
    # Worker processes (runtime/workers.py): 1 serves in one process; 0 is ``auto``: one per CPU
    # (nginx's worker_processes auto).
    workers: int = 1
    # How connections are spread over workers: "address" (the client's address picks the
    # worker: persistence and per-client state hold without sharing) or "connection" (the
    # kernel's hash of the whole 4-tuple: few client addresses still use every worker, but a
    # client's connections may meet different workers' tables).
    worker_steering: str = "address"
