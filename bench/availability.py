#!/usr/bin/env python3
"""Availability benchmark (issue 9, "Measure"): l7switch and HAProxy side by side.

Scenarios (``--scenarios``, default all):

* kill     three origins behind the proxy (HTTP checks every 1 s, rise 2, fall 3, slow start 10 s;
           l7switch ``wrr``, HAProxy ``balance roundrobin``); wrk -c50; one origin is SIGKILLed,
           then restarted. Client-visible errors, time until marked down / back up, requests sent
           to it while down, and its per-second share during slow start.
* hung     one of three origins starts to accept and never answer. (a) active HTTP checks only
           (every 2 s, timeout 1 s, rise 2, fall 3): time until marked down; (b) passive checks
           only: how many client requests paid ``timeout server`` (2 s) before the ejection.
* maxconn  one origin answering after 200 ms behind ``maxconn 2``: the most requests it ever
           had at once under 20 clients; then a 2 s origin with a 0.5 s queue timeout: 503s, and
           whether they carry Retry-After.
* cost     l7switch's rps at 100 B with active checks on 3 servers vs none (nginx origin),
           alternating runs, median of each.

Every origin here is a small uvloop server in its own process (avail_procs.py ``_origin``); it
counts the requests it gets per 0.1 s, the health checks it answers, and the most requests it
held at once. l7switch runs through avail_procs.py's ``_l7switch`` wrapper: the ordinary
``l7switch run``, plus a unix socket that answers ``Switch.snapshot()`` as JSON, which the
benchmark polls every 0.1 s as it polls HAProxy's stats socket (``show stat``).

Usage:  .venv/bin/python bench/availability.py [--scenarios kill,hung,maxconn,cost]
                                               [--proxies l7switch,haproxy] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as bl
from avail_harness import (Env, OUT_DIR, Origin, PROXIES, Poller, Pool, Proxy, REPO, SCENARIOS,
                           delta, finish_wrk, first_when, get_once, kill_origin, log, parse_wrk,
                           run_clients, sleep_until, start_origin, start_proxy, start_wrk,
                           stop_proxy, wait_all_up)


# =========================================================================== scenarios

@dataclass
class Result:
    scenario: str
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[str, list[str]]] = field(default_factory=list)  # (metric, a value per column)
    notes: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # more markdown (the share table)
    data: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| | " + " | ".join(self.columns) + " |",
                 "|---|" + "---:|" * len(self.columns)]
        for metric, vals in self.rows:
            lines.append(f"| {metric} | " + " | ".join(vals) + " |")
        for e in self.extra:
            lines += ["", e]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def table(res: Result, runs: dict[str, dict[str, Any]], spec: list[tuple[str, str, Callable[[Any], str]]]) -> None:
    """Rows from each run's dict: (metric label, key, formatter)."""
    res.columns = list(runs)
    for label, key, fmt in spec:
        vals = []
        for r in runs.values():
            v = r.get(key)
            vals.append("–" if v is None else fmt(v))
        res.rows.append((label, vals))


def s_(v: float) -> str:
    return f"{v:.1f} s"


