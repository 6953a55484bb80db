"""The checker: one long-lived task per checked server and kind (health, agent), each probing at
its interval and handing every result to ``deliver``.

Targets are named by (pool name, server name), not by live objects, so that a master process can
run one checker per host and send results to its workers, and so that a reload — a new generation
with new ``ServerPool`` objects — needs no restart of the checks: the switch's ``deliver``
(``pool_deliver``) looks the server up in whatever pools are current when the result arrives.

Timing follows HAProxy: a target's first probe waits ``interval * i / n`` (HAProxy's
``start_checks`` offsets server i of n by ``mininter * srvpos / nbcheck``) plus a little jitter,
so 200 servers do not all probe at once; after that each probe starts ``interval``
after the previous one started (``inter``). A probe's timeout is below its interval, and a task
awaits its probe before sleeping, so a target's probes never overlap.

Start times are rounded up to a grid of ``interval / 20`` (at most 50 ms): the timer slack of
Linux (``PR_SET_TIMERSLACK``) and systemd (``TimerSlackNSec``), applied for the same reason —
probes due within one slot share the loop's wake-ups instead of waking an idle switch 200 times
a second. Measured with bench/health_cost.py (200 servers, 1 s): about 2.5x less CPU than
without it; the probes still go out in 20 small groups a second, not all at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..balance.health import AgentReply, CheckResult
from ..balance.pool import ServerPool
from ..balance.servers import Server
from ..spec import AgentSpec, HealthSpec, PoolSpec, ServerSpec
from .probes import agent_probe, http_probe, tcp_probe
from .verdicts import HttpJudge, http_request

log = logging.getLogger("l7switch")

HEALTH, AGENT = "health", "agent"
#: Share of a target's slot (interval / n) its first probe may be moved by at random: spreads
#: checkers of several processes started in the same millisecond (HAProxy ``spread-checks``
#: suggests 2-5% of the interval between checks; this moves only the first one).
FIRST_JITTER = 0.25
#: Timer slack: a probe may start this share of its interval late, at most MAX_SLACK (s), so
#: that probes due close together share one wake-up (see the module's docstring).
SLACK_SHARE = 0.05
MAX_SLACK = 0.05

#: deliver(pool name, server name, kind, agent reply or None, result)
Deliver = Callable[[str, str, str, AgentReply | None, CheckResult], None]


@dataclass(slots=True)
class Target:
    """One thing the checker probes: a server's health check or its agent."""
    pool: str
    server: str
    kind: str  # HEALTH or AGENT
    host: str
    port: int
    interval: float
    timeout: float
    health: HealthSpec | None = None  # kind HEALTH
    request: bytes = b""  # an HTTP check's request, built once
    probes: int = 0
    last: CheckResult | None = None
    problem: str | None = field(default=None)  # agent: the last problem logged (one line each)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def targets_of(pools: Mapping[str, PoolSpec]) -> list[Target]:
    """Every health check and agent of every server (backups included), in config order."""
    out: list[Target] = []
    for pool in pools.values():
        for s in (*pool.servers, *pool.backup):
            if s.health is not None:
                out.append(_health_target(pool.name, s, s.health))
            if s.agent is not None:
                out.append(_agent_target(pool.name, s, s.agent))
    return out


def _health_target(pool: str, s: ServerSpec, h: HealthSpec) -> Target:
    port = h.port or s.port
    request = http_request(h.http, s.address) if h.http is not None else b""
    return Target(pool, s.name, HEALTH, s.host, port, h.interval, h.timeout, h, request)


def _agent_target(pool: str, s: ServerSpec, a: AgentSpec) -> Target:
    return Target(pool, s.name, AGENT, s.host, a.port, a.interval, a.timeout)


def slot(t: float, interval: float) -> float:
    """``t`` rounded up to the timer-slack grid of ``interval``."""
    grid = min(interval * SLACK_SHARE, MAX_SLACK)
    return math.ceil(t / grid) * grid


def first_offset(i: int, n: int, interval: float, rnd: float) -> float:
    """When target ``i`` of ``n`` probes first: its share of the interval plus ``rnd`` (0..1) of
    ``FIRST_JITTER`` of one share."""
    share = interval / max(n, 1)
    return share * i + share * FIRST_JITTER * rnd


