"""A server pool: a named group of real servers, the scheduler that picks among them, and the
pool's persistence.

"ServerPool" is a group of real servers chosen by rules; "ConnectionPool" (proxy/upstream.py)
is the set of reusable TCP connections to *one* server. The two names stay distinct everywhere.

Nothing here does I/O: the proxy calls ``begin``/``end`` around each request and health checks
call ``mark_up``/``mark_down``; the pool forwards those events to its scheduler's hooks
(HAProxy's ``lbprm.server_take_conn`` / ``set_server_status_up``). build.py assembles pools from
their specs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..http.keys import KeyFunction
from ..http.rules import RequestView
from ..spec import PoolSpec
from .persistence import Persistence
from .schedulers.base import Scheduler, least_loaded
from .servers import Server


class ServerPool:
    """A named group of real servers plus the scheduler that picks among them."""

    __slots__ = ("name", "servers", "scheduler", "spec", "created", "keyfn", "persistence",
                 "hello_persistence", "_on_start", "_on_end")

    def __init__(self, spec: PoolSpec, servers: Sequence[Server], scheduler: Scheduler,
                 keyfn: KeyFunction | None = None, persistence: Persistence | None = None) -> None:
        self.name = spec.name
        self.spec = spec
        self.servers = list(servers)
        self.scheduler = scheduler
        #: Computes the request key when the scheduler uses one (None: the request is not looked at).
        self.keyfn = keyfn
        #: Asked before the scheduler for each HTTP request when set (persistence.py: cookie or
        #: source); None costs nothing per request.
        self.persistence: Persistence | None = (
            persistence if persistence is not None and persistence.http else None)
        #: Asked on a tls-passthrough connection's ClientHello (ssl_session or source).
        self.hello_persistence: Persistence | None = (
            persistence if persistence is not None and persistence.tls_hello else None)
        self.created = time.monotonic()
        # The take/drop hooks run for every request; most schedulers leave them as the base's
        # no-ops, and then they are not called at all (HAProxy's lbprm callbacks "may be NULL").
        cls = type(scheduler)
        self._on_start = scheduler.on_start if cls.on_start is not Scheduler.on_start else None
        self._on_end = scheduler.on_end if cls.on_end is not Scheduler.on_end else None

    def key_of(self, view: RequestView, client: str) -> str | None:
        """The key this pool's scheduler picks on, for a request from ``client``."""
        keyfn = self.keyfn
        return keyfn(view, client) if keyfn is not None else None

    def pick(self, key: str | None = None, exclude: Server | None = None) -> Server | None:
        """The scheduler's choice for ``key``, or None when no server is available.

        ``exclude`` is a server that just refused a connection: hashing schedulers would name it
        again, so that one request is balanced by load instead (HAProxy's ``option redispatch``).
        """
        server = self.scheduler.pick(key)
        if server is not None and server is exclude:
            server = least_loaded(self.servers, exclude)
        return server

    def begin(self, server: Server) -> None:
        server.inflight += 1
        server.total += 1
        if self._on_start is not None:
            self._on_start(server)

    def end(self, server: Server) -> None:
        server.inflight -= 1
        if self._on_end is not None:
            self._on_end(server)

    def mark_down(self, server: Server) -> None:
        if server.up:
            server.up = False
            self.scheduler.on_down(server)

    def mark_up(self, server: Server) -> None:
        if not server.up:
            server.up = True
            self.scheduler.on_up(server)

    def set_weight(self, server: Server, weight: int) -> None:
        """Runtime weight change (0 quiesces: no new requests, in-flight ones finish)."""
        if weight != server.weight:
            server.weight = weight
            self.scheduler.on_weight(server)

    def snapshot(self) -> dict[str, Any]:
        persist = self.persistence or self.hello_persistence
        return {
            "name": self.name, "scheduler": self.scheduler.snapshot(),
            "servers": [s.snapshot() for s in self.servers],
            "persistence": persist.snapshot() if persist is not None else None,
        }

    def __repr__(self) -> str:
        up = sum(1 for s in self.servers if s.available)
        inflight = sum(s.inflight for s in self.servers)
        return (f"<ServerPool {self.name} {self.scheduler.name} [{up}/{len(self.servers)} available, "
                f"{inflight} in flight]>")


