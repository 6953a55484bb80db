#!/usr/bin/env python3
"""Discrete-event simulation of a cache cluster behind l7switch's real scheduler modules.

No sockets: N back-ends, each an LRU cache of C whole objects, ``workers`` parallel service slots
and a FIFO queue; a hit takes hit_ms, a miss miss_ms (and inserts the object when it finishes).
A closed loop of K clients (no think time) sends ``GET /obj/<i>`` with Zipf(alpha) popularity
(independent reference model). The scheduler is the real one (``l7switch.balance.schedulers.create``),
given ``key = "/obj/<i>"`` and a clock that reads simulated seconds; dispatch and completion
update the server counters and call ``on_start``/``on_end`` exactly as ServerPool.begin/end do
(``inflight`` counts queued plus in-service requests: what the switch sees as sent and not yet
answered).

Usage:
  bench/locality/sim.py                                # one configuration + the skew case
  bench/locality/sim.py --sweep-nodes 1,2,4,8,16       # LARD-paper shape vs number of nodes
  bench/locality/sim.py --schedulers rr,lblc,lard --alpha 1.0 --out sim.md

The first ``--warmup`` fraction of requests (default 20 %) fills the caches and is not measured.
"""
from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import random
import shlex
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as cm  # noqa: E402  (also puts the repo root on sys.path)

from l7switch.balance.servers import Server  # noqa: E402
from l7switch.balance.schedulers import create  # noqa: E402


# --------------------------------------------------------------------------- workload


def zipf_cdf(objects: int, alpha: float) -> list[float]:
    """Cumulative P(rank <= i) for P(i) ∝ 1/i^alpha, i = 1..objects (index 0 is rank 1)."""
    acc, out = 0.0, []
    for i in range(1, objects + 1):
        acc += i ** -alpha
        out.append(acc)
    return [x / acc for x in out]


def top_mass(cdf: list[float], n: int) -> float:
    """Fraction of requests to the n most popular objects (the hit rate of a perfect LFU cache
    of n objects under the independent reference model): an upper bound for LRU."""
    return 1.0 if n >= len(cdf) else (cdf[n - 1] if n > 0 else 0.0)


# --------------------------------------------------------------------------- simulation


@dataclass
class Config:
    nodes: int = 8
    objects: int = 20000
    cache: int = 1000
    alpha: float = 0.8
    requests: int = 200000
    workers: int = 2
    hit_ms: float = 1.0
    miss_ms: float = 10.0
    clients: int = 0  # 0: clients_per_slot * nodes * workers
    clients_per_slot: int = 4
    warmup: float = 0.2
    seed: int = 1
    max_seconds: float = 60.0  # wall-clock guard per run
    sized: bool = True  # options sized to the load (False: the schedulers' defaults)
    overrides: dict = field(default_factory=dict)  # --option LABEL.KEY=VALUE

    @property
    def k(self) -> int:
        return self.clients or self.clients_per_slot * self.nodes * self.workers

    def describe(self) -> str:
        return (f"N={self.nodes} back-ends × {self.workers} workers, {self.objects} objects, "
                f"LRU cache {self.cache} objects/node ({100 * self.cache / self.objects:.1f} %), "
                f"Zipf α={self.alpha}, hit {self.hit_ms:g} ms / miss {self.miss_ms:g} ms, "
                f"{self.k} closed-loop clients ({self.k / self.nodes:g} in flight per node), "
                f"{self.requests} requests ({self.warmup:.0%} warm-up), seed {self.seed}")


@dataclass
class Result:
    label: str
    options: dict = field(default_factory=dict)
    nodes: int = 0
    hit_rate: float = 0.0
    max_mean: float = 0.0
    throughput: float = 0.0  # completed requests per simulated second
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    util: float = 0.0  # mean fraction of worker slots busy
    per_server: list[int] = field(default_factory=list)
    per_server_hits: list[int] = field(default_factory=list)  # measured hits per server
    wall: float = 0.0
    note: str = ""


