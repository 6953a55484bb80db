"""Figures from one (attack, proxy) run, and the markdown tables."""
from __future__ import annotations

import re
import statistics
from typing import Any

from load import Window

CAP_RE = re.compile(r"(?i)connection cap (reached|cleared)|reached the configured maximum|maxconn|"
                    r"reached process FD limit")
LIMIT_RE = re.compile(r"(?i)per-client limit")
FD_RE = re.compile(r"(?i)out of file descriptors|too many open files|EMFILE|ENFILE")
ERR_RE = re.compile(r"Traceback|Task exception|OSError|\[ALERT\]")


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def figures(windows: list[Window], samples: list[dict[str, Any]], t0: float, duration: float,
            skip: float, attack: dict[str, Any], kind: str, log: str) -> dict[str, Any]:
    """rps ratio, p99, failures and outage for the normal clients; RSS and fds of the proxy."""
    base = [w for w in windows if w.start < t0 - 0.2]
    during = [w for w in windows if t0 - 0.2 <= w.start < t0 + duration]
    late = [w for w in during if w.start >= t0 + skip - 0.3]  # after the first `skip` s
    first = [w for w in during if w not in late]
    after = [w for w in windows if w.start >= t0 + duration]

    def rate(ws: list[Window]) -> float | None:
        span = sum(w.end - w.start for w in ws)
        return sum(w.ok for w in ws) / span if span else None

    base_rps = rate(base)
    base_p99 = _med([w.p99_ms for w in base if w.requests])
    r: dict[str, Any] = {"base_rps": base_rps, "base_p99_ms": base_p99}
    late_rps = rate(late)
    r["rps_ratio"] = late_rps / base_rps if base_rps and late_rps is not None else None
    ratios = [w.rps / base_rps for w in late] if base_rps else []
    r["worst_window_ratio"] = min(ratios) if ratios else None
    p99s = [w.p99_ms for w in late if w.requests]
    r["p99_median_ms"] = _med(p99s)
    r["p99_worst_ms"] = max(p99s) if p99s else None
    # A window with no answer at all has no p99: it counts as an outage, below.
    r["failed_first"] = sum(w.failed for w in first)
    r["failed_after_skip"] = sum(w.failed for w in late)
    r["outage_s"] = round(sum(w.end - w.start for w in during
                              if base_rps and w.rps < 0.1 * base_rps), 1)
    r["after_ratio"] = (rate(after) / base_rps) if base_rps and after and rate(after) is not None else None

    in_base = [s for s in samples if base and base[-1].start + 0.3 <= s["t"] <= base[-1].end]
    in_attack = [s for s in samples if t0 <= s["t"] <= t0 + duration + 1]
    fds_before = _med([s["fds"] for s in in_base if s["fds"] >= 0]) or 0
    r["fds_before"] = fds_before
    r["rss_before_mb"] = (_med([s["rss"] for s in in_base]) or 0) / 2**20
    if in_attack:
        r["fds_peak"] = max(s["fds"] for s in in_attack)
        r["rss_peak_mb"] = max(s["rss"] for s in in_attack) / 2**20
        open_peak = max(s.get("open", 0) for s in in_attack)
        r["attack_open_peak"] = open_peak
        # The attackers' counts are written every 0.5 s, the fds read every 0.25 s: judge fds per
        # upload at the busiest sample among those where (nearly) all uploads were open.
        full = [s for s in in_attack if s.get("open", 0) >= 0.95 * open_peak > 0]
        if kind == "upload" and full:
            peak = max(full, key=lambda s: s["fds"])
            r["open_at_fd_peak"] = peak["open"]
            r["fds_at_full"] = peak["fds"]
            r["fds_per_upload"] = (peak["fds"] - fds_before) / peak["open"]
    span = [s for s in samples if t0 + skip <= s["t"] <= t0 + duration]
    if len(span) >= 2:
        dt = span[-1]["t"] - span[0]["t"]
        # CPU of the proxy and of the whole machine (2 cores = 200%) over the judged span: wrk,
        # the attackers and anything else running on the machine share what the proxy leaves.
        r["proxy_cpu_pct"] = 100 * (span[-1]["cpu"] - span[0]["cpu"]) / dt
        r["machine_cpu_pct"] = 100 * (span[-1]["busy"] - span[0]["busy"]) / dt
    if attack.get("cpu_s"):
        r["attack_cpu_pct"] = 100 * attack["cpu_s"] / duration  # whole attack, ramp included
    lifetimes = attack.get("lifetimes") or []
    r["held_median_s"] = _med(lifetimes)
    r["attack"] = {k: v for k, v in attack.items() if k != "lifetimes"}
    lines = log.splitlines()
    r["cap_lines"] = [ln for ln in lines if CAP_RE.search(ln)][:20]
    r["cap_logged"] = sum(1 for ln in lines if CAP_RE.search(ln))
    r["limit_lines"] = sum(1 for ln in lines if LIMIT_RE.search(ln))
    r["fd_lines"] = sum(1 for ln in lines if FD_RE.search(ln))
    r["error_lines"] = sum(1 for ln in lines if ERR_RE.search(ln))
    r["error_sample"] = [ln for ln in lines if ERR_RE.search(ln)][:5]
    m = re.search(r"connection cap (\d+), derived from the fd limit (\d+)", log)
    r["derived_cap"] = f"{m.group(1)} (fd limit {m.group(2)})" if m else None
    r["other_sample"] = [ln for ln in lines if LIMIT_RE.search(ln) or FD_RE.search(ln)][:5]
    return r


