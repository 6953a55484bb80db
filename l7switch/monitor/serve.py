"""Start, reload and stop the monitor and the metrics listener of one process: the switch when
it runs alone, the master with workers (workers never run them: they would each show a part).

A reload changes them in place: a monitor whose address and TLS are unchanged keeps its socket
and its sessions; a listener whose address changed is reopened; one removed from the file
closes. A new one that cannot be opened is logged and left off (the switch keeps serving).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..spec import Config
from .app import Monitor
from .metrics import MetricsServer

log = logging.getLogger("l7switch")


class Source(Protocol):
    async def run(self, args: list[str]) -> Any: ...


class Observers:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.monitor: Monitor | None = None
        self.metrics: MetricsServer | None = None

    async def start(self, config: Config) -> None:
        """At start: a monitor or metrics listener that cannot open stops the start (OSError),
        as any listener does."""
        header = config.timeouts.header
        if config.monitor is not None:
            self.monitor = Monitor(config.monitor, self.source, header)
            await self.monitor.start()
        if config.metrics is not None:
            self.metrics = MetricsServer(config.metrics, self.source, header)
            await self.metrics.start()

    async def apply(self, config: Config) -> None:
        header = config.timeouts.header
        try:
            if config.monitor is None:
                if self.monitor is not None:
                    await self.monitor.stop()
                    self.monitor = None
            elif self.monitor is None:
                self.monitor = Monitor(config.monitor, self.source, header)
                await self.monitor.start()
            else:
                await self.monitor.reconfigure(config.monitor, header)
        except OSError as exc:
            log.error("monitor: cannot listen on %s:%d: %s; the monitor is off until the next reload",
                      config.monitor.host if config.monitor else "", config.monitor.port if config.monitor else 0, exc)
            self.monitor = None
        spec = config.metrics
        if self.metrics is not None and (spec is None or spec != self.metrics.spec):
            await self.metrics.stop()
            self.metrics = None
        if spec is not None and self.metrics is None:
            try:
                self.metrics = MetricsServer(spec, self.source, header)
                await self.metrics.start()
            except OSError as exc:
                log.error("metrics: cannot listen on %s:%d: %s", spec.host, spec.port, exc)
                self.metrics = None

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None
