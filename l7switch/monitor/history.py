"""Rates from counters: the monitor's live figures and its 10-minute charts.

The switch keeps only totals (stats.py). Once a second the monitor takes a snapshot
(``internal stats``, added up across workers) and ``History.add`` turns the difference from
earlier snapshots into rates: per server over the last ``RECENT`` seconds (req/s, p50/p99 from
the histogram's difference, error and retry rates, cache hit ratio) and, per pool, one chart
point a second for the last ``KEEP`` seconds. Pure: values in, values out.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..stats import quantile

KEEP = 600  # chart points: 10 minutes at one a second
RECENT = 5  # seconds the live figures are averaged over (HAProxy's stats page: last second)


def _sub(a: list[int], b: list[int]) -> list[int]:
    return [x - y for x, y in zip(a, b)] if len(a) == len(b) else list(a)


def _totals(t: dict[str, Any], retries: int = 0) -> dict[str, Any]:
    classes = t.get("classes") or [0] * 6
    return {"requests": t.get("requests", 0), "errors": classes[5] if len(classes) > 5 else 0,
            "hits": t.get("hits", 0), "misses": t.get("misses", 0), "buckets": list(t.get("buckets") or []),
            "retries": retries}


def _add(into: dict[str, Any], t: dict[str, Any]) -> None:
    for k in ("requests", "errors", "hits", "misses", "retries"):
        into[k] += t[k]
    into["buckets"] = [x + y for x, y in zip(into["buckets"], t["buckets"])] if into["buckets"] else list(t["buckets"])


def _rates(now: dict[str, Any], then: dict[str, Any], seconds: float) -> dict[str, Any]:
    n = now["requests"] - then["requests"]
    buckets = _sub(now["buckets"], then["buckets"])
    hits, misses = now["hits"] - then["hits"], now["misses"] - then["misses"]
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    return {
        "rps": round(n / seconds, 2) if seconds > 0 else 0.0,
        "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
        "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "error_rate": round((now["errors"] - then["errors"]) / n, 4) if n else 0.0,
        "retry_rate": round((now["retries"] - then["retries"]) / n, 4) if n else 0.0,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
    }


def flatten(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Totals by "pool" and by "pool/server" from one snapshot."""
    out: dict[str, dict[str, Any]] = {}
    for pname, pool in (stats.get("pools") or {}).items():
        ptot = _totals(pool.get("unserved") or {})
        for sname, s in (pool.get("servers") or {}).items():
            st = _totals(s.get("traffic") or {}, s.get("retries", 0))
            out[f"{pname}/{sname}"] = st
            _add(ptot, st)
        out[pname] = ptot
    return out


class History:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.samples: deque[tuple[float, dict[str, dict[str, Any]]]] = deque(maxlen=RECENT + 1)
        #: Per pool, chart points [time (s since epoch), req/s, errors/s, p99 ms, hit ratio].
        self.series: dict[str, deque[list[Any]]] = {}
        self.last: dict[str, Any] = {}

    def add(self, wall: float, stats: dict[str, Any]) -> None:
        flat = flatten(stats)
        if self.samples:
            t0, prev = self.samples[-1]
            dt = wall - t0
            for pname in stats.get("pools") or {}:
                if pname not in flat or pname not in prev or dt <= 0:
                    continue
                r = _rates(flat[pname], prev[pname], dt)
                errors_s = round((flat[pname]["errors"] - prev[pname]["errors"]) / dt, 2)
                points = self.series.setdefault(pname, deque(maxlen=self.keep))
                points.append([round(wall, 3), r["rps"], errors_s, r["p99_ms"], r["hit_ratio"]])
        self.samples.append((wall, flat))
        self.last = stats

    def recent(self) -> dict[str, dict[str, Any]]:
        """Live figures per pool and per pool/server over the last RECENT seconds (or since the
        first sample)."""
        if len(self.samples) < 2:
            return {}
        (t0, old), (t1, new) = self.samples[0], self.samples[-1]
        return {key: _rates(now, old[key], t1 - t0) for key, now in new.items() if key in old}

    def charts(self) -> dict[str, list[list[Any]]]:
        return {pool: list(points) for pool, points in self.series.items()}
