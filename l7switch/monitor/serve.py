"""Start, reload and stop the monitor and the metrics listener of one process: the switch when
it runs alone, the master with workers (workers never run them: they would each show a part).

A reload is two steps, as for the switch's own listeners: ``prepare`` opens what the new file
needs that is not open yet (a monitor or metrics listener that is new or moved) and raises
OSError — having closed what it opened — if one cannot be, so the reload is refused with
nothing changed; ``commit`` then closes what was replaced or removed and gives an unchanged
monitor its new settings. A monitor that moves keeps its sessions, login counts and charts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass


from ..spec import Config, MonitorSpec
from .app import Monitor
from .metrics import MetricsServer
from .web import Source

log = logging.getLogger("l7switch")


def _moved(a: MonitorSpec, b: MonitorSpec) -> bool:
    return (a.host, a.port, a.tls, a.insecure) != (b.host, b.port, b.tls, b.insecure)


@dataclass
class Plan:
    """What ``prepare`` opened for ``config``; ``commit`` makes it current."""
    config: Config
    monitor: Monitor | None = None  # a new listener for the monitor (new or moved)
    metrics: MetricsServer | None = None


class Observers:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.monitor: Monitor | None = None
        self.metrics: MetricsServer | None = None

    async def start(self, config: Config) -> None:
        """At start: a listener that cannot open stops the start (OSError), as any listener does."""
        self.commit(await self.prepare(config))

    async def prepare(self, config: Config) -> Plan:
        plan = Plan(config)
        header = config.timeouts.header
        try:
            if config.monitor is not None and (self.monitor is None or _moved(self.monitor.spec, config.monitor)):
                plan.monitor = Monitor(config.monitor, self.source, header)
                if self.monitor is not None:
                    plan.monitor.adopt(self.monitor)
                await plan.monitor.start()
            spec = config.metrics
            if spec is not None and (self.metrics is None or self.metrics.spec != spec):
                plan.metrics = MetricsServer(spec, self.source, header)
                await plan.metrics.start()
        except OSError:
            await self.discard(plan)
            raise
        return plan

    def commit(self, plan: Plan) -> None:
        """Nothing here fails: the old listeners close in the background."""
        config = plan.config
        if plan.monitor is not None or config.monitor is None:
            if self.monitor is not None:
                _close_soon(self.monitor)
            self.monitor = plan.monitor
        elif self.monitor is not None:
            self.monitor.reconfigure(config.monitor, config.timeouts.header)
        if plan.metrics is not None or config.metrics is None:
            if self.metrics is not None:
                _close_soon(self.metrics)
            self.metrics = plan.metrics

    async def discard(self, plan: Plan) -> None:
        """A reload refused after ``prepare``: close what it opened."""
        if plan.monitor is not None:
            await plan.monitor.stop()
        if plan.metrics is not None:
            await plan.metrics.stop()

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None


def _close_soon(listener: Monitor | MetricsServer) -> None:
    """Replaced by a reload: stopped in the background (commit itself cannot wait)."""
    asyncio.get_running_loop().create_task(listener.stop())