def i_(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


LABEL = {"l7switch": "l7switch", "haproxy": "HAProxy"}


# --------------------------------------------------------------------------- kill


def scenario_kill(env: Env) -> Result:
    a = env.args
    interval, rise, fall = a.kill_interval, 2, 3
    res = Result("kill", f"Kill one of three servers under load (wrk -c{a.kill_connections}, {a.kill_duration:g} s; "
                         f"SIGKILL at {a.kill_at:g} s, restart at {a.restart_at:g} s)")
    runs: dict[str, dict[str, Any]] = {}
    shares: dict[str, list[str]] = {}
    for variant in a.kill_variants:
        for kind in a.proxies:
            col = f"{LABEL[kind]} ({'active' if variant == 'active' else 'active + passive'})"
            log(f"kill: {col}")
            r, share = kill_once(env, kind, variant, interval, rise, fall)
            runs[col] = r
            shares[col] = share
    table(res, runs, [
        ("requests (rps)", "req", str),
        ("client-visible errors (wrk non-2xx + socket errors)", "errors", str),
        ("requests in flight to the killed server at the kill (proxy's count)", "inflight_at_kill", i_),
        ("marked down after the kill", "t_down", s_),
        ("sent to it between kill and down (failed, then retried)", "sent_before_down", i_),
        (f"sent to it from kill + fall × interval ({fall * interval:g} s) to restart", "sent_after_fall", i_),
        ("marked up after restart (its port open)", "t_up", s_),
        (f"its rise-th ({rise}) passing check after restart", "t_rise_check", s_),
        ("its first client request after restart", "t_first", s_),
        ("client requests it got before its rise-th passing check", "before_rise", i_),
    ])
    # Per-second share of the restarted server, from its own counts (all three origins count).
    n = max((len(v) for v in shares.values()), default=0)
    if n:
        cols = list(shares)
        lines = ["Share of all requests that reached the restarted server, per second after its first request "
                 f"(slow start {a.slow_start:g} s; an equal share is 33 %; before the kill: "
                 + ", ".join(f"{c} {runs[c].get('share_before', '–')}" for c in cols) + "):", "",
                 "| second | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
        for i in range(n):
            lines.append(f"| {i + 1} | " + " | ".join(shares[c][i] if i < len(shares[c]) else "–" for c in cols) + " |")
        res.extra.append("\n".join(lines))
    res.notes += [
        (f"Checks: HTTP GET /health every {interval:g} s, timeout {interval / 2:g} s, rise {rise}, fall {fall}; "
        f"slow start {a.slow_start:g} s. l7switch `scheduler: wrr` (slow start gates rr/wrr by turns: the "
        "ramping server takes only `ramp` of its turns; plain `rr` ignores weights); HAProxy "
        "`balance roundrobin` + `slowstart` (dynamic weights)."),
        ("'active + passive': l7switch's default passive checks (`observe: layer4, error_limit: 5`) and "
        "HAProxy `observe layer4 error-limit 5 on-error mark-down`; 'active': `passive: off` / no observe."),
        ("Retries: l7switch `retries: 2` (its default; another server, after a failed connect or an empty "
        "answer to an idempotent request); HAProxy `retries 2`, `option redispatch 1`, "
        "`retry-on conn-failure empty-response`."),
        ("Times come from polling each proxy every 0.1 s (l7switch: `Switch.snapshot()` over a unix socket; "
        "HAProxy: `show stat`), relative to the kill / to the restarted origin's port opening; "
        "check times come from the origin's own log of the checks it answered."),
        "HAProxy counts sessions per server (`stot`, `econ`+`eresp`), l7switch requests (`total`, `failures`).",
    ]
    res.data = {"runs": runs, "shares": shares}
    return res


def kill_once(env: Env, kind: str, variant: str, interval: float, rise: int, fall: int
              ) -> tuple[dict[str, Any], list[str]]:
    a = env.args
    tag = f"kill-{variant}"
    origins = [start_origin(env, f"{tag}-{kind}-s{i}") for i in (1, 2, 3)]
    names = ["s1", "s2", "s3"]
    pool = Pool(list(zip(names, [o.port for o in origins])),
                health={"interval": interval, "timeout": interval / 2, "rise": rise, "fall": fall},
                passive="layer4" if variant == "passive" else "off", slow_start=a.slow_start)
    proxy = start_proxy(env, kind, tag, pool)
    r: dict[str, Any] = {}
    share: list[str] = []
    poller = Poller(proxy.source)
    victim = origins[1]
    restarted: Origin | None = None
    try:
        if not wait_all_up(proxy.source, names):
            r["note"] = "servers not all up at start"
        if (st := get_once(proxy.port)) != 200:
            raise RuntimeError(f"{proxy.name}: GET /100b -> {st}")
        poller.start()
        wrk = start_wrk(env, proxy.port, a.kill_duration, a.kill_connections)
        t0 = time.time()
        sleep_until(t0 + a.kill_at)
        before = proxy.source.sample() or {}
        t_kill = kill_origin(env, victim)
        env.procs.stop(victim.proc_name)
        sleep_until(t0 + a.restart_at)
        restarted = start_origin(env, victim.name, port=victim.port, tag="-restarted")
        t_restart = time.time()  # its port accepts (start_origin waited for it)
        text = finish_wrk(wrk, a.kill_duration)
        time.sleep(0.3)
    finally:
        if poller.is_alive():
            poller.stop()
        stop_proxy(env, proxy)
        for o in origins + ([restarted] if restarted else []):
            if o is not victim:
                env.procs.stop(o.proc_name)
    env.note(f"{proxy.name} wrk", text)
    series = poller.series
    w = parse_wrk(text)
    r["req"] = f"{w['requests']:,} ({w['rps']:,.0f})" if w["rps"] else str(w["requests"])
    r["errors"] = f"{w['errors']}" + (f" ({w['non2xx']} non-2xx, " + ", ".join(
        f"{k} {v}" for k, v in w["socket"].items() if v) + ")" if w["errors"] else "")
    r["errors"] = r["errors"].replace(", )", ")")
    r["inflight_at_kill"] = before.get("s2", {}).get("inflight")
    t_down = first_when(series, t_kill, lambda s: s.get("s2", {}).get("state") == "down")
    r["t_down"] = None if t_down is None else t_down - t_kill
    if t_down is not None:
        r["sent_before_down"] = delta(series, "s2", "total", t_kill, t_down, from_before=True)
    t_up = first_when(series, t_restart, lambda s: s.get("s2", {}).get("state") == "up")
    r["t_up"] = None if t_up is None else t_up - t_restart
    r["sent_after_fall"] = delta(series, "s2", "total", t_kill + fall * interval, t_restart)
    # The restarted origin's own counts.
    st = restarted.read() if restarted else {}
    checks = sorted(st.get("health", []))
    if len(checks) >= rise:
        r["t_rise_check"] = checks[rise - 1] - t_restart
    first = st.get("first_traffic")
    if first:
        r["t_first"] = first - t_restart
        if len(checks) >= rise:
            r["before_rise"] = sum(c for k, c in st.get("buckets", {}).items() if (int(k) + 1) / 10 <= checks[rise - 1])
            # a bucket straddling the check is not counted as "before": the first request's time decides
            if first < checks[rise - 1]:
                r["before_rise"] = max(1, r["before_rise"])
        # Per-second share: all three origins' buckets (the victim's restarted process for s2).
        others = [o.read().get("buckets", {}) for o in (origins[0], origins[2])]
        mine = st.get("buckets", {})

        def count(b: dict[str, int], lo: float, hi: float) -> int:
            return sum(c for k, c in b.items() if lo <= int(k) / 10 < hi)

        for i in range(int(a.slow_start) + 3):
            lo = int(first * 10) / 10 + i
            hi = lo + 1
            if hi > t0 + a.kill_duration:
                break
            m = count(mine, lo, hi)
            tot = m + sum(count(b, lo, hi) for b in others)
            share.append(f"{100 * m / tot:.1f} %" if tot else "–")
        # Before the kill, for reference: the victim's first process counted too.
        vb = victim.read().get("buckets", {})
        lo, hi = t0 + 2, t0 + a.kill_at - 0.5
        m = count(vb, lo, hi)
        tot = m + sum(count(b, lo, hi) for b in others)
        r["share_before"] = f"{100 * m / tot:.1f} %" if tot else "–"
    r["series_tail"] = [(round(t - t_kill, 2), s.get("s2")) for t, s in series
                        if t_kill - 0.3 <= t <= t_kill + 1.0 or t_restart - 0.2 <= t <= t_restart + 3]
    return r, share


# --------------------------------------------------------------------------- hung


def scenario_hung(env: Env) -> Result:
    a = env.args
    res = Result("hung", f"A server that accepts and never answers ({a.hung_clients} clients, {a.hung_duration:g} s, "
                         f"hangs at {a.hung_at:g} s; `timeout server` {a.server_timeout:g} s)")
    runs: dict[str, dict[str, Any]] = {}
    plans = []
    for variant in a.hung_variants:
        for kind in a.proxies:
            plans.append((variant, kind, "layer4"))
            if variant == "passive" and kind == "haproxy" and not a.no_haproxy_layer7:
                plans.append((variant, kind, "layer7"))
    for variant, kind, observe in plans:
        if variant == "active":
            col = f"{LABEL[kind]} (a) active"
            pool_kw: dict[str, Any] = {"health": {"interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3}, "passive": "off"}
        else:
            col = f"{LABEL[kind]} (b) passive {observe}"
            pool_kw = {"health": None, "passive": observe}
        log(f"hung: {col}")
        runs[col] = hung_once(env, kind, f"hung-{variant}-{observe}", pool_kw)
    table(res, runs, [
        ("requests: answered 2xx / total", "answered", str),
        ("marked down after it hung", "t_down", lambda v: s_(v) if isinstance(v, float) else v),
        (f"client requests that paid the timeout (≥ {a.server_timeout * 0.9:g} s or 504)", "paid", i_),
        ("… of which answered 504 / other errors", "paid_kinds", str),
        ("… of which started after it was marked down", "paid_after_down", i_),
        ("(a) health checks it got between hanging and marked down", "checks_hung", i_),
    ])
    res.notes += [
        ("(a): HTTP GET /health every 2 s, timeout 1 s, rise 2, fall 3 (HAProxy `check inter 2s rise 2 fall 3`, "
        "`timeout check 1s`); passive checks off on both."),
        ("(b): no active check. l7switch `passive: {observe: layer4, error_limit: 5}`: a response-head timeout "
        "counts as a layer-4 failure. HAProxy `observe layer4 error-limit 5 on-error mark-down`: HAProxy's "
        "`observe` requires `check`, so a TCP check with `inter 1h` is configured (it passes on a hung server and "
        "never runs again within the run). HAProxy's layer4 mode counts only connection outcomes (its docs: "
        "'only successful/unsuccessful tcp connections are significant'), so a server that accepts and "
        "never answers is never ejected; `observe layer7` counts the read timeout — its row is shown too."),
        "A request that paid the timeout is not retried by either proxy (it may have reached the server).",
    ]
    res.data = {"runs": runs}
    return res


def hung_once(env: Env, kind: str, tag: str, pool_kw: dict[str, Any]) -> dict[str, Any]:
    a = env.args
    origins = [start_origin(env, f"{tag}-{kind}-s{i}") for i in (1, 2, 3)]
    names = ["s1", "s2", "s3"]
    pool = Pool(list(zip(names, [o.port for o in origins])), server_timeout=a.server_timeout, **pool_kw)
    proxy = start_proxy(env, kind, tag, pool)
    victim = origins[1]
    poller = Poller(proxy.source)
    hung_at: list[float] = []

    def hang() -> None:
        os.kill(victim.proc.pid, signal.SIGUSR1)
        hung_at.append(time.time())

    try:
        wait_all_up(proxy.source, names)
        if (st := get_once(proxy.port)) != 200:
            raise RuntimeError(f"{proxy.name}: GET /100b -> {st}")
        poller.start()
        recs, t0 = run_clients(proxy.port, a.hung_clients, a.hung_duration, timeout=a.server_timeout + 8,
                               at_times=[(a.hung_at, hang)])
        time.sleep(0.3)
    finally:
        if poller.is_alive():
            poller.stop()
        stop_proxy(env, proxy)
        for o in origins:
            env.procs.stop(o.proc_name)
    t_hang = hung_at[0]
    r: dict[str, Any] = {}
    ok = sum(1 for x in recs if isinstance(x.status, int) and 200 <= x.status < 300)
    r["answered"] = f"{ok:,} / {len(recs):,}"
    t_down = first_when(poller.series, t_hang, lambda s: s.get("s2", {}).get("state") == "down")
    r["t_down"] = t_down - t_hang if t_down is not None else f"never (in {t0 + a.hung_duration - t_hang:.0f} s)"
    paid = [x for x in recs if x.status == 504 or (x.end - x.start) >= a.server_timeout * 0.9]
    r["paid"] = len(paid)
    n504 = sum(1 for x in paid if x.status == 504)
    other = [x.status for x in paid if x.status != 504]
    r["paid_kinds"] = f"{n504} / {len(other)}" + (f" ({', '.join(sorted({str(s) for s in other}))})" if other else "")
    r["paid_after_down"] = sum(1 for x in paid if t_down is not None and x.start > t_down)
    st = victim.read()
    if pool_kw.get("health"):
        hung_checks = [t for t in st.get("health_hung", []) if t_down is None or t <= t_down]
        r["checks_hung"] = len(hung_checks)
    errors = {}
    for x in recs:
        if not (isinstance(x.status, int) and 200 <= x.status < 300):
            errors[str(x.status)] = errors.get(str(x.status), 0) + 1
    r["statuses"] = errors
    r["victim_received_after_hang"] = st.get("received", 0)
    env.note(f"{proxy.name} non-2xx outcomes", json.dumps(errors))
    return r


# --------------------------------------------------------------------------- maxconn


def scenario_maxconn(env: Env) -> Result:
    a = env.args
    res = Result("maxconn", f"maxconn 2 with {a.maxconn_clients} concurrent clients ({a.maxconn_duration:g} s each)")
    runs: dict[str, dict[str, Any]] = {}
    for kind in a.proxies:
        col = LABEL[kind]
        log(f"maxconn: {col}")
        r = maxconn_once(env, kind, delay=0.2, queue_timeout=None, tag="maxconn")
        r2 = maxconn_once(env, kind, delay=2.0, queue_timeout=0.5, tag="qexpiry")
        runs[col] = {**r, **{f"q_{k}": v for k, v in r2.items()}}
    table(res, runs, [
        ("200 ms origin: most requests it had at once", "max_conc", i_),
        ("… answered 200 / total", "answered", str),
        ("… 503s", "n503", i_),
        ("… latency p50 / max", "lat", str),
        ("2 s origin, queue timeout 0.5 s: most requests it had at once", "q_max_conc", i_),
        ("… answered 200 / total", "q_answered", str),
        ("… 503s (with Retry-After)", "q_n503", str),
        ("… time to the 503, median (min–max)", "q_lat503", str),
    ])
    res.notes += [
        ("l7switch: pool `maxconn: 2` (+ `queue: {timeout: 500ms}` for the second run; default 5 s for the first); "
        "HAProxy: `server ... maxconn 2`, `timeout queue 500ms` / `5s`."),
        "The concurrency is counted by the origin itself (requests received and not yet answered).",
        "HAProxy's 503 carries no Retry-After by default; l7switch's queue 503 does (the queue timeout, rounded up to 1 s).",
    ]
    res.data = {"runs": runs}
    return res


def maxconn_once(env: Env, kind: str, delay: float, queue_timeout: float | None, tag: str) -> dict[str, Any]:
    a = env.args
    o = start_origin(env, f"{tag}-{kind}-s1", mode="slow", delay=delay)
    pool = Pool([("s1", o.port)], maxconn=2, queue_timeout=queue_timeout)
    proxy = start_proxy(env, kind, tag, pool)
    try:
        recs, _ = run_clients(proxy.port, a.maxconn_clients, a.maxconn_duration, timeout=10.0)
        time.sleep(0.3)
    finally:
        stop_proxy(env, proxy)
        env.procs.stop(o.proc_name)
    st = o.read()
    ok = [x for x in recs if x.status == 200]
    e503 = [x for x in recs if x.status == 503]
    lat = sorted(x.end - x.start for x in ok)
    r = {
        "max_conc": st.get("max_conc"),
        "answered": f"{len(ok)} / {len(recs)}",
        "n503": len(e503),
        "lat": f"{statistics.median(lat):.2f} s / {lat[-1]:.2f} s" if lat else "–",
    }
    if queue_timeout is not None:
        r["n503"] = f"{len(e503)} ({sum(1 for x in e503 if x.retry_after)})"
        lat503 = [x.end - x.start for x in e503]
        r["lat503"] = (f"{statistics.median(lat503):.2f} s ({min(lat503):.2f}–{max(lat503):.2f})"
                       if lat503 else "–")
    other = {}
    for x in recs:
        if x.status not in (200, 503):
            other[str(x.status)] = other.get(str(x.status), 0) + 1
    if other:
        r["other"] = other
        env.note(f"{proxy.name} other outcomes", json.dumps(other))
    return r


# --------------------------------------------------------------------------- cost


def cost_origin(env: Env, ports: list[int]) -> None:
    """nginx on three ports: /100b (bench/run.py's file) and /health."""
    bl.write_origin(env.tmp, ports[0])  # the www files
    conf = env.tmp / "cost-origin.conf"
    listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    conf.write_text(bl.nginx_common(env.tmp).replace("NAME", "cost-origin") + f"""
http {{
  access_log off;
{bl.nginx_http_paths(env.tmp, "cost-origin")}
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  keepalive_timeout 300s;
  server {{
{listens}
    root {env.tmp / "www"};
    location = /health {{ return 200 "ok\\n"; }}
  }}
}}
""")
    proc = env.procs.start("cost-origin", [env.tools["nginx"], "-p", str(env.tmp), "-c", str(conf)])
    for p in ports:
        if err := bl.wait_port(p, proc):
            raise RuntimeError(f"cost origin: {err}\n{env.procs.log_tail('cost-origin')}")


def scenario_cost(env: Env) -> Result:
    a = env.args
    kinds = ["l7switch"] + (["haproxy"] if a.cost_haproxy and "haproxy" in a.proxies else [])
    res = Result("cost", f"Cost of active checks: rps at 100 B, checks on 3 servers vs none "
                         f"(wrk -c{a.cost_connections} -d{a.cost_duration:g}s, {a.cost_repeat} alternating runs, median)")
    ports = [bl.free_port() for _ in range(3)]
    cost_origin(env, ports)
    names = ["s1", "s2", "s3"]
    health = {"interval": a.cost_interval, "timeout": min(1.0, a.cost_interval / 2), "rise": 2, "fall": 3}
    proxies: dict[str, Proxy] = {}
    runs: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds:
            for on in (True, False):
                pool = Pool(list(zip(names, ports)), health=health if on else None,
                            passive="layer4" if kind == "l7switch" else "off", scheduler="rr")
                p = start_proxy(env, kind, f"cost-{'on' if on else 'off'}", pool)
                if (st := get_once(p.port)) != 200:
                    raise RuntimeError(f"{p.name}: GET /100b -> {st}")
                proxies[f"{kind}-{'on' if on else 'off'}"] = p
        pids = {n: next(pr.pid for nm, pr, *_ in env.procs.procs if nm == p.name) for n, p in proxies.items()}
        samples: dict[str, list[tuple[float, float]]] = {n: [] for n in proxies}
        for rep in range(a.cost_repeat):
            for kind in kinds:
                order = ("on", "off") if rep % 2 == 0 else ("off", "on")
                for which in order:
                    n = f"{kind}-{which}"
                    p = proxies[n]
                    if a.cost_warmup > 0:
                        finish_wrk(start_wrk(env, p.port, a.cost_warmup, a.cost_connections), a.cost_warmup)
                    c0 = bl.cpu_seconds(pids[n])
                    text = finish_wrk(start_wrk(env, p.port, a.cost_duration, a.cost_connections), a.cost_duration)
                    c1 = bl.cpu_seconds(pids[n])
                    w = parse_wrk(text)
                    cpu = (c1 - c0) / w["requests"] * 1e6 if w["requests"] else float("nan")
                    samples[n].append((w["rps"] or 0.0, cpu))
                    log(f"cost {n} [{rep + 1}/{a.cost_repeat}]: {w['rps']} rps, {cpu:.1f} µs/req, errors {w['errors']}")
                    env.note(f"cost {n} run {rep + 1}", text)
    finally:
        for p in proxies.values():
            stop_proxy(env, p)
        env.procs.stop("cost-origin")
    for kind in kinds:
        on, off = samples[f"{kind}-on"], samples[f"{kind}-off"]
        rps_on, rps_off = statistics.median(x for x, _ in on), statistics.median(x for x, _ in off)
        cpu_on, cpu_off = statistics.median(c for _, c in on), statistics.median(c for _, c in off)
        runs[LABEL[kind]] = {
            "rps_on": f"{rps_on:,.0f}", "rps_off": f"{rps_off:,.0f}",
            "ratio": f"{rps_on / rps_off:.3f}" if rps_off else "–",
            "cpu": f"{cpu_on:.1f} / {cpu_off:.1f}",
            "cpu_ratio": f"{cpu_on / cpu_off:.3f}" if cpu_off else "–",
            "all_on": ", ".join(f"{x:,.0f}" for x, _ in on), "all_off": ", ".join(f"{x:,.0f}" for x, _ in off),
        }
    table(res, runs, [
        ("rps, checks on (median)", "rps_on", str),
        ("rps, no checks (median)", "rps_off", str),
        ("on ÷ off (target ≥ 0.97)", "ratio", str),
        ("CPU µs/request on / off (median)", "cpu", str),
        ("CPU per request on ÷ off", "cpu_ratio", str),
        ("runs, checks on", "all_on", str),
        ("runs, no checks", "all_off", str),
    ])
    res.notes += [
        (f"Checks: HTTP GET /health on each of the 3 servers every {a.cost_interval:g} s. Origin: one nginx "
        "listening on 3 ports, serving bench/run.py's 100 B file. Scheduler rr; both instances run throughout, "
        "measured in alternation (on/off, then off/on, ...). rps moves by ±5 % from run to run on this "
        "shared 2-core box (wrk, nginx and the switch compete); CPU per request is the steadier figure."),
    ]
    res.data = {"runs": runs, "samples": samples}
    return res


# =========================================================================== main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list from {','.join(SCENARIOS)}")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="comma list from l7switch,haproxy")
    ap.add_argument("--quick", action="store_true",
                    help="shorter runs (kill 24 s, active variant only; hung 10 s; maxconn 3 s; cost 5 s × 2)")
    g = ap.add_argument_group("kill")
    g.add_argument("--kill-duration", type=float, default=30.0, help="wrk seconds (default 30)")
    g.add_argument("--kill-at", type=float, default=8.0, help="SIGKILL one origin at this second (default 8)")
    g.add_argument("--restart-at", type=float, default=16.0, help="restart it at this second (default 16)")
    g.add_argument("--kill-connections", type=int, default=50, help="wrk -c (default 50)")
    g.add_argument("--kill-interval", type=float, default=1.0, help="check interval, s (default 1)")
    g.add_argument("--slow-start", type=float, default=10.0, help="slow start, s (default 10)")
    g.add_argument("--kill-variants", default="active,passive",
                   help="active (passive checks off on both), passive (active + passive); default both")
    g = ap.add_argument_group("hung")
    g.add_argument("--hung-duration", type=float, default=15.0, help="seconds of load (default 15)")
    g.add_argument("--hung-at", type=float, default=3.0, help="the origin hangs at this second (default 3)")
    g.add_argument("--hung-clients", type=int, default=20, help="concurrent clients (default 20)")
    g.add_argument("--server-timeout", type=float, default=2.0, help="timeouts.server / timeout server (default 2)")
    g.add_argument("--hung-variants", default="active,passive", help="active, passive (default both)")
    g.add_argument("--no-haproxy-layer7", action="store_true", help="skip HAProxy's extra `observe layer7` run")
    g = ap.add_argument_group("maxconn")
    g.add_argument("--maxconn-duration", type=float, default=5.0, help="seconds per run (default 5)")
    g.add_argument("--maxconn-clients", type=int, default=20, help="concurrent clients (default 20)")
    g = ap.add_argument_group("cost")
    g.add_argument("--cost-duration", type=float, default=10.0, help="seconds per timed wrk run (default 10)")
    g.add_argument("--cost-warmup", type=float, default=2.0, help="warm-up seconds before each run (default 2)")
    g.add_argument("--cost-repeat", type=int, default=3, help="runs per setting, alternating (default 3)")
    g.add_argument("--cost-connections", type=int, default=50, help="wrk -c (default 50)")
    g.add_argument("--cost-interval", type=float, default=1.0, help="check interval, s (default 1)")
    g.add_argument("--cost-haproxy", action="store_true", help="also price HAProxy's checks (for scale)")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "availability.md",
                    help="markdown report (default bench/out/availability.md; .json and -raw.txt beside it)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, origin counts)")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo raw output (wrk, configs, transitions)")
    args = ap.parse_args()
    if args.quick:
        args.kill_duration, args.kill_at, args.restart_at = 24.0, 5.0, 11.0
        args.kill_variants = "active"
        args.hung_duration = 10.0
        args.maxconn_duration = 3.0
        args.cost_duration, args.cost_repeat, args.cost_warmup = 5.0, 2, 1.0
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.proxies = [p for p in args.proxies.split(",") if p]
    args.kill_variants = [v for v in args.kill_variants.split(",") if v]
    args.hung_variants = [v for v in args.hung_variants.split(",") if v]
    bad = ([s for s in args.scenarios if s not in SCENARIOS] + [p for p in args.proxies if p not in PROXIES]
           + [v for v in args.kill_variants + args.hung_variants if v not in ("active", "passive")])
    if bad:
        ap.error(f"unknown: {', '.join(bad)}")
    if not args.kill_at < args.restart_at < args.kill_duration:
        ap.error("need --kill-at < --restart-at < --kill-duration")
    cmdline = shlex.join([sys.executable] + sys.argv)
    log(f"command: {cmdline}")

    tools = bl.ensure_tools()
    bl.raise_nofile()
    bl.install_sigterm_handler()
    tmp = Path(tempfile.mkdtemp(prefix="l7avail-"))
    env = Env(args, tools, tmp)
    results: list[Result] = []
    failures: list[str] = []
    started = time.time()
    try:
        for name in args.scenarios:
            fn = {"kill": scenario_kill, "hung": scenario_hung, "maxconn": scenario_maxconn,
                  "cost": scenario_cost}[name]
            try:
                results.append(fn(env))
                print(results[-1].markdown(), flush=True)
            except RuntimeError as e:
                failures.append(f"{name}: {e}")
                log(f"{name} failed: {e}")
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        bl.cleanup(env.procs, tmp, args.keep_tmp)

    versions = _versions(tools)
    report = ["# l7switch availability benchmark", "", f"Command: `{cmdline}`", "",
              f"Environment: {versions}; total {time.time() - started:.0f} s", ""]
    report += [r.markdown() for r in results]
    for f in failures:
        report += ["", "## failed", "", "```", f, "```"]
    text = "\n".join(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({r.scenario: r.data for r in results}, indent=1, default=str))
    args.out.with_name(args.out.stem + "-raw.txt").write_text("\n".join(env.raw))
    log(f"written to {args.out} (+ .json, -raw.txt)")
    return 1 if failures else 0


def _versions(tools: dict[str, str]) -> str:
    def first(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return ((r.stdout + r.stderr).strip().splitlines() or ["?"])[0]
    ha = first([tools["haproxy"], "-v"]).split(" - ")[0].replace("HAProxy version ", "")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return (f"{len(os.sched_getaffinity(0))} cores, Python {sys.version.split()[0]}, HAProxy {ha}, "
            f"l7switch {commit or '?'}")


if __name__ == "__main__":
    sys.exit(main())
