"""What checks conclude, as values: the rise/fall counting of active checks, the ejection time of
passive checks, and the grammar of an agent's reply. No I/O: ``checks/`` runs the probes and
feeds their results here through the pool; a master process could run them instead and send the
same results to its workers.

- Active checks (HAProxy ``check``): ``rise`` passes in a row bring a down server up, ``fall``
  failures in a row take an up server down. A flapping server therefore changes state at most
  once per ``rise``/``fall`` window, never on every probe.
- Passive checks (HAProxy ``observe`` + ``error-limit`` + ``on-error mark-down``; Envoy outlier
  detection): ``error_limit`` failures in a row in real traffic take a server down at once.
  With no active check to bring it back it is ejected for ``ejection`` seconds, doubled on each
  repeat up to ``max_ejection`` (Envoy's ``base_ejection_time`` x ejection count, capped by
  ``max_ejection_time``); a server that stays up that long is forgiven its past ejections.
- Agent replies (HAProxy ``agent-check``): words separated by spaces or commas — ``up``,
  ``down``, ``fail``, ``stopped``, ``ready``, ``drain``, ``maint``, ``NN%``, ``maxconn:N`` — any
  number of them, e.g. ``"ready 75%"``; text after ``#`` is a reason for the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..spec import HealthSpec, PassiveSpec
from .servers import DRAIN, MAINT, READY

#: An agent's reply line is short; HAProxy reads at most one buffer but a feedback line is a few
#: words. Longer replies are refused (and logged), never buffered without bound.
MAX_AGENT_LINE = 1024


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One probe's outcome: ``detail`` is what the log and the monitor show ("L7OK 200",
    "connection refused", "timeout after 1s", "status 500", "body mismatch")."""
    ok: bool
    detail: str
    duration: float  # seconds the probe took
    at: float  # monotonic time it ended


class CheckState:
    """The consecutive counts of one server's active check, and its last result."""

    __slots__ = ("rise", "fall", "passes", "fails", "last", "probes", "healthy")

    def __init__(self, spec: HealthSpec) -> None:
        self.healthy = True  # what this check concludes (init_state: down starts it False)
        self.rise = spec.rise
        self.fall = spec.fall
        self.passes = 0  # consecutive
        self.fails = 0  # consecutive
        self.last: CheckResult | None = None
        self.probes = 0

    def record(self, result: CheckResult, healthy: bool) -> bool | None:
        """Count ``result`` for a server now ``healthy`` or not: the new health when this result
        completes a ``rise`` or ``fall`` run, else None."""
        self.last = result
        self.probes += 1
        if result.ok:
            self.passes += 1
            self.fails = 0
            if not healthy and self.passes >= self.rise:
                return True
        else:
            self.fails += 1
            self.passes = 0
            if healthy and self.fails >= self.fall:
                return False
        return None

    def reset(self) -> None:
        """The server changed state for another reason (passive ejection): count afresh."""
        self.passes = self.fails = 0

    def snapshot(self) -> dict[str, Any]:
        last = self.last
        return {
            "healthy": self.healthy, "rise": self.rise, "fall": self.fall, "passes": self.passes, "fails": self.fails,
            "probes": self.probes,
            "last": None if last is None else {
                "ok": last.ok, "detail": last.detail, "ms": round(last.duration * 1000, 1)},
        }


class Ejections:
    """Passive checks' memory for one server: how often it was ejected, and until when."""

    __slots__ = ("count", "until", "back_at")

    def __init__(self) -> None:
        self.count = 0
        self.until = 0.0  # 0: not ejected (or brought back by active checks)
        self.back_at = 0.0  # when it last came back

    def eject(self, spec: PassiveSpec, now: float, timed: bool) -> float:
        """Eject now; returns for how long (0 when ``timed`` is False: active checks decide)."""
        if self.count and self.back_at and now - self.back_at >= spec.max_ejection:
            self.count = 0  # stayed up a whole max-ejection time: forgiven
        self.count += 1
        if not timed:
            self.until = 0.0
            return 0.0
        seconds = min(spec.ejection * 2 ** (self.count - 1), spec.max_ejection)
        self.until = now + seconds
        return seconds


@dataclass(frozen=True, slots=True)
class AgentReply:
    """What an agent asked for; None where it said nothing about that part."""
    health: bool | None = None  # up / down
    admin: str | None = None  # ready / drain / maint
    percent: int | None = None  # weight scale, 0..
    maxconn: int | None = None
    reason: str = ""


_PERCENT = re.compile(r"([0-9]{1,5})%")  # (five digits: the range check below can fire)
_MAXCONN = re.compile(r"maxconn:([0-9]{1,9})")


def parse_agent_reply(line: str) -> AgentReply:
    """The reply's words (HAProxy agent-check grammar); ValueError naming what is wrong."""
    text, _, reason = line.partition("#")
    words = [w for w in re.split(r"[\s,]+", text.strip().lower()) if w]
    if not words:
        raise ValueError("empty reply")
    health: bool | None = None
    admin: str | None = None
    percent: int | None = None
    maxconn: int | None = None
    for w in words:
        if w == "up":
            health = True
        elif w in ("down", "fail", "stopped"):
            health = False
        elif w in (READY, DRAIN, MAINT):
            admin = w
        elif (m := _PERCENT.fullmatch(w)) is not None:
            percent = int(m.group(1))
            if percent > 256 * 100:  # HAProxy weights top out at 256
                raise ValueError(f"weight {w} out of range")
        elif (m := _MAXCONN.fullmatch(w)) is not None:
            maxconn = int(m.group(1))
        else:
            raise ValueError(f"unknown word {w!r}")
    return AgentReply(health, admin, percent, maxconn, reason.strip())


def transition_line(pool: str, server: str, address: str, old: str, new: str, reason: str,
                    held: float | None) -> str:
    """The one log line of a state change: who, old -> new, why, and how long the old state held."""
    how_long = f"; {old} for {_seconds(held)}" if held is not None else ""
    return f"server {pool}/{server} ({address}) {old} -> {new}: {reason}{how_long}"


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"