class HealthChecker:
    """``start(pools)`` runs a task per target; ``stop()`` ends them all."""

    def __init__(self, deliver: Deliver, rng: random.Random | None = None) -> None:
        self.deliver = deliver
        self.rng = rng or random.Random()
        self.targets: list[Target] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, pools: Mapping[str, PoolSpec]) -> None:
        loop = asyncio.get_running_loop()
        self.targets = targets_of(pools)
        n = len(self.targets)
        for i, t in enumerate(self.targets):
            offset = first_offset(i, n, t.interval, self.rng.random())
            self._tasks.append(loop.create_task(self._run(t, offset), name=f"check {t.kind} {t.pool}/{t.server}"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def _run(self, t: Target, offset: float) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time() + offset  # when this probe is due
        while True:
            await asyncio.sleep(max(slot(began, t.interval) - loop.time(), 0.0))
            reply, result = await self.probe(t)
            t.probes += 1
            t.last = result
            if t.kind == AGENT:
                self._agent_problem(t, reply, result)
            try:
                self.deliver(t.pool, t.server, t.kind, reply, result)
            except Exception:  # a bug behind deliver must not end this server's checks
                log.exception("check %s %s/%s: delivering its result failed", t.kind, t.pool, t.server)
            # Fixed rate from the first probe: the spread of start() is kept however long
            # probes take; a late loop skips missed turns instead of probing in a burst.
            began += t.interval * max(1, math.ceil((loop.time() - began) / t.interval))

    async def probe(self, t: Target) -> tuple[AgentReply | None, CheckResult]:
        if t.kind == AGENT:
            return await agent_probe(t.host, t.port, t.timeout)
        h = t.health
        assert h is not None
        if h.http is None:
            return None, await tcp_probe(t.host, t.port, t.timeout)
        return None, await http_probe(t.host, t.port, t.timeout, HttpJudge(h.http), t.request)

    def _agent_problem(self, t: Target, reply: AgentReply | None, result: CheckResult) -> None:
        """One log line per distinct problem with an agent (not one per probe), one when it is
        back; the reply itself is ignored (the pool keeps the server as it was)."""
        if reply is not None:
            if t.problem is not None:
                log.info("agent %s/%s (%s) answers again: %s", t.pool, t.server, t.address, result.detail)
                t.problem = None
            return
        if result.detail != t.problem:
            t.problem = result.detail
            log.warning("agent %s/%s (%s): %s; reply ignored", t.pool, t.server, t.address, result.detail)

    def snapshot(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "probes": sum(t.probes for t in self.targets),
            "targets": [{
                "pool": t.pool, "server": t.server, "kind": t.kind, "address": t.address,
                "interval": t.interval, "timeout": t.timeout, "probes": t.probes,
                "last": None if t.last is None else {"ok": t.last.ok, "detail": t.last.detail,
                                                     "ms": round(t.last.duration * 1000, 1)},
            } for t in self.targets],
        }


def needs_checker(pools: Mapping[str, PoolSpec]) -> bool:
    return any(s.health is not None or s.agent is not None
               for p in pools.values() for s in (*p.servers, *p.backup))


def pool_deliver(current: Callable[[], Mapping[str, ServerPool]]) -> Deliver:
    """A ``deliver`` into the pools ``current()`` returns at each result (the switch's current
    generation): ``check_result`` / ``agent_result`` of the server by that name. A server no
    longer there (a reload removed it) is skipped."""
    index: dict[str, dict[str, Server]] = {}
    seen: list[Mapping[str, ServerPool] | None] = [None]

    def deliver(pool_name: str, server_name: str, kind: str, reply: AgentReply | None,
                result: CheckResult) -> None:
        pools = current()
        if pools is not seen[0]:  # a new generation: index its servers by name once
            index.clear()
            for name, p in pools.items():
                index[name] = {s.name: s for s in p.all_servers}
            seen[0] = pools
        pool = pools.get(pool_name)
        server = index.get(pool_name, {}).get(server_name)
        if pool is None or server is None:
            return
        if kind == HEALTH:
            pool.check_result(server, result)
        else:
            pool.agent_result(server, reply, result)

    return deliver
