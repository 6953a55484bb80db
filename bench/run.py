#!/usr/bin/env python3
"""Side-by-side throughput/latency/CPU benchmark: HAProxy vs nginx vs l7switch.

All proxies sit in front of the same origin (nginx serving static files).
For every (size, proxy) pair we run `wrk -t1 -cC -dDs --latency` after a short
warm-up, and charge the proxy's CPU time (utime+stime over its process tree,
from /proc) to the requests wrk completed -> CPU microseconds per request.

Usage:  python bench/run.py [--duration 10] [--sizes 100b,10k,1m]
                            [--proxies direct,haproxy,nginx,l7switch] [--connections 50]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as bl

ALL_PROXIES = ("direct", "haproxy", "nginx", "l7switch")
BASELINE = "l7switch@base"  # --baseline DIR: another l7switch source tree, measured in the same run
BASELINE_DIR: Path | None = None
LOGGED = "l7switch+log"  # --access-log FORMAT: l7switch with its access log to a file, same run
MONITORED = "l7switch+mon"  # --monitor: l7switch watched by the monitor in chromium and a scraper
FEATURED = "l7switch+all"  # --features: a typical site's configuration (benchlib.FEATURES), same run
#: --build DIR: every l7switch row runs the package in DIR (e.g. build/compiled, `make compiled`).
BUILD_DIR: Path | None = None
MON_PORTS: dict[str, int] = {}
#: --workers N: l7switch with ``workers: N`` and HAProxy with ``nbthread N``, beside the one-process ones
STEERING = "address"  # --worker-steering
ACCESS_FORMAT = "combined"
SCHEDULER = "rr"  # the l7switch pool's scheduler (--scheduler)
PERSISTENCE = "none"  # the l7switch pool's persistence (--persistence)
WRK_HEADER: str | None = None  # a header every wrk request carries (--persistence cookie-sticky)
OUT_DIR = Path(__file__).resolve().parent / "out"
#: --tls: (certificate, key, certificate+key) files every proxy terminates TLS with.
TLS: tuple[Path, Path, Path] | None = None


@dataclass
class Row:
    size: str
    proxy: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float | None = None  # proxy CPU per request (origin's for the `direct` row)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    failure: str | None = None  # "failed to start" etc. -> no numbers


# --------------------------------------------------------------------------- proxy configs


def haproxy_cfg(tmp: Path, port: int, origin: int, threads: int = 1) -> Path:
    # No `log` lines at all = no logging. Single thread to match nginx's 1 worker
    # and l7switch's single event loop (--workers N adds an N-thread one).
    cfg = tmp / ("haproxy.cfg" if threads == 1 else f"haproxy-x{threads}.cfg")
    cfg.write_text(f"""global
  nbthread {threads}
  # Far more than -c needs; keeps HAProxy's fd needs (2*maxconn) below the hard limit.
  maxconn 4096
  pidfile {tmp}/haproxy-x{threads}.pid

defaults
  mode http
  option splice-auto
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s

frontend fe
  bind 127.0.0.1:{port}{f" ssl crt {TLS[2]} alpn http/1.1" if TLS else ""}
  default_backend be

backend be
  server origin 127.0.0.1:{origin}
""")
    return cfg


def nginx_proxy_cfg(tmp: Path, port: int, origin: int) -> Path:
    conf = tmp / "nginx-proxy.conf"
    conf.write_text(bl.nginx_common(tmp).replace("NAME", "nginx-proxy") + f"""