def simulate(label: str, cfg: Config, cdf: list[float]) -> Result:
    name, opts, notes = cm.resolve(label, cfg.k / cfg.nodes, cfg.sized, cfg.overrides)
    now = 0.0
    servers = [Server(f"s{i}", "127.0.0.1", 20000 + i, 1, "sim", i) for i in range(cfg.nodes)]
    sched = create(name, servers, opts, clock=lambda: now)
    n = cfg.nodes
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n)]
    free = [cfg.workers] * n
    queues: list[deque] = [deque() for _ in range(n)]
    busy_time = [0.0] * n
    heap: list[tuple] = []
    seq = itertools.count()
    rng = random.Random(cfg.seed)
    rand, bis = rng.random, bisect.bisect_left
    last = cfg.objects - 1
    keys = [f"/obj/{i}" for i in range(cfg.objects)]
    hit_s, miss_s, cap = cfg.hit_ms / 1000, cfg.miss_ms / 1000, cfg.cache

    warm = int(cfg.requests * cfg.warmup)
    issued = 0
    t_warm = t_end = None
    measured_req = [0] * n
    measured_hits = 0
    hits_by_server = [0] * n
    measured_done = 0
    done_in_window = 0
    lat: list[float] = []

    def start(idx: int, req: list, t: float) -> None:
        # req = [object, dispatch time, measured?, hit?]
        free[idx] -= 1
        cache = caches[idx]
        obj = req[0]
        if obj in cache:
            cache.move_to_end(obj)
            req[3] = True
            dur = hit_s
        else:
            dur = miss_s
        heapq.heappush(heap, (t + dur, next(seq), idx, req, dur))

    def dispatch(t: float) -> None:
        nonlocal issued, t_warm, t_end
        obj = min(bis(cdf, rand()), last)
        s = sched.pick(keys[obj])
        if s is None:
            raise RuntimeError(f"{label}: scheduler returned no server")
        s.inflight += 1
        s.total += 1
        sched.on_start(s)
        measured = issued >= warm
        if issued == warm:
            t_warm = t
        issued += 1
        if issued == cfg.requests:
            t_end = t
        if measured:
            measured_req[s.index] += 1
        req = [obj, t, measured, False]
        if free[s.index] > 0:
            start(s.index, req, t)
        else:
            queues[s.index].append(req)

    wall0 = time.perf_counter()
    for _ in range(min(cfg.k, cfg.requests)):
        dispatch(0.0)
    truncated = ""
    steps = 0
    while heap:
        t, _, idx, req, dur = heapq.heappop(heap)
        now = t
        obj, t0, measured, hit = req
        if t_warm is not None and (t_end is None or t <= t_end):
            busy_time[idx] += dur  # approximate: attributes the whole service to its end
            done_in_window += 1
        if not hit:
            cache = caches[idx]
            if obj not in cache:
                cache[obj] = None
                if len(cache) > cap:
                    cache.popitem(last=False)
        s = servers[idx]
        s.inflight -= 1
        sched.on_end(s)
        if measured:
            measured_done += 1
            measured_hits += hit
            hits_by_server[idx] += hit
            lat.append(t - t0)
        free[idx] += 1
        if queues[idx]:
            start(idx, queues[idx].popleft(), t)
        if issued < cfg.requests:
            dispatch(t)
        steps += 1
        if steps & 0x3FFF == 0 and time.perf_counter() - wall0 > cfg.max_seconds:
            truncated = f"stopped after {cfg.max_seconds:g} s wall clock at {issued} requests"
            t_end = t_end if t_end is not None else t
            break

    res = Result(label, opts, n, wall=time.perf_counter() - wall0)
    res.note = "; ".join(notes + ([truncated] if truncated else []))
    span = (t_end or now) - (t_warm or 0.0)
    total = sum(measured_req)
    res.per_server = measured_req
    res.per_server_hits = hits_by_server
    res.hit_rate = measured_hits / measured_done if measured_done else 0.0
    res.max_mean = max(measured_req) / (total / n) if total else 0.0
    res.throughput = done_in_window / span if span > 0 else 0.0
    res.util = sum(busy_time) / (span * n * cfg.workers) if span > 0 else 0.0
    if lat:
        lat.sort()
        res.p99_ms = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
        res.mean_ms = sum(lat) / len(lat) * 1000
    return res


