#!/usr/bin/env python3
"""Normal clients' latency while thousands of deadlines expire together (issue 10, "smooth
deadlines").

l7switch runs in a subprocess (``l7switch run`` with a small rule file, ``timeouts.header``
= --header) in front of an nginx origin serving a 100 B file. ``wrk -t1 -c20 --latency`` runs
the whole time in consecutive short runs (--slice seconds each). After --baseline-secs, --conns
connections from 127.0.0.2 each send half a request head; their head deadlines expire together
--header seconds later and the switch answers each with 408 and closes it. Reported: wrk's p99
in the runs before the attack (baseline) and in the runs overlapping the window in which the
attack connections were closed (wave), per variant: the tree this script belongs to and, with
--baseline DIR, another source tree (e.g. ``git archive <commit> | tar -x -C DIR``), run
alternately --rounds times.

Usage: python bench/deadline_wave.py [--baseline DIR] [--conns 3000] [--header 5] [--rounds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib as bl

HERE = Path(__file__).resolve().parent
HALF_HEAD = b"GET /100b HTTP/1.1\r\nHost: wave\r\nX-Half: "


def run_wrk_slices(wrk: str, url: str, slice_s: int, until: float, out: list[dict[str, float]]) -> None:
    """wrk in consecutive runs of ``slice_s`` seconds until ``until`` (monotonic), bounded."""
    for _ in range(1000):
        if time.monotonic() >= until:
            return
        t0 = time.monotonic()
        text, err = bl.run_bounded([wrk, "-t1", "-c20", f"-d{slice_s}s", "--latency", url], slice_s)
        t1 = time.monotonic()
        row: dict[str, float] = {"t0": t0, "t1": t1}
        if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
            row["rps"] = float(m.group(1))
        if m := re.search(r"^\s+99(?:\.0+)?%\s+([\d.]+)(us|ms|s)", text, re.M):
            row["p99"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
            row["non2xx"] = int(m.group(1))
        if err:
            row["error"] = 1
        out.append(row)


async def attack(port: int, n: int, concurrency: int, limit: float) -> tuple[float, list[float], int]:
    """Open ``n`` connections from 127.0.0.2 sending half a head; returns (time the last was
    opened, the times they were closed by the switch, how many failed to open)."""
    loop = asyncio.get_running_loop()
    closed: list[float] = []
    failed = 0
    sem = asyncio.Semaphore(concurrency)
    writers = []

    async def one() -> None:
        nonlocal failed
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)), 10)
            except (OSError, asyncio.TimeoutError):
                failed += 1
                return
            writer.write(HALF_HEAD)
            writers.append(writer)

        async def wait_close() -> None:
            try:
                while await reader.read(4096):
                    pass
            except OSError:
                pass
            closed.append(time.monotonic())
        try:
            await asyncio.wait_for(wait_close(), limit)
        except asyncio.TimeoutError:
            pass

    tasks = [loop.create_task(one()) for _ in range(n)]
    # (each task is bounded by its connect timeout and `limit`)
    opened_at = 0.0
    while any(not t.done() for t in tasks):
        await asyncio.sleep(0.05)
        if not opened_at and len(writers) + failed >= n:
            opened_at = time.monotonic()
    for w in writers:
        w.close()
    return opened_at or time.monotonic(), closed, failed


def one_run(name: str, pythonpath: Path, args: argparse.Namespace, procs: bl.Procs, tmp: Path,
            tools: dict[str, str], origin: int) -> dict[str, object]:
    port = bl.free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(f"listen: [{{address: 127.0.0.1:{port}}}]\n"
                   f"pools:\n  origin: {{servers: [127.0.0.1:{origin}]}}\ndefault_pool: origin\n"
                   f"timeouts: {{header: {args.header:g}s}}\n")
    cmd = [sys.executable, "-m", "l7switch", "run", "-c", str(cfg)]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    print(f"# {name}: PYTHONPATH={pythonpath} {shlex.join(cmd)}", file=sys.stderr)
    proc = procs.start(name, cmd, env=env)
    err = bl.wait_port(port, proc)
    if err:
        raise RuntimeError(f"{name}: {err}\n{procs.log_tail(name)}")
    url = f"http://127.0.0.1:{port}/100b"
    slices: list[dict[str, float]] = []
    start = time.monotonic()
    total = args.baseline_secs + args.header + 6
    th = threading.Thread(target=run_wrk_slices, args=(tools["wrk"], url, args.slice, start + total, slices))
    th.start()
    time.sleep(args.baseline_secs)
    t_attack = time.monotonic()
    # The attacker runs in its own process at nice 19: on a 2-core machine its own work (3,000
    # reads and closes in a wave) would otherwise take CPU from the switch, nginx and wrk and be
    # counted as the switch's stall.
    res = subprocess.run([sys.executable, __file__, "--attacker", str(port), "--conns", str(args.conns),
                          "--header", str(args.header)], capture_output=True, text=True,
                         timeout=args.header + 60, preexec_fn=lambda: os.nice(19))
    opened_at, closed, failed = json.loads(res.stdout.strip().splitlines()[-1])
    th.join(timeout=total + 60)
    procs.stop(name)
    closed.sort()
    base = [s["p99"] for s in slices if "p99" in s and s["t1"] <= t_attack]
    if closed:
        w0, w1 = closed[0], closed[-1]
        wave = [s["p99"] for s in slices if "p99" in s and s["t0"] < w1 and s["t1"] > w0]
        wave_rps = [s["rps"] for s in slices if "rps" in s and s["t0"] < w1 and s["t1"] > w0]
    else:
        w0 = w1 = 0.0
        wave, wave_rps = [], []
    base_rps = [s["rps"] for s in slices if "rps" in s and s["t1"] <= t_attack]
    return {
        "name": name, "baseline_p99": statistics.median(base) if base else None,
        "wave_p99": max(wave) if wave else None, "wave_runs": len(wave),
        "baseline_rps": statistics.median(base_rps) if base_rps else None,
        "wave_rps": min(wave_rps) if wave_rps else None,
        "closed": len(closed), "failed": failed, "open_s": opened_at - t_attack,
        "wave_s": w1 - w0, "wave_after_s": w0 - opened_at,
        "errors": sum(1 for s in slices if s.get("error") or s.get("non2xx")),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="another l7switch source tree, run alternately")
    ap.add_argument("--conns", type=int, default=3000)
    ap.add_argument("--header", type=float, default=5.0, help="timeouts.header, seconds")
    ap.add_argument("--baseline-secs", type=float, default=4.0, help="wrk alone before the attack")
    ap.add_argument("--slice", type=int, default=1, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--attacker", type=int, help=argparse.SUPPRESS)  # (the attacker subprocess)
    args = ap.parse_args()
    if args.attacker:
        bl.raise_nofile()
        opened, closed, failed = asyncio.run(attack(args.attacker, args.conns, 200, args.header + 10))
        print(json.dumps([opened, closed, failed]))
        return 0
    bl.install_sigterm_handler()
    bl.raise_nofile()
    tools = bl.ensure_tools(("nginx", "wrk"))
    tmp = Path(tempfile.mkdtemp(prefix="l7wave-"))
    procs = bl.Procs(tmp)
    variants = [("new", HERE.parent)]
    if args.baseline:
        variants.insert(0, ("old", args.baseline.resolve()))
    rows = []
    try:
        origin = bl.start_origin(procs, tmp, tools["nginx"])
        for r in range(args.rounds):
            for name, path in variants:
                row = one_run(f"{name}{r}", path, args, procs, tmp, tools, origin)
                rows.append(row)
                print(row, file=sys.stderr)
    finally:
        bl.cleanup(procs, tmp, keep_tmp=False)

    def f(v: object, fmt: str = "{:.2f}") -> str:
        return fmt.format(v) if isinstance(v, (int, float)) else "-"
    print(f"# {args.conns} half heads from 127.0.0.2, timeouts.header {args.header:g}s, "
          f"wrk -t1 -c20 --latency in {args.slice}s runs; p99 in ms")
    print("| run | baseline p99 | wave p99 | limit 3x+3 | baseline rps | wave rps (min) | closed | "
          "wave spread s | wrk runs in wave |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        b = row["baseline_p99"]
        lim = 3 * b + 3 if isinstance(b, float) else None
        print(f"| {row['name']} | {f(b)} | {f(row['wave_p99'])} | {f(lim)} | {f(row['baseline_rps'], '{:.0f}')} | "
              f"{f(row['wave_rps'], '{:.0f}')} | {row['closed']}/{args.conns} | {f(row['wave_s'])} | "
              f"{row['wave_runs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