def _n(v: float | None, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if v is None else fmt.format(v)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def row_cells(r: dict[str, Any]) -> list[str]:
    f = r["figures"]
    ratio = f.get("rps_ratio")
    p99b, p99m, p99w = f.get("base_p99_ms"), f.get("p99_median_ms"), f.get("p99_worst_ms")
    p99_ok = None if p99b is None or p99w is None else p99w <= 2 * p99b
    if f.get("rps_ratio") is not None and p99w is None:
        p99_ok = False
    fpu = f.get("fds_per_upload")
    cap = f.get("cap_logged", 0)
    return [
        r["attack_title"] + (f" *(scaled: {r['scaled']})*" if r.get("scaled") else ""),
        r["proxy_label"],
        _n(ratio) + _mark(None if ratio is None else ratio >= 0.8) + f" ({_n(f.get('worst_window_ratio'))})",
        f"{_n(p99b, '{:.1f}')} → {_n(p99m, '{:.1f}')} / {_n(p99w, '{:.1f}')}{_mark(p99_ok)}",
        f"{f.get('failed_after_skip', '–')}{_mark(f.get('failed_after_skip') == 0)} ({f.get('failed_first', '–')})",
        _n(f.get("outage_s"), "{:.0f}"),
        _n(f.get("after_ratio")),
        f"{_n(f.get('rss_before_mb'), '{:.0f}')} → {_n(f.get('rss_peak_mb'), '{:.0f}')}",
        f"{f.get('fds_before', 0):.0f} → {f.get('fds_peak', '–')}"
        + (f"; {fpu:.2f}/upload{_mark(fpu <= 2.5)}" if fpu is not None else ""),
        "; ".join(x for x in (
            f"cap: {cap} lines" if cap else "cap: no",
            f"per-client: {f['limit_lines']}" if f.get("limit_lines") else "",
            f"out of fds: {f['fd_lines']}" if f.get("fd_lines") else "",
            f"errors: {f['error_lines']}" if f.get("error_lines") else "") if x),
    ]


HEAD = ["attack (from other loopback addresses)", "proxy", "normal rps ÷ baseline (worst 2 s window)",
        "p99 ms: baseline → during median / worst window", "failed after 2 s (in first 2 s)",
        "outage s (windows < 10% of baseline)", "rps after ÷ baseline", "RSS MB: before → peak",
        "proxy fds: before → peak", "logged: cap, per-client, out of fds, errors (lines)"]

HEAD2 = ["attack", "proxy", "attack connections", "peak open", "closed by proxy", "answers seen",
         "connect errors", "median held s", "CPU %: proxy / attackers / machine (of 200)"]


def row2_cells(r: dict[str, Any]) -> list[str]:
    f = r["figures"]
    a = f.get("attack", {})
    ans = ", ".join(f"{k}: {v}" for k, v in sorted(a.get("answers", {}).items())) or "–"
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(a.get("connect_errors", {}).items())) or "–"
    return [r["attack_key"], r["proxy_label"], f"{r['conns']:,}", f"{f.get('attack_open_peak', 0):,}",
            f"{a.get('closed_by_peer', 0):,}", ans, errs, _n(f.get("held_median_s"), "{:.1f}"),
            (f"{_n(f.get('proxy_cpu_pct'), '{:.0f}')} / {_n(f.get('attack_cpu_pct'), '{:.0f}')} / "
            f"{_n(f.get('machine_cpu_pct'), '{:.0f}')}")]


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def render(runs: list[dict[str, Any]], meta: dict[str, Any], previous: list[dict[str, Any]]) -> str:
    """Runs in attack order, proxies side by side; rows from --compare below their attack."""
    order: list[str] = []
    for r in runs + previous:
        if r["attack_key"] not in order:
            order.append(r["attack_key"])
    rows, rows2 = [], []
    for key in order:
        for r in [x for x in runs if x["attack_key"] == key] + [x for x in previous if x["attack_key"] == key]:
            if r.get("error"):
                rows.append([r.get("attack_title", key), r["proxy_label"], f"**failed: {r['error'][:200]}**"]
                            + [""] * (len(HEAD) - 3))
                continue
            rows.append(row_cells(r))
            rows2.append(row2_cells(r))
    lines = [
        f"# Hostile clients: l7switch and HAProxy side by side ({meta['date']})", "",
        f"Command: `{meta['command']}`", "",
        (f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}. "
        f"Machine: {meta['machine']}."), "",
        table(HEAD, rows), "",
        "What the attackers saw:", "",
        table(HEAD2, rows2), "",
    ]
    lines += [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"