# --------------------------------------------------------------------------- reports


def run_table(cfg: Config, labels: list[str], title: str, log) -> tuple[str, list[Result]]:
    cdf = zipf_cdf(cfg.objects, cfg.alpha)
    results = []
    for lab in labels:
        r = simulate(lab, cfg, cdf)
        log(f"#   {title}: {lab:7s} hit {r.hit_rate:6.1%}  max/mean {r.max_mean:4.2f}  "
            f"{r.throughput:8.0f} req/s  p99 {r.p99_ms:6.1f} ms  ({r.wall:.1f} s)")
        results.append(r)
    base = next((r for r in results if r.label == "rr"), None) or \
        next((r for r in results if r.label == "wrr"), None)
    bname = base.label if base else "rr"
    rows = []
    for r in results:
        rows.append([
            r.label, f"{r.hit_rate:.1%}", cm.ratio(r.hit_rate, base.hit_rate if base else None),
            f"{r.max_mean:.2f}", f"{r.throughput:,.0f}",
            cm.ratio(r.throughput, base.throughput if base else None),
            f"{r.util:.0%}", f"{r.mean_ms:.1f}", f"{r.p99_ms:.1f}", cm.fmt_opts(r.options),
        ])
    lines = [
        f"### {title}", "",
        cfg.describe() + ".", "",
        f"Perfect-LFU bounds: one node's cache holds the top {cfg.cache} objects = "
        f"{top_mass(cdf, cfg.cache):.1%} of requests; {cfg.nodes} disjoint caches hold the top "
        f"{min(cfg.objects, cfg.nodes * cfg.cache)} = {top_mass(cdf, cfg.nodes * cfg.cache):.1%}.", "",
        cm.md_table(["scheduler", "hit rate", f"hit ÷ {bname}", "max/mean req", "throughput req/s",
                     f"thr ÷ {bname}", "busy", "mean ms", "p99 ms", "options"],
                    rows, "lrrrrrrrrl"),
    ]
    notes = [r.note for r in results if r.note]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    return "\n".join(lines) + "\n", results


def run_sweep(cfg: Config, nodes_list: list[int], labels: list[str], log) -> str:
    cdf = zipf_cdf(cfg.objects, cfg.alpha)
    hits: dict[str, dict[int, Result]] = {lab: {} for lab in labels}
    for n in nodes_list:
        c = Config(**{**cfg.__dict__, "nodes": n})
        for lab in labels:
            r = simulate(lab, c, cdf)
            hits[lab][n] = r
            log(f"#   sweep N={n:2d}: {lab:7s} hit {r.hit_rate:6.1%}  max/mean {r.max_mean:4.2f}  "
                f"{r.throughput:8.0f} req/s  ({r.wall:.1f} s)")
    hdr = ["scheduler"] + [f"N={n}" for n in nodes_list]
    def table(fn) -> str:
        return cm.md_table(hdr, [[lab] + [fn(hits[lab][n]) for n in nodes_list] for lab in labels])
    base = hits.get("wrr") or hits.get("rr")
    bname = "wrr" if "wrr" in hits else "rr"
    desc = Config(**{**cfg.__dict__, "nodes": 1}).describe().replace("N=1 back-ends", "N back-ends")
    desc = desc.replace(f"{Config(**{**cfg.__dict__, 'nodes': 1}).k} closed-loop clients",
                        f"{cfg.clients_per_slot}·N·workers closed-loop clients" if not cfg.clients
                        else f"{cfg.clients} closed-loop clients")
    lines = [
        "### Sweep over the number of back-ends (the LARD paper's hit rate and throughput vs nodes)",
        "", desc + ".", "",
        "Perfect-LFU bound for N disjoint caches: " + ", ".join(
            f"N={n}: {top_mass(cdf, n * cfg.cache):.1%}" for n in nodes_list) + ".", "",
        "**Hit rate**", "", table(lambda r: f"{r.hit_rate:.1%}"), "",
        "**Throughput (req/s)**", "", table(lambda r: f"{r.throughput:,.0f}"), "",
        f"**Throughput ÷ {bname}**", "",
        table(lambda r: cm.ratio(r.throughput, base[r.nodes].throughput) if base else "–"), "",
        "**max/mean requests per server**", "", table(lambda r: f"{r.max_mean:.2f}"), "",
        "**p99 latency (ms)**", "", table(lambda r: f"{r.p99_ms:.1f}"),
    ]
    return "\n".join(lines) + "\n"