http {{
  access_log off;
{bl.nginx_http_paths(tmp, "nginx-proxy")}
  # nginx's default of 1000 requests per client connection would make wrk
  # reconnect constantly; HAProxy has no such limit.
  keepalive_requests 100000;
  keepalive_timeout 300s;
  upstream origin {{
    server 127.0.0.1:{origin};
    keepalive 64;
    keepalive_requests 100000;
  }}
  server {{
    listen 127.0.0.1:{port}{" ssl" if TLS else ""} backlog=4096;
{f"    ssl_certificate {TLS[0]};{chr(10)}    ssl_certificate_key {TLS[1]};" if TLS else ""}
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # proxy_buffering: default (on) on purpose.
    }}
  }}
}}
""")
    return conf


def start_proxy(name: str, procs: bl.Procs, tmp: Path, tools: dict[str, str], origin: int
                ) -> tuple[int, int | None, str | None]:
    """Start one proxy; returns (port, pid, error). `direct` is the origin itself."""
    if name == "direct":
        return origin, None, None
    port = bl.free_port()
    if name.startswith("haproxy"):
        threads = int(name.rpartition("-x")[2]) if "-x" in name else 1
        cmd = [tools["haproxy"], "-f", str(haproxy_cfg(tmp, port, origin, threads)), "-db"]
    elif name == "nginx":
        cmd = [tools["nginx"], "-p", str(tmp), "-c", str(nginx_proxy_cfg(tmp, port, origin))]
    else:
        cfg = bl.write_l7switch_config(tmp, port, origin, SCHEDULER, PERSISTENCE, TLS,
                                       name=name.replace("@", "-").replace("+", "-"),
                                       features=name == FEATURED)
        if name == LOGGED:
            with cfg.open("a") as f:
                f.write(f"log: {{access: {tmp / 'access.log'}, format: {ACCESS_FORMAT}}}\n")
        if name == MONITORED:
            import monitor_load

            monitor_load.write_users(tmp / "monitor-users")
            MON_PORTS.update(monitor=bl.free_port(), metrics=bl.free_port())
            with cfg.open("a") as f:
                f.write(f"monitor: {{listen: 127.0.0.1:{MON_PORTS['monitor']}, users: {tmp / 'monitor-users'}, "
                        f"insecure: true}}\nmetrics: {{listen: 127.0.0.1:{MON_PORTS['metrics']}}}\n")
        if name.startswith("l7switch-x"):
            with cfg.open("a") as f:
                f.write(f"workers: {name.rpartition('-x')[2]}\nadmin: off\nworker_steering: {STEERING}\n")
        cmd = bl.l7switch_cmd(cfg)
    env = None
    if name == BASELINE or (BUILD_DIR is not None and name.startswith("l7switch")):
        # The same interpreter and venv (the dependencies), the other package first.
        cmd, env = bl.package_cmd(cfg, BASELINE_DIR if name == BASELINE else BUILD_DIR)
    print(f"# start {name}: {shlex.join(cmd)}", file=sys.stderr)
    try:
        proc = procs.start(name, cmd, env=env)
    except OSError as e:
        return port, None, f"failed to start: {e}"
    err = bl.wait_port(port, proc, timeout=10.0)
    if err:
        tail = procs.log_tail(name)
        procs.stop(name)
        return port, None, f"failed to start ({err})\n{tail}"
    return port, proc.pid, None


# --------------------------------------------------------------------------- checks & wrk


def transfer_check(port: int, size: str, expected: bytes) -> str | None:
    """One GET through the proxy: status 200 and byte-identical body."""
    try:
        if TLS:
            ctx = ssl.create_default_context(cafile=str(TLS[0].with_suffix(".ca")))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "localhost", port, timeout=10, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/{size}")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as e:
        return f"transfer check: {type(e).__name__}: {e}"
    if resp.status != 200:
        return f"transfer check: HTTP {resp.status}"
    if body != expected:
        return f"transfer check: body mismatch ({len(body)} B, expected {len(expected)} B)"
    return None


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, object]:
    out: dict[str, object] = {"errors": []}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+)", text):
        out["requests"] = int(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        if m := re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", text, re.M):
            out[key] = _ms(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        kinds = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
        if any(kinds.values()):
            out["errors"].append("socket errors: " + ", ".join(f"{k} {v}" for k, v in kinds.items() if v))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["errors"].append(f"non-2xx/3xx: {m.group(1)}")
    return out


def run_wrk(wrk: str, url: str, conns: int, threads: int, seconds: int, latency: bool = True
            ) -> tuple[str, str | None]:
    """Run wrk bounded in time; returns (stdout, error)."""
    cmd = [wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds}s"] + (["--latency"] if latency else []) + [url]
    if WRK_HEADER:
        cmd[1:1] = ["-H", WRK_HEADER]
    return bl.run_bounded(cmd, seconds)


def measure(args: argparse.Namespace, wrk: str, size: str, proxy: str, port: int, cpu_pid: int
            ) -> Row:
    row = Row(size, proxy)
    url = f"{'https' if TLS else 'http'}://127.0.0.1:{port}/{size}"
    if err := transfer_check(port, size, (args.tmp / "www" / size).read_bytes()):
        row.errors.append(err)
    if args.warmup > 0:
        run_wrk(wrk, url, args.connections, args.threads, args.warmup, latency=False)
    cpu0 = bl.cpu_seconds(cpu_pid)
    text, err = run_wrk(wrk, url, args.connections, args.threads, args.duration)
    cpu1 = bl.cpu_seconds(cpu_pid)
    if args.verbose:
        print(text, file=sys.stderr)
    if err:
        row.failure = err
        return row
    res = parse_wrk(text)
    row.rps = res.get("rps")  # type: ignore[assignment]
    row.p50_ms, row.p99_ms = res.get("p50"), res.get("p99")  # type: ignore[assignment]
    row.requests = int(res.get("requests", 0))  # type: ignore[arg-type]
    row.errors += res["errors"]  # type: ignore[operator]
    if row.requests:
        row.cpu_us = (cpu1 - cpu0) / row.requests * 1e6
    return row


# --------------------------------------------------------------------------- report


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}"


def render(rows: list[Row], cmdline: str, meta: dict[str, str], failures: dict[str, str]) -> str:
    lines = [
        "# l7switch benchmark",
        "",
        f"Command: `{cmdline}`",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in meta.items()),
        "",
        "| size | proxy | rps | p50 | p99 | CPU µs/req | rps ÷ HAProxy | CPU ÷ HAProxy | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        base = next((b for b in rows if b.size == r.size and b.proxy == "haproxy" and b.rps), None)
        if r.failure:
            first = r.failure.splitlines()[0].replace("|", "\\|")
            lines.append(f"| {r.size} | {r.proxy} | {first} | – | – | – | – | – | |")
            continue
        cpu = _f(r.cpu_us, ".1f") + (" (origin)" if r.proxy == "direct" else "")
        lines.append(
            f"| {r.size} | {r.proxy} | {_f(r.rps, ',.0f')} | {_f(r.p50_ms, '.2f')} ms | {_f(r.p99_ms, '.2f')} ms"
            f" | {cpu} | {_ratio(r.rps, base.rps if base else None)}"
            f" | {'–' if r.proxy == 'direct' else _ratio(r.cpu_us, base.cpu_us if base else None)}"
            f" | {'; '.join(r.errors).replace('|', '/') or 'none'} |"
        )
    lines += [
        "",
        "CPU µs/req = Δ(utime+stime) of the proxy's process tree during the timed wrk run "
        "÷ requests completed. The `direct` row shows the origin nginx's CPU instead.",
    ]
    for name, msg in failures.items():
        lines += ["", f"## {name}: failed", "", "```", msg, "```"]
    return "\n".join(lines) + "\n"


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return ((r.stdout + r.stderr).strip().splitlines() or ["?"])[0]
    return {
        "cores": str(len(os.sched_getaffinity(0))),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "haproxy": first_line([tools["haproxy"], "-v"]).split(" - ")[0].replace("HAProxy version ", ""),
        "nginx": first_line([tools["nginx"], "-v"]).split("/")[-1],
        "wrk": first_line([tools["wrk"], "--version"]).split(" Copyright")[0].replace("wrk ", ""),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per timed wrk run (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each run (default 2)")
    ap.add_argument("--sizes", default="100b,10k,1m", help=f"comma list from {','.join(bl.SIZES)}")
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES), help=f"comma list from {','.join(ALL_PROXIES)}")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per size/proxy, interleaved; the median-rps run is reported")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "results.md", help="markdown output file")
    ap.add_argument("--scheduler", default="rr",
                    help="l7switch pool scheduler (default rr); e.g. chash or lblc to price a keyed pick")
    ap.add_argument("--persistence", default="none", choices=sorted(bl.PERSISTENCE),
                    help="l7switch pool persistence (default none): cookie = insert, every response "
                    "sets it (wrk keeps no cookies); cookie-sticky = wrk sends the cookie; source")
    ap.add_argument("--tls", action="store_true",
                    help="every proxy terminates TLS (a throwaway trustme certificate); no `direct` row")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help=f"also measure the l7switch package in source tree DIR (e.g. `git worktree add "
                    f"/tmp/base HEAD~3`) as `{BASELINE}`, interleaved with this one: a before/after "
                    "comparison in one run")
    ap.add_argument("--access-log", choices=("combined", "json"), metavar="FORMAT",
                    help="also measure l7switch with its access log to a file (combined or json), "
                         f"as '{LOGGED}', in the same run")
    ap.add_argument("--monitor", action="store_true",
                    help=f"also measure l7switch with the monitor open in headless chromium and /metrics "
                         f"scraped every second, as '{MONITORED}' (the browser runs through the whole run)")
    ap.add_argument("--features", action="store_true",
                    help=f"also measure l7switch with a typical site's features on (rules with regexes "
                         f"and hosts, cookie persistence, HTTP health checks, access log) as '{FEATURED}'")
    ap.add_argument("--build", type=Path, metavar="DIR",
                    help="run every l7switch row from the package in DIR (e.g. build/compiled after "
                         "`make compiled`) instead of this source tree")
    ap.add_argument("--workers", type=int, default=0, metavar="N",
                    help="also measure l7switch with workers: N and HAProxy with nbthread N "
                         "(as l7switch-xN, haproxy-xN), in the same run")
    ap.add_argument("--worker-steering", choices=("address", "connection"), default="address",
                    help="with --workers: l7switch's worker_steering (wrk comes from one address)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs/logs temp dir for inspection")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo raw wrk output")
    args = ap.parse_args()
    global SCHEDULER, PERSISTENCE, WRK_HEADER, TLS, BASELINE_DIR, ACCESS_FORMAT, STEERING, BUILD_DIR
    SCHEDULER = args.scheduler
    PERSISTENCE = args.persistence

    sizes = [s for s in args.sizes.split(",") if s]
    proxies = [p for p in args.proxies.split(",") if p and not (args.tls and p == "direct")]
    bad = [s for s in sizes if s not in bl.SIZES] + [p for p in proxies if p not in ALL_PROXIES]
    if bad:
        ap.error(f"unknown size/proxy: {', '.join(bad)}")
    if args.baseline is not None:
        if not (args.baseline / "l7switch" / "__init__.py").exists():
            ap.error(f"--baseline {args.baseline}: no l7switch package there")
        BASELINE_DIR = args.baseline.resolve()
        proxies.insert(proxies.index("l7switch") if "l7switch" in proxies else len(proxies), BASELINE)
    if args.build is not None:
        if not (args.build / "l7switch" / "__init__.py").exists():
            ap.error(f"--build {args.build}: no l7switch package there")
        BUILD_DIR = args.build.resolve()
    if args.features:
        proxies.insert(proxies.index("l7switch") + 1 if "l7switch" in proxies else len(proxies), FEATURED)
    STEERING = args.worker_steering
    if args.workers > 1:
        if "haproxy" in proxies:
            proxies.insert(proxies.index("haproxy") + 1, f"haproxy-x{args.workers}")
        if "l7switch" in proxies:
            proxies.insert(proxies.index("l7switch") + 1, f"l7switch-x{args.workers}")
    if args.monitor:
        proxies.insert(proxies.index("l7switch") + 1 if "l7switch" in proxies else len(proxies), MONITORED)
    if args.access_log:
        ACCESS_FORMAT = args.access_log
        proxies.insert(proxies.index("l7switch") + 1 if "l7switch" in proxies else len(proxies), LOGGED)
    cmdline = shlex.join([sys.executable] + sys.argv)
    print(f"# command: {cmdline}", file=sys.stderr)

    tools = bl.ensure_tools()
    busy = background_busy()
    if busy > 10:
        print(f"# WARNING: CPUs already {busy:.0f}% busy before the benchmark; expect noise",
              file=sys.stderr)
    bl.raise_nofile()  # children inherit it; nginx configs are sized from it
    bl.install_sigterm_handler()
    args.tmp = Path(tempfile.mkdtemp(prefix="l7bench-"))
    procs = bl.Procs(args.tmp)
    if args.tls:
        TLS = bl.write_tls_files(args.tmp)
    rows: list[Row] = []
    failures: dict[str, str] = {}
    try:
        origin_port = bl.start_origin(procs, args.tmp, tools["nginx"])
        origin_pid = procs.procs[0][1].pid
        WRK_HEADER = bl.persistence_header(PERSISTENCE, origin_port)
        # Start every proxy up front; idle ones cost ~nothing and this keeps the
        # order of measurements simple. A proxy that fails is reported, not fatal.
        started: dict[str, tuple[int, int]] = {}
        for p in proxies:
            port, pid, err = start_proxy(p, procs, args.tmp, tools, origin_port)
            if err:
                failures[p] = err
                print(f"# {p}: {err}", file=sys.stderr)
            else:
                started[p] = (port, pid or origin_pid)
        stop_watching = None
        if MONITORED in started:
            import monitor_load

            stop_watching, err = monitor_load.start(MON_PORTS["monitor"], MON_PORTS["metrics"])
            if err:
                print(f"# {MONITORED}: {err}", file=sys.stderr)
        for size in sizes:
            runs: dict[str, list[Row]] = {p: [] for p in proxies}
            # Repetitions are interleaved across proxies so slow drift in background
            # load (shared 2-core box) hits every proxy alike.
            for rep in range(args.repeat):
                for p in proxies:
                    if p in failures:
                        continue
                    port, pid = started[p]
                    print(f"# {size} via {p} [{rep + 1}/{args.repeat}] "
                          f"({args.warmup}s warm-up + {args.duration}s) ...", file=sys.stderr)
                    row = measure(args, tools["wrk"], size, p, port, pid)
                    if p != "direct" and procs_dead(procs, p):
                        row.errors.append("proxy process died")
                    runs[p].append(row)
                    print(f"#   rps={_f(row.rps, '.0f')} p50={_f(row.p50_ms, '.2f')}ms "
                          f"p99={_f(row.p99_ms, '.2f')}ms cpu={_f(row.cpu_us, '.1f')}us/req "
                          f"errors={row.errors or row.failure or 'none'}", file=sys.stderr)
            for p in proxies:
                rows.append(Row(size, p, failure=failures[p]) if p in failures else median_run(runs[p]))
        if stop_watching is not None:
            print(f"# {MONITORED}: watched throughout: {stop_watching()}", file=sys.stderr)
    except KeyboardInterrupt:
        print("# interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bl.cleanup(procs, args.tmp, args.keep_tmp)

    meta = tool_versions(tools)
    meta["background CPU busy at start"] = f"{busy:.0f}%"
    meta["wrk"] += f" (-t{args.threads} -c{args.connections} -d{args.duration}s --latency, "\
                   f"{args.warmup}s warm-up, {args.repeat} run(s), median reported)"
    report = render(rows, cmdline, meta, failures)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    print(f"# written to {args.out}", file=sys.stderr)
    return 0


def median_run(runs: list[Row]) -> Row:
    """The run with the median rps (a real run, so its columns stay consistent)."""
    ok = sorted((r for r in runs if r.rps is not None), key=lambda r: r.rps or 0.0)
    if not ok:
        return runs[-1]
    row = ok[(len(ok) - 1) // 2]
    for r in runs:  # errors from any repetition must not disappear
        row.errors += [e for e in r.errors if e not in row.errors]
    return row


def background_busy(seconds: float = 1.0) -> float:
    """% of all CPUs busy before we start anything (other users of the box)."""
    def snap() -> tuple[int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle+iowait
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def procs_dead(procs: bl.Procs, name: str) -> bool:
    return any(n == name and proc.poll() is not None for n, proc, *_ in procs.procs)


if __name__ == "__main__":
    sys.exit(main())
