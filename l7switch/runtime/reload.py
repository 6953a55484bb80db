"""Hot reload: SIGHUP (and, later, ``l7switch ctl reload``) reads the rule file again and applies
it whole, or not at all.

The file is read and checked in a worker thread (parsing resolves host names, which blocks), so
the loop keeps serving meanwhile. Any error, and the old configuration stays: every problem is
logged as ``FILE:LINE:COL: message``, as ``l7switch check`` prints it. Otherwise
``Switch.apply`` makes the new one current in one loop turn (requests in flight finish on the
rules and pools they started with; see its docstring for what is kept).

Reloads never overlap: a request that arrives while one runs is remembered, and one more reload
follows it — ten SIGHUPs in a second cost at most two reloads, and the last file on disk wins
(nginx and HAProxy coalesce the same way: a signal is pending or not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import load_config
from ..errors import ConfigError
from ..spec import Config

log = logging.getLogger("l7switch")


@dataclass
class ReloadResult:
    ok: bool
    errors: list[str] = field(default_factory=list)  # FILE:LINE:COL: message, or one line
    changes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Reloader:
    """Reloads of one switch from its rule file, one at a time."""

    def __init__(self, path: str, apply: Callable[[Config], Any],
                 load: Callable[[str], Config] = load_config) -> None:
        self.path = path
        self.apply = apply  # Switch.apply (a coroutine function)
        self.load = load
        self.running: asyncio.Task[None] | None = None
        self.again = False
        self.count = 0  # reloads applied
        self.failed = 0  # reloads refused
        self.last: ReloadResult | None = None
        self.loaded_at = time.time()  # when the configuration in force was read

    def request(self) -> None:
        """SIGHUP: reload soon; coalesced with one running or already asked for."""
        if self.running is not None:
            self.again = True
            return
        self.running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self.again = False
                await self.reload()
                if not self.again:
                    return
        finally:
            self.running = None

    async def reload(self) -> ReloadResult:
        """Read, check and apply the file once; the result says what happened."""
        t0 = time.monotonic()
        try:
            config = await asyncio.to_thread(self.load, self.path)
        except ConfigError as exc:
            errors = [str(issue) for issue in exc.issues]
            for line in errors:
                log.error("reload refused: %s", line)
            log.error("reload of %s refused (%d error%s); still serving the configuration loaded "
                      "at %s", self.path, len(errors), "" if len(errors) == 1 else "s",
                      time.strftime("%H:%M:%S", time.localtime(self.loaded_at)))
            return self._done(ReloadResult(False, errors, seconds=time.monotonic() - t0))
        try:
            changes = await self.apply(config)
        except Exception as exc:  # a listener that cannot be opened (ListenError), or worse
            log.error("reload of %s refused: %s; still serving the previous configuration", self.path, exc)
            return self._done(ReloadResult(False, [str(exc)], seconds=time.monotonic() - t0))
        self.loaded_at = time.time()
        result = ReloadResult(True, [], changes, time.monotonic() - t0)
        kept = sum(len(v) for v in changes.get("kept_servers", {}).values())
        extra = "".join(f"; listeners {what}: {', '.join(changes[what])}"
                        for what in ("opened", "changed", "closed") if changes.get(what))
        log.info("reloaded %s in %.0f ms: pools %s; %d server%s kept with their state%s", self.path,
                 result.seconds * 1000, ", ".join(changes.get("pools", [])), kept, "" if kept == 1 else "s",
                 extra)
        return self._done(result)

    def _done(self, result: ReloadResult) -> ReloadResult:
        self.last = result
        if result.ok:
            self.count += 1
        else:
            self.failed += 1
        return result

    def snapshot(self) -> dict[str, Any]:
        return {"file": self.path, "loaded_at": self.loaded_at, "reloads": self.count, "refused": self.failed,
                "last_errors": self.last.errors if self.last is not None else []}