def run_sensitivity(cfg: Config, skew: Config, log) -> str:
    """How the load-dependent options move hit rate, throughput and balance: lard's T_high,
    lblc's capacity (in units of L = clients / nodes) and chash's balance factor, each on the main
    workload and on the skew case, plus each scheduler's own defaults."""
    def variants(L: float) -> list[tuple[str, str, dict | None]]:
        lo = max(1, round(L / 2))
        out: list[tuple[str, str, dict | None]] = []
        for f in (1.0, 1.5, 2.0, 3.0):
            out.append(("lard", f"t_low=L/2, t_high={f:g}·L", {"t_low": lo, "t_high": max(lo + 1, round(f * L))}))
        out.append(("lard", "defaults (25/65)", None))
        for f in (1.0, 2.0, 3.0):
            out.append(("lblc", f"capacity={f:g}·L", {"capacity": max(1, round(f * L))}))
        out.append(("lblc", "default (65)", None))
        for bf in (0, 1.25, 1.5, 2.0, 3.0):
            out.append(("chash", f"balance_factor={bf:g}", {"balance_factor": bf}))
        return [v for v in out if v[0] in cm.SCHEDULERS]

    results: dict[str, list] = {}
    for tag, c in (("main", cfg), ("skew", skew)):
        cdf = zipf_cdf(c.objects, c.alpha)
        base = simulate("rr", c, cdf)
        L = c.k / c.nodes
        for lab, desc, opts in variants(L):
            cc = Config(**{**c.__dict__, "sized": opts is not None,
                           "overrides": {lab: opts} if opts is not None else {}})
            r = simulate(lab, cc, cdf)
            log(f"#   sensitivity {tag}: {lab} {desc}: hit {r.hit_rate:.1%} thr {r.throughput / base.throughput:.2f}× "
                f"max/mean {r.max_mean:.2f} ({r.wall:.1f} s)")
            results.setdefault(f"{lab}|{desc}", []).append(
                (r.hit_rate / base.hit_rate, r.throughput / base.throughput, r.max_mean, r.util, r.options))
    rows = []
    for key, vals in results.items():
        lab, desc = key.split("|")
        row = [lab, desc, cm.fmt_opts(vals[0][4])]
        for hr, tr, mm, util in (v[:4] for v in vals):
            row += [f"{hr:.2f}×", f"{tr:.2f}×", f"{mm:.2f}", f"{util:.0%}"]
        rows.append(row)
    hdr = ["scheduler", "variant", f"options (main, L={cfg.k / cfg.nodes:g})",
           "main hit ÷ rr", "main thr ÷ rr", "main max/mean", "main busy",
           "skew hit ÷ rr", "skew thr ÷ rr", "skew max/mean", "skew busy"]
    return "\n".join([
        "### Option sensitivity", "",
        "main: " + cfg.describe() + ".", "",
        "skew: " + skew.describe() + ".", "",
        cm.md_table(hdr, rows, "lll" + "r" * 8),
    ]) + "\n"


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedulers", default=",".join(cm.ALL_LABELS),
                    help="comma list of labels (lard/r = lard with replicate: true); default all")
    ap.add_argument("--nodes", type=int, default=8, help="back-ends (default 8)")
    ap.add_argument("--objects", type=int, default=20000, help="distinct objects (default 20000)")
    ap.add_argument("--cache-pct", type=float, default=5.0,
                    help="LRU cache per node, %% of objects (default 5 -> 1000)")
    ap.add_argument("--alpha", type=float, default=0.8, help="Zipf exponent (default 0.8)")
    ap.add_argument("--requests", type=int, default=200000, help="requests per run (default 200000)")
    ap.add_argument("--workers", type=int, default=2, help="service slots per back-end (default 2)")
    ap.add_argument("--hit-ms", type=float, default=1.0)
    ap.add_argument("--miss-ms", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=0,
                    help="closed-loop clients (default clients-per-slot × nodes × workers)")
    ap.add_argument("--clients-per-slot", type=int, default=4,
                    help="default 4: 64 clients for 8×2, like run.py's 64 connections")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction not measured (default 0.2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sweep-nodes", default="", help="e.g. 1,2,4,8,16: the node sweep instead of the "
                    "single table (schedulers default to " + ",".join(cm.SWEEP_LABELS) + ")")
    ap.add_argument("--sensitivity", action="store_true",
                    help="instead of the table: lard t_high, lblc capacity and chash balance_factor "
                    "variants on the main and the skew workload")
    ap.add_argument("--skew-alpha", type=float, default=1.2, help="skew case Zipf α (default 1.2)")
    ap.add_argument("--skew-objects", type=int, default=5000, help="skew case objects (default 5000)")
    ap.add_argument("--no-skew", action="store_true", help="leave out the skew case")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="wall-clock guard per run")
    ap.add_argument("--default-options", action="store_true",
                    help="use the schedulers' default options instead of load-sized ones")
    ap.add_argument("--option", action="append", default=[], metavar="LABEL.KEY=VALUE",
                    help="set a scheduler option, e.g. lard.t_high=16 (repeatable)")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cmdline = shlex.join([sys.executable] + sys.argv)
    cfg = Config(nodes=args.nodes, objects=args.objects,
                 cache=max(1, round(args.objects * args.cache_pct / 100)), alpha=args.alpha,
                 requests=args.requests, workers=args.workers, hit_ms=args.hit_ms,
                 miss_ms=args.miss_ms, clients=args.clients, clients_per_slot=args.clients_per_slot,
                 warmup=args.warmup, seed=args.seed, max_seconds=args.max_seconds,
                 sized=not args.default_options,
                 overrides=cm.parse_overrides(args.option))
    sweep = [int(x) for x in args.sweep_nodes.split(",") if x.strip()]
    explicit = "--schedulers" in " ".join(sys.argv)
    labels = cm.parse_labels(args.schedulers if explicit or not sweep else ",".join(cm.SWEEP_LABELS))
    labels, missing = cm.available(labels)
    for m in missing:
        log(f"# {m}")
    if not labels:
        log("error: none of the requested schedulers exist")
        return 1

    parts = ["## l7switch locality simulation", "", f"Command: `{cmdline}`", ""]
    if missing:
        parts += ["Skipped: " + "; ".join(missing), ""]
    t0 = time.perf_counter()
    skew = Config(**{**cfg.__dict__, "alpha": args.skew_alpha, "objects": args.skew_objects,
                     "cache": max(1, round(args.skew_objects * args.cache_pct / 100))})
    if args.sensitivity:
        log("# option sensitivity: ~28 runs")
        parts.append(run_sensitivity(cfg, skew, log))
        args.no_skew = True
    elif sweep:
        log(f"# sweep over N={sweep}: {len(sweep) * len(labels)} runs of {cfg.requests} requests")
        parts.append(run_sweep(cfg, sweep, labels, log))
    else:
        log(f"# {len(labels)} runs of {cfg.requests} requests")
        text, _ = run_table(cfg, labels, "One configuration", log)
        parts.append(text)
    if not args.no_skew:
        skew_labels = [lab for lab in (labels if explicit else cm.SKEW_LABELS)
                       if cm.base_name(lab) in cm.SCHEDULERS]
        text, _ = run_table(skew, skew_labels, f"Skew case (α={skew.alpha}, {skew.objects} objects)", log)
        parts.append(text)
    parts.append(f"_Simulated in {time.perf_counter() - t0:.0f} s wall clock._\n")
    report = "\n".join(parts)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        log(f"# written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
