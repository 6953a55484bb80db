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
               queue_timeout: float = DEFAULT_QUEUE_TIMEOUT) -> ServerPool:
    """A live pool for ``spec``. ``tables`` holds persistence tables (the switch's, kept across
    reloads); a pool built without them (``explain``, tests) gets empty ones of its own."""
    servers = [Server(s.name, s.host, s.port, s.weight, spec.name, i, s.maxconn)
               for i, s in enumerate(spec.servers)]
    n = len(servers)
    backups = [Server(s.name, s.host, s.port, s.weight, spec.name, n + i, s.maxconn, backup=True)
               for i, s in enumerate(spec.backup)]
    scheduler = create(spec.scheduler, servers, spec.scheduler_options, clock)
    opts = scheduler.opts
    keyfn = key_function(opts["hash_key"], opts["trust_forwarded"]) if "hash_key" in opts else None
    # Backups take sessions too (a cookie naming a backup keeps it while no primary is up).
    persistence = build_persistence(spec, [*servers, *backups], tables if tables is not None else Tables())
    return ServerPool(spec, servers, scheduler, keyfn, persistence, backups, queue_timeout, clock)


def build_pools(specs: Mapping[str, PoolSpec], tables: Tables,
                queue_timeout: float = DEFAULT_QUEUE_TIMEOUT) -> dict[str, ServerPool]:
    return {name: build_pool(spec, tables, queue_timeout=queue_timeout) for name, spec in specs.items()}


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
    return lines

