#!/usr/bin/env python3
"""Hostile and greedy clients (issue 10, "Measure"): l7switch and HAProxy side by side.

For each attack and each proxy, in the same run: a fresh proxy in front of nginx serving 100 B;
normal clients (``wrk -t1 -c20`` from 127.0.0.1, in 2 s windows back to back) for a baseline,
then for the whole attack (30 s) and a short recovery; the attackers come from other loopback
addresses, in processes of at most 5,000 connections each (each raises its soft fd limit to the
hard one).

Attacks (``--attacks``, default all):

* idle      20,000 connections that never send a byte (50 per address from 127.10.0.0/16)
* upload    5,000 slow uploads: a POST head (Content-Length 1 MiB) to /upload, then 1 byte/s;
            a connection the proxy closes is opened again 1 s later
* head5k    5,000 slow request heads: a header line every 3 s, never the end; reopened when closed
* head1k    the same with 1,000
* one-addr  20,000 connections that never send a byte, all from 127.0.0.2

Both proxies get the same protection: header timeout 10 s (HAProxy ``timeout http-request``),
keep-alive 5 s, per client 100 connections and 1000 requests/s (burst 2000; HAProxy: a
stick-table on the source), client timeout 60 s; l7switch also ``min_body_rate: 500B/s``; HAProxy
``maxconn`` from the fd limit (2.5 fds a connection), l7switch its default cap. wrk's address is
exempt on both (``trusted`` / not tracked), so only attackers are limited. Keys the l7switch tree
does not know yet are dropped and named in the notes (a run on a tree from before the work).

Per attack and proxy: normal rps during the attack (after its first 2 s) ÷ baseline (target
≥ 0.8), p99 during vs baseline (target ≤ 2×), failed requests after the first 2 s (target 0),
seconds of outage, the proxy's RSS and fds at the peak (from /proc), fds per slow upload
(target ≤ 2.5), and whether the proxy logged its cap or limits.

Usage:  .venv/bin/python bench/hostile/run.py [--attacks idle,upload,head5k,head1k,one-addr]
            [--proxies l7switch,haproxy] [--duration 30] [--scale 1.0] [--compare OLD.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from load import WRK_LUA, Attack, AttackPlan, Sampler, alive, run_window
from proxies import BENCH, TREE, Settings, bl, log, log_text, start_origin, start_proxy, tool_versions
from report import figures, render

OUT = BENCH / "out" / "hostile.md"
PROXIES = ("l7switch", "haproxy")
ATTACKS = {
    "idle": AttackPlan("idle", "20,000 connections that never send a byte", "idle", 20000, False, False, 1.0),
    "upload": AttackPlan("upload", "5,000 slow uploads (1 MiB declared, 1 byte/s)", "upload", 5000,
                         False, True, 1.0),
    "head5k": AttackPlan("head5k", "5,000 slow request heads (a line every 3 s)", "head", 5000, False, True, 3.0),
    "head1k": AttackPlan("head1k", "1,000 slow request heads (a line every 3 s)", "head", 1000, False, True, 3.0),
    "one-addr": AttackPlan("one-addr", "20,000 connections from one address (never a byte)", "idle", 20000,
                           True, False, 1.0),
}


def one_run(args: argparse.Namespace, tools: dict[str, str], tmp: Path, procs: bl.Procs, origin: int,
            plan: AttackPlan, proxy_name: str, settings: Settings) -> dict[str, Any]:
    plan = dataclasses.replace(plan, conns=max(1, int(plan.conns * args.scale)))
    res: dict[str, Any] = {"attack_key": plan.key, "attack_title": plan.title, "proxy": proxy_name,
                           "proxy_label": proxy_name, "conns": plan.conns}
    if args.scale != 1.0:
        res["scaled"] = f"--scale {args.scale:g}: {plan.conns:,} connections"
    p = start_proxy(proxy_name, procs, tmp, tools, origin, settings)
    res.update(config=p.config_text, dropped_keys=p.dropped_keys, maxconn=p.maxconn)
    lua = tmp / "window.lua"
    lua.write_text(WRK_LUA)
    url = f"http://127.0.0.1:{p.port}/100b"
    sampler = Sampler(p.pid)
    sampler.start()
    attack: Attack | None = None
    windows = []
    try:
        run_window(tools["wrk"], lua, url, args.connections, 1.0)  # warm-up, not counted
        # The attacker processes start now (their interpreters' start-up stays out of the
        # baseline) and sleep until t0, when the baseline windows are over.
        t0 = time.time() + 1.5 + args.baseline_windows * (args.window + 0.15)
        attack = Attack(tmp, f"{plan.key}-{proxy_name}", plan, p.port, args.duration, t0,
                        args.attack_procs, args.reconnect_delay)
        sampler.attack = attack
        if plan.scaled:
            res["scaled"] = f"{attack.total:,} connections ({plan.scaled})"
        res["conns"] = attack.total
        time.sleep(1.0)
        for _ in range(args.baseline_windows):
            if time.time() + args.window > t0:
                break
            windows.append(run_window(tools["wrk"], lua, url, args.connections, args.window))
        time.sleep(max(0.0, t0 - time.time()))
        end = t0 + args.duration + args.recovery_windows * args.window
        while time.time() < end - 0.5 * args.window:
            windows.append(run_window(tools["wrk"], lua, url, args.connections, args.window))
            if not alive(p.pid):
                res["error"] = "proxy died during the attack"
                break
        problems = attack.wait()
        if problems:
            res["attack_problems"] = problems
        time.sleep(0.3)
    finally:
        if attack is not None:
            attack.kill()
        sampler.stop()
        text = log_text(procs, p)
        procs.stop(p.log_name)
    a = attack.read()
    res["figures"] = figures(windows, sampler.samples, t0, args.duration, args.skip, a, plan.kind, text)
    res["windows"] = [{"t": round(w.start - t0, 2), "dur": round(w.end - w.start, 2), "rps": round(w.rps),
                       "failed": w.failed, "p99_ms": w.p99_ms, "max_ms": w.max_ms, "error": w.error,
                       **{k: w.raw[k] for k in ("connect", "read", "write", "timeout", "status") if w.raw.get(k)}}
                      for w in windows]
    res["samples"] = [{"t": round(s["t"] - t0, 2), **{k: v for k, v in s.items() if k != "t"}}
                      for s in sampler.samples[::2]]
    res["log_lines"] = len(text.splitlines())
    res["log_tail"] = text.splitlines()[-20:]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma list from {','.join(ATTACKS)}")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="comma list from l7switch,haproxy")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of each attack (default 30)")
    ap.add_argument("--window", type=float, default=2.0, help="seconds per wrk window (default 2)")
    ap.add_argument("--baseline-windows", type=int, default=3, help="windows before the attack (default 3)")
    ap.add_argument("--recovery-windows", type=int, default=2, help="windows after it (default 2)")
    ap.add_argument("--skip", type=float, default=2.0, help="first seconds of the attack not judged (default 2)")
    ap.add_argument("--connections", type=int, default=20, help="normal clients: wrk -c (default 20)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every attack's size (quick tries)")
    ap.add_argument("--attack-procs", type=int, default=8, help="attacker processes at most per attack")
    ap.add_argument("--reconnect-delay", type=float, default=1.0,
                    help="a closed attack connection of upload/head is reopened after this (default 1 s)")
    ap.add_argument("--l7-max-connections", type=int, default=None,
                    help="limits.max_connections (default: not set, l7switch derives it)")
    ap.add_argument("--haproxy-maxconn", type=int, default=0, help="default: (hard fd limit - 200) / 2.5")
    ap.add_argument("--stallwatch", type=Path, help="l7switch: write its event-loop stalls (> 50 ms) and "
                    "the stacks seen during each to this file (bench/hostile/stallwatch/)")
    ap.add_argument("--compare", type=Path, help="an earlier run's .json: its l7switch rows shown as 'before'")
    ap.add_argument("--label", default="", help="appended to l7switch's name in the table (e.g. 'after')")
    ap.add_argument("--l7switch-tree", type=Path, help="measure the l7switch package of this source tree "
                    "(e.g. a `git worktree add /tmp/before <commit>`) instead of this one")
    ap.add_argument("--from-json", type=Path, help="run nothing: render this earlier run's .json again "
                    "(with --compare, --out)")
    ap.add_argument("--out", type=Path, default=OUT, help="markdown report (.json beside it)")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    if args.stallwatch:
        os.environ["L7SWITCH_STALLWATCH"] = str(args.stallwatch.resolve())
    attacks = [a for a in args.attacks.split(",") if a]
    proxies = [p for p in args.proxies.split(",") if p]
    bad = [a for a in attacks if a not in ATTACKS] + [p for p in proxies if p not in PROXIES]
    if bad:
        ap.error(f"unknown: {', '.join(bad)}")
    cmdline = shlex.join(["python", "bench/hostile/run.py"] + sys.argv[1:])
    if args.from_json:
        old = json.loads(args.from_json.read_text())
        write(args, old["runs"], old["meta"], compared(args, attacks))
        return 0
    log(f"command: {cmdline}")
    if args.l7switch_tree:
        TREE["path"] = args.l7switch_tree.resolve()
    settings = Settings(l7_max_connections=args.l7_max_connections, haproxy_maxconn=args.haproxy_maxconn)
    tools = bl.ensure_tools()
    soft, hard = bl.raise_nofile()
    bl.install_sigterm_handler()
    tmp = Path(tempfile.mkdtemp(prefix="l7hostile-"))
    procs = bl.Procs(tmp)
    runs: list[dict[str, Any]] = []
    try:
        origin = start_origin(procs, tmp, tools["nginx"])
        for key in attacks:
            for name in proxies:
                log(f"attack {key} on {name}")
                try:
                    r = one_run(args, tools, tmp, procs, origin, ATTACKS[key], name, settings)
                except RuntimeError as e:
                    r = {"attack_key": key, "attack_title": ATTACKS[key].title, "proxy": name,
                         "proxy_label": name, "error": str(e)}
                if name == "l7switch" and args.label:
                    r["proxy_label"] = f"l7switch ({args.label})"
                runs.append(r)
                f = r.get("figures", {})
                log(f"  {key}/{name}: rps ratio {f.get('rps_ratio')}, p99 {f.get('base_p99_ms')} -> "
                    f"{f.get('p99_worst_ms')}, failed {f.get('failed_after_skip')}, outage {f.get('outage_s')} s, "
                    f"fds {f.get('fds_before')} -> {f.get('fds_peak')}, rss {f.get('rss_peak_mb')}"
                    + (f" ERROR {r['error']}" if r.get("error") else ""))
                time.sleep(2)  # let the kernel settle the closed sockets
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        bl.cleanup(procs, tmp, args.keep_tmp)

    dropped = sorted({k for r in runs for k in r.get("dropped_keys", [])})
    notes = [
        (f"Normal clients: `wrk -t1 -c{args.connections} --timeout 2s` from 127.0.0.1 in {args.window:g} s windows "
        f"back to back, GET /100b; {args.baseline_windows} baseline windows, the attack ({args.duration:g} s), "
        f"{args.recovery_windows} windows after. 'failed' = wrk's connect/read/write errors, timeouts and non-2xx "
        "answers; a window that got nothing through counts in 'outage' (its requests were never sent or never "
        "answered, which wrk does not count as failures inside a 2 s window)."),
        ("rps ÷ baseline is over the attack after its first 2 s; worst = the lowest 2 s window. p99 'during' is the "
        "median and the worst of the windows' p99 after the first 2 s. Targets (issue 10): ≥ 0.8, p99 ≤ 2× "
        "baseline, 0 failed, ≤ 2.5 fds per slow upload."),
        ("Attackers: from 127.10.0.0/16, 50 connections per address (one-addr: all from 127.0.0.2), in processes "
        "of ≤ 5,000 connections each; upload and head attackers reopen a connection the proxy closes 1 s later; "
        "idle attackers do not. Every attacker resets its connections when its time is up."),
        ("fds per upload = (proxy fds at the peak − median fds in the last baseline window) ÷ uploads the "
        "attackers had open at that sample (connected, so some may still wait in the proxy's backlog)."),
        ("Protection on both: header 10 s, keep-alive 5 s, client 60 s, per client 100 connections and 1000 "
        f"req/s (burst 2000), wrk's address exempt; HAProxy maxconn "
        f"{next((r['maxconn'] for r in runs if r.get('maxconn')), '?')}"
        f" (`option splice-auto`, nbthread 1); l7switch max_connections "
        f"{args.l7_max_connections or 'default'}, min_body_rate 500B/s."),
        f"fd limits: soft {soft}, hard {hard} (each proxy and attacker raises its soft limit to the hard one).",
    ]
    caps = sorted({r["figures"]["derived_cap"] for r in runs if r.get("figures", {}).get("derived_cap")})
    if caps:
        notes.append(f"l7switch's derived connection cap: {', '.join(caps)}.")
    if dropped:
        notes.append(f"This l7switch tree refused the keys {', '.join(dropped)}: they were left out of its rule "
                     "file (a tree from before the self-protection work).")
    for r in runs:
        hung = [w for w in r.get("windows", []) if w.get("error")]
        if hung:
            notes.append(f"{r['attack_key']}/{r['proxy_label']}: wrk gave no summary in {len(hung)} window(s) "
                         f"(killed 10 s late: {hung[0]['error']}); counted as outage, not as failures.")
        kinds: dict[str, int] = {}
        for w in r.get("windows", []):
            for k in ("connect", "read", "write", "timeout", "status"):
                kinds[k] = kinds.get(k, 0) + w.get(k, 0)
        if any(kinds.values()):
            notes.append(f"{r['attack_key']}/{r['proxy_label']}: wrk's failures by kind over the run: "
                         + ", ".join(f"{k} {v}" for k, v in kinds.items() if v))
        if r.get("attack_problems"):
            notes.append(f"{r['attack_key']}/{r['proxy']}: {'; '.join(r['attack_problems'])}")
        caps = r.get("figures", {}).get("cap_lines")
        if caps:
            notes.append(f"{r['attack_key']}/{r['proxy']} logged: `{caps[0][:160]}`"
                         + (f" (+{len(caps) - 1} more)" if len(caps) > 1 else ""))
        errs = r.get("figures", {}).get("error_sample")
        if errs:
            notes.append(f"{r['attack_key']}/{r['proxy']} errors logged "
                         f"({r['figures']['error_lines']} lines), e.g. `{errs[0][:160]}`")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": cmdline, "versions": tool_versions(tools),
            "machine": f"{__import__('os').cpu_count()} cores", "notes": notes, "soft": soft, "hard": hard}
    write(args, runs, meta, compared(args, attacks))
    return 0


def compared(args: argparse.Namespace, attacks: list[str]) -> list[dict[str, Any]]:
    """--compare: the l7switch rows of an earlier run, labelled 'before (its revision)'."""
    previous: list[dict[str, Any]] = []
    if args.compare:
        old = json.loads(args.compare.read_text())
        for r in old["runs"]:
            if r["proxy"] == "l7switch" and r["attack_key"] in attacks:
                rev = old["meta"]["versions"].get("l7switch", "?").split()[0]
                r["proxy_label"] = f"l7switch before ({rev})"
                previous.append(r)
    return previous


def write(args: argparse.Namespace, runs: list[dict[str, Any]], meta: dict[str, Any],
          previous: list[dict[str, Any]]) -> None:
    md = render(runs, meta, previous)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    if not args.from_json or args.from_json.resolve() != args.out.with_suffix(".json").resolve():
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1, default=str))
    log(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    sys.exit(main())
