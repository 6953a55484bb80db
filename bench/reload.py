#!/usr/bin/env python3
"""Reloads under load (issue 11, "Measure"): l7switch and HAProxy side by side.

For each proxy, in the same run and in front of the same two nginx origins (`/100b`): `wrk -t1
-c50 -d<D>s` runs while the proxy is reloaded ``--reloads`` times (default 20), spread evenly,
alternating two valid files that differ in rules and servers (A: everything to origin 1; B:
`/100b` to origin 2 by a path rule, the rest to origin 1), and then once more with a broken file
(an unknown pool) which must be refused while the old file keeps serving. Reported: wrk's
requests, socket errors (connect, read, write, timeout) and non-2xx answers, and whether the
proxy still answers after the broken reload.

l7switch: `l7switch run FILE`, reloaded with SIGHUP. HAProxy: master-worker mode (`haproxy -W`),
reloaded with SIGUSR2 to the master, once with its defaults and once with `option
idle-close-on-response` (which lets old workers close idle keep-alive connections cleanly).

Usage:  python bench/reload.py [--duration 30] [--reloads 20] [--proxies l7switch,haproxy,haproxy-icor]
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib as bl

PROXIES = ("l7switch", "haproxy", "haproxy-icor")
WORKERS = 1  # --l7-workers: l7switch's workers: N (its master takes the SIGHUP)


def l7_file(port: int, o1: int, o2: int, variant: str) -> str:
    workers = f"workers: {WORKERS}\nadmin: off\n" if WORKERS != 1 else ""
    if variant == "broken":
        return (f"listen: [{{address: 127.0.0.1:{port}}}]\npools:\n  a: {{servers: [127.0.0.1:{o1}]}}\n"
                f"default_pool: nope\n{workers}")
    rules = ("rules:\n  - {name: small, match: {path_prefix: /100b}, pool: b}\n" if variant == "B" else "")
    return (f"listen: [{{address: 127.0.0.1:{port}}}]\npools:\n  a: {{servers: [127.0.0.1:{o1}]}}\n"
            f"  b: {{servers: [127.0.0.1:{o2}]}}\n{rules}default_pool: a\n{workers}")


def haproxy_file(port: int, o1: int, o2: int, variant: str, icor: bool) -> str:
    use = "  use_backend b if { path_beg /100b }\n" if variant == "B" else ""
    broken = "  use_backend nope\n" if variant == "broken" else ""
    return f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse always
{"  option idle-close-on-response" + chr(10) if icor else ""}frontend fe
  bind 127.0.0.1:{port}
{use}{broken}  default_backend a
backend a
  server o1 127.0.0.1:{o1}
backend b
  server o2 127.0.0.1:{o2}
"""


WRK_RE = {
    "requests": re.compile(r"(\d+) requests in"),
    "errors": re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"),
    "non2xx": re.compile(r"Non-2xx or 3xx responses: (\d+)"),
}


def parse_wrk(text: str) -> dict[str, int]:
    out = {"requests": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    if m := WRK_RE["requests"].search(text):
        out["requests"] = int(m.group(1))
    if m := WRK_RE["errors"].search(text):
        out.update(connect=int(m.group(1)), read=int(m.group(2)), write=int(m.group(3)), timeout=int(m.group(4)))
    if m := WRK_RE["non2xx"].search(text):
        out["non2xx"] = int(m.group(1))
    return out


def answers(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /100b HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def one(name: str, args: argparse.Namespace, tools: dict[str, str], procs: bl.Procs, tmp: Path,
        o1: int, o2: int) -> dict[str, object]:
    port = bl.free_port()
    icor = name == "haproxy-icor"
    cfg = tmp / (f"{name}.yaml" if name == "l7switch" else f"{name}.cfg")

    def write(variant: str) -> None:
        text = l7_file(port, o1, o2, variant) if name == "l7switch" else haproxy_file(port, o1, o2, variant, icor)
        tmp_file = cfg.with_suffix(".new")
        tmp_file.write_text(text)
        os.replace(tmp_file, cfg)  # as an editor or config management would: never half a file

    write("A")
    if name == "l7switch":
        cmd = [sys.executable, "-m", "l7switch", "run", str(cfg)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        reload_sig = signal.SIGHUP
    else:
        cmd = [tools["haproxy"], "-W", "-db", "-f", str(cfg)]
        env = None
        reload_sig = signal.SIGUSR2
    print(f"# start {name}: {shlex.join(cmd)}", file=sys.stderr)
    proc = procs.start(name, cmd, env=env)
    err = bl.wait_port(port, proc, timeout=15)
    if err:
        return {"proxy": name, "error": f"did not start: {err}\n{procs.log_tail(name)}"}
    wrk_out: list[str] = []
    wrk = threading.Thread(target=lambda: wrk_out.append(subprocess.run(
        [tools["wrk"], "-t1", "-c50", f"-d{args.duration}s", f"http://127.0.0.1:{port}/100b"],
        capture_output=True, text=True, timeout=args.duration + 30).stdout))
    wrk.start()
    gap = args.duration / (args.reloads + 2)
    for i in range(args.reloads):
        time.sleep(gap)
        write("B" if i % 2 == 0 else "A")
        os.kill(proc.pid, reload_sig)
    time.sleep(gap / 2)
    write("broken")
    os.kill(proc.pid, reload_sig)
    wrk.join(args.duration + 40)
    time.sleep(0.5)
    alive = proc.poll() is None and answers(port)
    text = procs.log_tail(name, lines=100000)
    procs.stop(name)
    res: dict[str, object] = {"proxy": name, **parse_wrk(wrk_out[0] if wrk_out else ""), "serving_after_broken": alive}
    if name == "l7switch":  # what its event log says (HAProxy's master logs its reloads differently)
        res["reloaded"] = text.count(" reloaded ") if WORKERS == 1 else text.count("the %d workers reload it" % WORKERS)
        res["refused"] = text.count("reload refused: ")
    print(f"#   {res}", file=sys.stderr)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--l7-workers", type=int, default=1, help="l7switch's workers: N (default 1)")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    global WORKERS
    WORKERS = args.l7_workers
    tools = bl.ensure_tools()
    bl.raise_nofile()
    bl.install_sigterm_handler()
    tmp = Path(tempfile.mkdtemp(prefix="l7reload-"))
    tmp2 = Path(tempfile.mkdtemp(prefix="l7reload-o2-"))
    procs, procs2 = bl.Procs(tmp), bl.Procs(tmp2)  # (the second origin in its own directory)
    rows = []
    try:
        o1 = bl.start_origin(procs, tmp, tools["nginx"])
        o2 = bl.start_origin(procs2, tmp2, tools["nginx"])
        for name in [p for p in args.proxies.split(",") if p]:
            rows.append(one(name, args, tools, procs, tmp, o1, o2))
    finally:
        bl.cleanup(procs2, tmp2, args.keep_tmp)
        bl.cleanup(procs, tmp, args.keep_tmp)
    print(f"Command: `{shlex.join(['python'] + sys.argv)}`\n")
    print("| proxy | requests | socket errors (connect/read/write/timeout) | non-2xx | serving after the broken reload |")
    print("|---|---:|---|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['proxy']} | – | {r['error'].splitlines()[0]} | – | – |")
            continue
        print(f"| {r['proxy']} | {r['requests']:,} | {r['connect']}/{r['read']}/{r['write']}/{r['timeout']} | "
              f"{r['non2xx']} | {'yes' if r['serving_after_broken'] else 'NO'}"
              + (f" ({r['reloaded']} reloads applied, {r['refused']} refused-error lines)" if "reloaded" in r else "")
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
