"""A server pool: a named group of real servers, the scheduler that picks among them, the pool's
persistence, its backup servers, its request queue, and what checks have found about its servers.

"ServerPool" is a group of real servers chosen by rules; "ConnectionPool" (proxy/upstream.py)
is the set of reusable TCP connections to *one* server. The two names stay distinct everywhere.

Nothing here does I/O: the proxy calls ``begin``/``end`` around each request and ``failed`` /
``ok`` with what traffic showed (passive checks); the checkers (checks/) hand in probe results
(``check_result``, ``agent_result``); the runtime calls ``tick`` about once a second (ejections
that end, slow start's ramp). Every state change goes through ``_apply``, which tells the
scheduler (HAProxy's ``lbprm`` callbacks ``set_server_status_up/down``, ``update_server_eweight``)
and logs one line. build.py assembles pools from their specs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Final

from ..http.keys import KeyFunction
from ..http.rules import RequestView
from ..spec import PoolSpec
from .health import AgentReply, CheckResult, CheckState, Ejections, transition_line
from .persistence import Persistence
from .queue import RequestQueue
from .schedulers.base import Scheduler, least_loaded
from ..stats import Traffic
from .servers import DOWN, Server

log = logging.getLogger("l7switch")

#: Slow start's first share of the weight: "near 0" without being 0 (HAProxy's ramp starts at
#: its smallest eweight step, 1/BE_WEIGHT_SCALE of a unit).
MIN_RAMP: Final = 0.05
#: HAProxy ``observe layer7`` counts 5xx as errors except these (not the server's health).
NOT_LAYER7_ERRORS: Final = (501, 505)
#: Default queue timeout when a pool is built without one (Timeouts.queue's default).
DEFAULT_QUEUE_TIMEOUT: Final = 5.0


class ServerPool:
    """A named group of real servers plus the scheduler that picks among them."""

    __slots__ = ("name", "servers", "backups", "scheduler", "spec", "created", "keyfn", "persistence",
                 "hello_persistence", "_on_start", "_on_end", "queue", "checks", "agents",
                 "_agent_down", "_ejections", "_ramping", "_in_turn", "error_limit", "observe_l7",
                 "retrying", "retries", "clock", "unserved")

    def __init__(self, spec: PoolSpec, servers: Sequence[Server], scheduler: Scheduler,
                 keyfn: KeyFunction | None = None, persistence: Persistence | None = None,
                 backups: Sequence[Server] = (), queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
                 clock: Any = time.monotonic) -> None:
        self.name = spec.name
        self.spec = spec
        self.servers = list(servers)  # the primaries: the scheduler picks among them
        self.backups = list(backups)  # used only while no primary is available
        self.scheduler = scheduler
        self.clock = clock
        #: Computes the request key when the scheduler uses one (None: the request is not looked at).
        self.keyfn = keyfn
        #: Asked before the scheduler for each HTTP request when set (persistence.py: cookie or
        #: source); None costs nothing per request.
        self.persistence: Persistence | None = (
            persistence if persistence is not None and persistence.http else None)
        #: Asked on a tls-passthrough connection's ClientHello (ssl_session or source).
        self.hello_persistence: Persistence | None = (
            persistence if persistence is not None and persistence.tls_hello else None)
        self.created = clock()  # (the clock transitions are timed with)
        # The take/drop hooks run for every request; most schedulers leave them as the base's
        # no-ops, and then they are not called at all (HAProxy's lbprm callbacks "may be NULL").
        cls = type(scheduler)
        self._on_start = scheduler.on_start if cls.on_start is not Scheduler.on_start else None
        self._on_end = scheduler.on_end if cls.on_end is not Scheduler.on_end else None
        # Slow start gates rr and wrr by turns (they have no notion of load to scale).
        self._in_turn = scheduler.name in ("rr", "wrr")
        qspec = spec.queue
        self.queue = RequestQueue(spec.name, qspec.max,
                                  qspec.timeout if qspec.timeout is not None else queue_timeout)
        passive = spec.passive
        self.error_limit = passive.error_limit if passive.observe != "off" else 0
        self.observe_l7 = passive.observe == "layer7"
        self.retrying = 0  # requests of this pool being retried now (the retry budget counts them)
        self.retries = 0  # retries ever
        #: Requests of this pool that ended with no server (503: none available; queue timeouts).
        self.unserved = Traffic()
        # What checks found, per server (only for servers that have that kind of check).
        self.checks: dict[Server, CheckState] = {}
        self.agents: dict[Server, CheckResult] = {}  # the last agent exchange
        self._agent_down: set[Server] = set()
        self._ejections: dict[Server, Ejections] = {}
        self._ramping: dict[Server, float] = {}  # server -> when its slow start began
        specs = {s.name: s for s in (*spec.servers, *spec.backup)}
        for server in self.all_servers:
            sspec = specs.get(server.name)
            if sspec is None:
                continue
            if sspec.health is not None:
                self.checks[server] = CheckState(sspec.health)
            if sspec.init_down:
                # `init_state: down`: the first `rise` passes (or the agent's "up") bring it in.
                if server in self.checks:
                    self.checks[server].healthy = False
                elif sspec.agent is not None:
                    self._agent_down.add(server)
                server.healthy = False
                server.refresh()

    @property
    def all_servers(self) -> list[Server]:
        return [*self.servers, *self.backups]

    # ---- choosing --------------------------------------------------------------------------------
    def key_of(self, view: RequestView, client: str) -> str | None:
        """The key this pool's scheduler picks on, for a request from ``client``."""
        keyfn = self.keyfn
        return keyfn(view, client) if keyfn is not None else None

    def pick(self, key: str | None = None, exclude: Server | None = None) -> Server | None:
        """The scheduler's choice for ``key``, a backup when no primary is available, or None.

        ``exclude`` is a server that just failed this request: hashing schedulers would name it
        again, so that one request is balanced by load instead (HAProxy's ``option redispatch``).
        """
        server = self.scheduler.pick(key)
        if server is not None:
            if server is exclude:
                server = least_loaded(self.servers, exclude)
            elif server.ramp < 1.0 and self._in_turn:
                server = self._slow_turn(server, key)
        if server is None and self.backups:
            server = least_loaded(self.backups, exclude)
        return server

    def _slow_turn(self, server: Server, key: str | None) -> Server:
        """rr/wrr during slow start: a ramping server takes its turn only ``ramp`` of the time
        (turns earn credit; a whole credit is a request), others take the skipped turns."""
        for _ in range(len(self.servers)):
            if server.ramp >= 1.0:
                return server
            server.credit += server.ramp
            if server.credit >= 1.0:
                server.credit -= 1.0
                return server
            nxt = self.scheduler.pick(key)
            if nxt is None:
                break
            server = nxt
        return server

    def with_room(self, exclude: Server | None = None) -> Server | None:
        """The least loaded available server below its maxconn (primaries, else backups)."""
        server = least_loaded(self.servers, exclude, room=True)
        if server is None and self.backups and not any(s.available for s in self.servers):
            server = least_loaded(self.backups, exclude, room=True)
        return server

    def retry_allowed(self) -> bool:
        """Envoy's retry budget: retries in flight at most ``retry_budget`` of the requests in
        flight, with a floor of 3 (``min_retry_concurrency``) so a quiet pool may still retry."""
        inflight = sum(s.inflight for s in self.servers) + sum(s.inflight for s in self.backups)
        return self.retrying < max(3, int(inflight * self.spec.retry_budget))

    # ---- traffic ---------------------------------------------------------------------------------
    def begin(self, server: Server) -> None:
        server.inflight += 1
        server.total += 1
        if self._on_start is not None:
            self._on_start(server)

    def end(self, server: Server) -> None:
        server.inflight -= 1
        if self._on_end is not None:
            self._on_end(server)
        if self.queue.count:
            self._serve_queue(server)

    def _serve_queue(self, server: Server) -> None:
        """Hand ``server``'s free slots to the oldest waiting requests it may take."""
        queue = self.queue
        # A backup takes requests from the pool's queue only while no primary could.
        any_server = server.available and (not server.backup or not any(s.available for s in self.servers))
        while queue.count and server.up and not server.full:
            ticket = queue.next_for(server, any_server)
            if ticket is None:
                return
            ticket.waiter.dequeued(server)  # which begins it on the server

    def serve_queues(self) -> None:
        for server in self.all_servers:
            if not self.queue.count:
                return
            self._serve_queue(server)

    def failed(self, server: Server, detail: str) -> None:
        """A failure seen in traffic (passive checks): ``error_limit`` in a row mark it down."""
        if not self.error_limit or not server.healthy:
            # Already down: failures of requests that were in flight when it went down say
            # nothing new, and must not count against it once it is back.
            return
        server.errors += 1
        if server.errors < self.error_limit:
            return
        now = self.clock()
        count, server.errors = server.errors, 0
        ej = self._ejections.get(server)
        if ej is None:
            ej = self._ejections[server] = Ejections()
        check = self.checks.get(server)
        seconds = ej.eject(self.spec.passive, now, timed=check is None)
        if check is not None:
            check.healthy = False  # back through `rise` passing checks
            check.reset()
            back = f"back after {check.rise} passing checks"
        else:
            back = f"ejected for {seconds:g}s (no active check)"
        self._apply(server, f"{count} consecutive errors in traffic, last: {detail}; {back}", now)

    def answered(self, server: Server, status: int) -> None:
        """A response head arrived (the proxy calls this only when it matters: layer 7
        observation, or a failure count to reset)."""
        if self.observe_l7 and status >= 500 and status not in NOT_LAYER7_ERRORS:
            self.failed(server, f"status {status}")
        else:
            server.errors = 0

    # ---- what checks found -------------------------------------------------------------------------
    def check_result(self, server: Server, result: CheckResult) -> None:
        """An active check's outcome (from this process's checker, or from a master's)."""
        check = self.checks.get(server)
        if check is None:
            return
        new = check.record(result, check.healthy)
        if new is None:
            return
        check.healthy = new
        if new:
            ej = self._ejections.get(server)
            if ej is not None:
                ej.until, ej.back_at = 0.0, result.at
            why = f"{result.detail} ({check.rise} passing checks)"
        else:
            why = f"{result.detail} ({check.fall} failed checks)"
        self._apply(server, why, result.at)

    def agent_result(self, server: Server, reply: AgentReply | None, result: CheckResult) -> None:
        """An agent's reply (None: it could not be read; logged by the checker and ignored)."""
        self.agents[server] = result
        if reply is None:
            return
        before = server.state
        if reply.health is False:
            self._agent_down.add(server)
        elif reply.health is True:
            self._agent_down.discard(server)
        if reply.admin is not None:
            server.admin = reply.admin
        if reply.percent is not None:
            server.agent_pct = reply.percent
        if reply.maxconn is not None:
            server.maxconn = reply.maxconn
        why = f"agent said {result.detail!r}" + (f" ({reply.reason})" if reply.reason else "")
        self._apply(server, why, result.at, before)

    def set_admin(self, server: Server, admin: str, why: str = "admin") -> None:
        before = server.state
        server.admin = admin
        self._apply(server, why, self.clock(), before)

    def set_weight(self, server: Server, weight: int) -> None:
        """Runtime weight change (0 quiesces: no new requests, in-flight ones finish)."""
        server.base_weight = weight
        self._apply(server, f"weight set to {weight}", self.clock())

    def mark_down(self, server: Server, why: str = "marked down") -> None:
        """Force a server down until a check or ``mark_up`` brings it back (tests, admin)."""
        self._agent_down.add(server)
        self._apply(server, why, self.clock())

    def mark_up(self, server: Server, why: str = "marked up") -> None:
        self._agent_down.discard(server)
        check = self.checks.get(server)
        if check is not None:
            check.healthy = True
        ej = self._ejections.get(server)
        if ej is not None:
            ej.until = 0.0
        self._apply(server, why, self.clock())

    def tick(self, now: float) -> None:
        """About once a second: timed ejections that end, slow start's ramp, waiting requests."""
        for server, ej in self._ejections.items():
            if ej.until and ej.until <= now:
                ej.until, ej.back_at = 0.0, now
                self._apply(server, "ejection time over", now)
        if self._ramping:
            window = self.spec.slow_start
            for server, began in list(self._ramping.items()):
                ramp = (now - began) / window if window > 0 else 1.0
                if ramp >= 1.0 or not server.available:
                    server.ramp = 1.0
                    del self._ramping[server]
                else:
                    server.ramp = max(MIN_RAMP, ramp)
        if self.queue.count:
            self.serve_queues()

    def _apply(self, server: Server, why: str, now: float, before: str | None = None) -> None:
        """Derive the server's state from what is known, tell the scheduler, log the change.
        ``before``: the state before the caller changed ``admin`` (``state`` reads it directly,
        so it cannot be taken here)."""
        old_state = before if before is not None else server.state
        old_up, old_weight, old_avail = server.up, server.weight, server.available
        check = self.checks.get(server)
        ej = self._ejections.get(server)
        server.healthy = ((check is None or check.healthy) and server not in self._agent_down
                          and (ej is None or not ej.until))
        server.refresh()
        if server.up != old_up and not server.backup:
            (self.scheduler.on_up if server.up else self.scheduler.on_down)(server)
        if server.weight != old_weight and not server.backup:
            self.scheduler.on_weight(server)
        if server.available and not old_avail and self.spec.slow_start > 0:
            server.ramp, server.credit = MIN_RAMP, 0.0
            self._ramping[server] = now
        new_state = server.state
        if new_state != old_state:
            held = now - server.since if server.since else now - self.created
            server.since = now
            line = transition_line(self.name, server.name, server.address, old_state, new_state, why, held)
            log.log(logging.WARNING if new_state == DOWN else logging.INFO, "%s", line)
        if self.queue.count:
            if server.up:
                self._serve_queue(server)
            elif old_up:
                # Requests waiting for this server in particular would wait in vain: they choose
                # again (HAProxy's pendconn_redistribute), sticky ones per the redispatch setting.
                for ticket in self.queue.take_for(server):
                    ticket.waiter.requeue()

    # ---- reload ---------------------------------------------------------------------------------------
    def inherit(self, old: ServerPool) -> list[str]:
        """After a reload: each server of this (new) pool that ``old`` also had — same name and
        address — takes over what is known of it: health (check counts when its check is
        unchanged), agent state, ejections and counters, and — unless the file changed what it
        says of that server — what an operator set at run time (admin state, weight): a reload
        neither revives a dead server nor forgets a drained one. Returns the names carried over.
        (HAProxy's server-state-file does this across a restart; its runtime changes are lost.)"""
        olds = {(s.name, s.host, s.port): s for s in old.all_servers}
        self.unserved = old.unserved
        mapping: dict[Server, Server] = {}
        old_specs = {s.name: s for s in (*old.spec.servers, *old.spec.backup)}
        new_specs = {s.name: s for s in (*self.spec.servers, *self.spec.backup)}
        carried: list[str] = []
        now = self.clock()
        for server in self.all_servers:
            prev = olds.get((server.name, server.host, server.port))
            if prev is None:
                continue
            carried.append(server.name)
            mapping[prev] = server
            check, prev_check = self.checks.get(server), old.checks.get(prev)
            if check is not None and prev_check is not None:
                if (check.rise, check.fall) == (prev_check.rise, prev_check.fall):
                    self.checks[server] = prev_check
                else:
                    check.healthy = prev_check.healthy  # new settings, same verdict so far
            if prev in old.agents:
                self.agents[server] = old.agents[prev]
            if prev in old._agent_down:
                self._agent_down.add(server)
            else:
                self._agent_down.discard(server)  # (init_state: down does not apply to a kept server)
            if prev in old._ejections:
                self._ejections[server] = old._ejections[prev]
            before = prev.state
            if old_specs.get(server.name) == new_specs.get(server.name):
                # What an operator set at run time (ctl: drain, disable, weight) stays, unless
                # the file now says something new about this server: then the file wins.
                server.admin, server.base_weight = prev.admin, prev.base_weight
            server.agent_pct, server.since = prev.agent_pct, prev.since
            server.total, server.failures, server.errors = prev.total, prev.failures, prev.errors
            server.retries, server.redispatches, server.latency = prev.retries, prev.redispatches, prev.latency
            # One set of counters for both: requests still finishing on the old pool count too.
            server.traffic = prev.traffic
            if prev in old._ramping:
                self._ramping[server] = old._ramping[prev]
                server.ramp = prev.ramp
            self._apply(server, "kept across a reload", now, before)
        self.scheduler.inherit(old.scheduler, mapping)
        return carried

    # ---- introspection ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        persist = self.persistence or self.hello_persistence
        servers = []
        for s in self.all_servers:
            snap = s.snapshot()
            check = self.checks.get(s)
            snap["check"] = check.snapshot() if check is not None else None
            agent = self.agents.get(s)
            snap["agent"] = None if agent is None else {"ok": agent.ok, "detail": agent.detail,
                                                        "ms": round(agent.duration * 1000, 1)}
            ej = self._ejections.get(s)
            snap["ejections"] = ej.count if ej is not None else 0
            servers.append(snap)
        return {
            "name": self.name, "scheduler": self.scheduler.snapshot(), "servers": servers,
            "persistence": persist.snapshot() if persist is not None else None,
            "queue": self.queue.snapshot(), "retries": self.retries, "retrying": self.retrying,
        }

    def __repr__(self) -> str:
        up = sum(1 for s in self.servers if s.available)
        inflight = sum(s.inflight for s in self.all_servers)
        backups = f", {len(self.backups)} backup" if self.backups else ""
        return (f"<ServerPool {self.name} {self.scheduler.name} [{up}/{len(self.servers)} available"
                f"{backups}, {inflight} in flight, {self.queue.count} queued]>")
