"""From specs to live pools: servers, scheduler, request key and persistence assembled.

The one place that knows how the balance layer's parts fit together; the runtime calls
``build_pools`` when it starts (and, later, on each reload, handing the same ``Tables`` over so
sticky sessions survive), and ``l7switch explain`` calls ``explain_choice``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from ..http.keys import describe, key_function
from ..http.rules import RequestView
from ..spec import PoolSpec
from .persistence import build_persistence
from .pool import DEFAULT_QUEUE_TIMEOUT, ServerPool
from .schedulers import create
from .servers import Server
from .store import Tables


def build_pool(spec: PoolSpec, tables: Tables | None = None,
               clock: Callable[[], float] = time.monotonic,
               queue_timeout: float = DEFAULT_QUEUE_TIMEOUT, peers: int = 1) -> ServerPool:
    """A live pool for ``spec``. ``tables`` holds persistence tables (the switch's, kept across
    reloads); a pool built without them (``explain``, tests) gets empty ones of its own.
    ``peers``: how many worker processes schedule this pool, each on its own (Scheduler.shared)."""
    servers = [Server(s.name, s.host, s.port, s.weight, spec.name, i, s.maxconn)
               for i, s in enumerate(spec.servers)]
    n = len(servers)
    backups = [Server(s.name, s.host, s.port, s.weight, spec.name, n + i, s.maxconn, backup=True)
               for i, s in enumerate(spec.backup)]
    scheduler = create(spec.scheduler, servers, spec.scheduler_options, clock)
    scheduler.shared(peers)
    opts = scheduler.opts
    keyfn = key_function(opts["hash_key"], opts["trust_forwarded"]) if "hash_key" in opts else None
    # Backups take sessions too (a cookie naming a backup keeps it while no primary is up).
    persistence = build_persistence(spec, [*servers, *backups], tables if tables is not None else Tables())
    return ServerPool(spec, servers, scheduler, keyfn, persistence, backups, queue_timeout, clock)


def build_pools(specs: Mapping[str, PoolSpec], tables: Tables,
                queue_timeout: float = DEFAULT_QUEUE_TIMEOUT, peers: int = 1) -> dict[str, ServerPool]:
    return {name: build_pool(spec, tables, queue_timeout=queue_timeout, peers=peers)
            for name, spec in specs.items()}


def explain_choice(spec: PoolSpec, view: RequestView, client: str) -> list[str]:
    """Lines for ``l7switch explain``: what the pool's scheduler keys on for this request, which
    server it would pick first on a fresh, idle pool, and which persistence applies (a pure
    computation, no sockets; a source table is empty here, it is filled at run time)."""
    pool = build_pool(spec)
    sched = pool.scheduler
    opts = sched.opts
    key = pool.key_of(view, client)
    server = pool.pick(key)  # once: rr and wrr move on with every pick
    if pool.keyfn is None:
        lines = [f"key: none ({sched.name} does not look at the request)"]
    elif key is None:
        what = describe(opts["hash_key"], opts["trust_forwarded"])
        lines = [f"key: {what} -> absent; {sched.name} balances this request by load instead"]
    else:
        what = describe(opts["hash_key"], opts["trust_forwarded"])
        lines = [f"key: {what} -> {key!r} (hash_key: {opts['hash_key']})"]
        if server is not None:
            named = f" ({server.name})" if server.name != server.address else ""
            lines.append(f"first pick on an idle pool: {server.address}{named}")
    persist = pool.persistence
    if persist is not None:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in view.headers]
        lines.extend(persist.explain(headers, client, server))
    elif spec.persistence is not None:  # ssl_session
        lines.append(f"persistence: {spec.persistence.method} (decided on the TLS ClientHello by a "
                     "tls-passthrough listener, not per HTTP request)")
    lines.extend(eligibility(pool))
    return lines


def eligibility(pool: ServerPool) -> list[str]:
    """Which servers may take a new request now, and why the others may not (down, in
    maintenance, draining, full, backup). Reads only the pool's values: ``explain`` shows a
    freshly built pool; a running switch's pools give the live answer."""
    lines = ["servers:"]
    primary_up = any(s.available for s in pool.servers)
    for s in pool.all_servers:
        state = s.state
        checks = pool.checks.get(s)
        if state == "maint":
            why = "in maintenance: takes nothing"
        elif state == "down":
            why = "down"
            if checks is not None and checks.last is None:
                why += f" (init_state: down: up after {checks.rise} passing checks)"
            elif checks is not None:
                why += f" (back after {checks.rise} passing checks)"
        elif state == "drain":
            why = "draining: keeps its sessions, takes no new requests"
        elif s.backup and primary_up:
            why = "backup: takes requests only while no primary server is available"
        elif s.full:
            why = f"full: {s.inflight}/{s.maxconn} in flight; new requests wait in the queue"
        else:
            why = "eligible"
            if s.ramp < 1.0:
                why += f" (slow start at {s.ramp:.0%} of its weight)"
        extra = [f"weight {s.weight}"]
        if s.maxconn:
            extra.append(f"maxconn {s.maxconn}")
        lines.append(f"  {s.name} ({s.address}, {', '.join(extra)}): {why}")
    lines.extend(_availability(pool.spec))
    return lines


def _availability(spec: PoolSpec) -> list[str]:
    """One line per availability setting that is on."""
    lines = []
    healths = {s.health for s in (*spec.servers, *spec.backup) if s.health is not None}
    for h in sorted(healths, key=repr):
        what = (f"http {h.http.method} {h.http.path}" if h.http is not None else "tcp connect")
        port = f" on port {h.port}" if h.port else ""
        lines.append(f"health: {what}{port} every {h.interval:g}s (timeout {h.timeout:g}s), "
                     f"rise {h.rise}, fall {h.fall}")
    agents = {s.agent for s in (*spec.servers, *spec.backup) if s.agent is not None}
    for a in sorted(agents, key=repr):
        lines.append(f"agent: port {a.port} every {a.interval:g}s")
    p = spec.passive
    if p.observe == "off":
        lines.append("passive checks: off")
    else:
        lines.append(f"passive checks: {p.observe}, {p.error_limit} consecutive errors mark a server "
                     f"down" + ("" if healths else f" for {p.ejection:g}s (doubling up to {p.max_ejection:g}s)"))
    lines.append(f"retries: {spec.retries} (to another server, when safe; budget {spec.retry_budget:.0%})")
    if spec.slow_start:
        lines.append(f"slow start: {spec.slow_start:g}s")
    return lines

