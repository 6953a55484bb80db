#!/usr/bin/env python3
"""How long a scheduler table takes to build, and what a rebuild does to the event loop.

1. Builds the Maglev table (and, for comparison, the chash ring) synchronously for a few pool
   sizes, timing exactly the function the switch runs (``scheduler.table_builder()``).
2. Under uvloop, a 1 ms ticker records the largest gap between its ticks (the loop's worst
   stall) while the same build runs (a) synchronously on the loop and (b) through
   ``loop.run_in_executor(None, build)``, which is what ``Switch.defer_build`` does: the build
   is pure Python and still holds the GIL, but the interpreter hands it back every
   ``sys.getswitchinterval()`` (5 ms), so the loop keeps turning.

Pure CPU, no sockets. Runs in well under a minute:

    .venv/bin/python bench/table_rebuild.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # noqa: E402

from l7switch.balance.servers import Server  # noqa: E402
from l7switch.balance.schedulers import create  # noqa: E402

TICK = 0.001


def builder(name: str, n: int, **options: Any) -> tuple[Callable[[], Any], int]:
    """The scheduler's pure build function for a pool of ``n`` equal servers, and its size."""
    servers = [Server(f"10.0.{i // 250}.{i % 250 + 1}:8080", "10.0.0.1", 8080, 1, "p", i)
               for i in range(n)]
    sched = create(name, servers, options)
    build = sched.table_builder()
    assert build is not None
    size = sched.snapshot().get("table_size") or sched.snapshot().get("ring_points")
    return build, size


def time_builds(repeat: int) -> list[tuple[str, int, int, float, float]]:
    rows = []
    cases = [("maglev", 4093, 4), ("maglev", 4093, 40), ("maglev", 65521, 100),
             ("maglev", 131071, 1000), ("chash", 0, 5), ("chash", 0, 100)]
    for name, m, n in cases:
        opts = {"table_size": m} if name == "maglev" else {}
        build, size = builder(name, n, **opts)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            build()
            times.append(time.perf_counter() - t0)
        rows.append((name, size, n, min(times), statistics.median(times)))
    return rows


async def max_lag(build: Callable[[], Any] | None, mode: str, repeat: int) -> tuple[float, float, float]:
    """(worst tick gap, median tick gap, mean build wall time) while ``repeat`` builds run back
    to back (or, with no build, over a quiet 0.3 s)."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker is running
    gaps.clear()
    walls = []
    if build is None:
        await asyncio.sleep(0.3)
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            if mode == "sync":
                build()
                await asyncio.sleep(0)  # let the ticker see the stall
            else:
                await loop.run_in_executor(None, build)
            walls.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
    stop = True
    await task
    return max(gaps), statistics.median(gaps), statistics.mean(walls) if walls else 0.0


async def lag_table(repeat: int) -> list[tuple[str, str, float, float, float]]:
    rows = []
    worst, med, _ = await max_lag(None, "idle", repeat)
    rows.append(("(no build)", "idle", worst, med, 0.0))
    for name, m, n in [("maglev", 65521, 100), ("maglev", 131071, 1000), ("chash", 0, 100)]:
        opts = {"table_size": m} if name == "maglev" else {}
        build, size = builder(name, n, **opts)
        label = f"{name} size={size} N={n}"
        for mode in ("sync", "executor"):
            worst, med, wall = await max_lag(build, mode, repeat)
            rows.append((label, mode, worst, med, wall))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="builds per case (default 5)")
    args = ap.parse_args()
    started = time.perf_counter()

    print(f"# table builds, synchronous (python {sys.version.split()[0]}, "
          f"switch interval {sys.getswitchinterval() * 1000:g} ms, best/median of {args.repeat})\n")
    print("| scheduler | table size (slots or ring points) | servers | best ms | median ms |")
    print("|---|---:|---:|---:|---:|")
    for name, size, n, best, med in time_builds(args.repeat):
        print(f"| {name} | {size} | {n} | {best * 1000:.1f} | {med * 1000:.1f} |")

    print(f"\n# event-loop lag under uvloop ({TICK * 1000:g} ms ticker, {args.repeat} builds per row)\n")
    print("| build | where | max tick gap ms | median tick gap ms | build wall ms |")
    print("|---|---|---:|---:|---:|")
    for label, mode, worst, med, wall in uvloop.run(lag_table(args.repeat)):
        where = {"sync": "on the loop", "executor": "run_in_executor", "idle": "-"}[mode]
        print(f"| {label} | {where} | {worst * 1000:.1f} | {med * 1000:.2f} | {wall * 1000:.1f} |")
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
