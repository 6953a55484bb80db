#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: a cost that does not move with
whatever else the machine is doing, so a change of a few percent is visible through the noise
that wall-clock benchmarks (run.py) carry.

For each build (this tree, and with --baseline DIR another source tree) the switch runs under
``valgrind --tool=callgrind`` in front of an nginx origin, and one keep-alive client sends a
fixed number of GETs for a fixed-size body, one at a time. Two runs with different request
counts (``--requests N`` and ``4 * N``) cancel start-up and shutdown: per request =
(I(4N) - I(N)) / 3N. Everything is bounded: each run has a time limit and the process group is
killed in the end.

``--haproxy`` adds HAProxy (one thread, bench/run.py's configuration) under the same count, for
scale: a C proxy's instructions per request in user space. (Kernel work — the system calls,
TCP — is not counted for either; run.py's CPU per request has it.)

Usage:  python bench/instructions.py [--requests 500] [--size 100b] [--baseline DIR]
            [--access-log combined|json] [--haproxy]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
import run  # bench/run.py: HAProxy's configuration, the same as in the wall-clock runs

RUN_LIMIT = 600.0  # seconds for one run under valgrind (about 50x slower than native)


def send_requests(port: int, path: str, n: int, size: int, timeout: float) -> None:
    """``n`` sequential keep-alive GETs; each response read to its end (Content-Length)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        buf = b""
        for _ in range(n):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} requests did not finish within {timeout:.0f} s")
            s.sendall(req)
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("switch closed the connection")
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            if not head.startswith(b"HTTP/1.1 200") or m is None or int(m.group(1)) != size:
                raise RuntimeError(f"unexpected response: {head[:200]!r}")
            while len(buf) < size:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("switch closed mid-body")
                buf += chunk
            buf = buf[size:]


def count(build: Path | None, tmp: Path, procs: bl.Procs, origin: int, n: int, size_name: str,
          tag: str, access_log: str | None = None, haproxy: str | None = None, features: bool = False) -> int:
    """Total instructions of one switch run serving ``n`` requests (``access_log``: with the
    access log in that format, to a file; ``haproxy``: that HAProxy binary instead)."""
    port = bl.free_port()
    out = tmp / f"callgrind-{tag}.out"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if haproxy is not None:
        # -db: foreground, one process; SIGTERM stops it at once and callgrind writes its totals.
        target = [haproxy, "-f", str(run.haproxy_cfg(tmp, port, origin)), "-db"]
    else:
        # features: bench/run.py --features' configuration (benchlib.FEATURES, access log included)
        cfg = bl.write_l7switch_config(tmp, port, origin, name=f"l7switch-{tag}", features=features)
        if access_log:
            with cfg.open("a") as f:
                f.write(f"log: {{access: {tmp / f'access-{tag}.log'}, format: {access_log}}}\n")
        target, package_env = bl.package_cmd(cfg, build)
        env.update(package_env or {})
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *target]
    proc = procs.start(f"switch-{tag}", cmd, env=env)
    err = bl.wait_port(port, proc, timeout=120.0)
    if err:
        raise RuntimeError(f"switch under valgrind did not start: {err}\n{procs.log_tail(f'switch-{tag}')}")
    send_requests(port, f"/{size_name}", 20, bl.SIZES[size_name], RUN_LIMIT)  # warm caches alike
    send_requests(port, f"/{size_name}", n, bl.SIZES[size_name], RUN_LIMIT)
    os.killpg(proc.pid, signal.SIGTERM)  # the switch exits 0 and callgrind writes its totals
    try:
        proc.wait(timeout=120)
    finally:
        procs.stop(f"switch-{tag}")
    m = re.search(r"^summary: (\d+)", out.read_text(), re.M) or re.search(r"^totals: (\d+)", out.read_text(), re.M)
    if m is None:
        raise RuntimeError(f"no totals in {out}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500, help="N: runs of N and 4N requests (default 500)")
    ap.add_argument("--size", default="100b", choices=sorted(bl.SIZES), help="response body (default 100b)")
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="also count the l7switch in source tree DIR")
    ap.add_argument("--access-log", choices=("combined", "json"), metavar="FORMAT",
                    help="also count this tree with its access log to a file in FORMAT")
    ap.add_argument("--haproxy", action="store_true", help="also count HAProxy (one thread), for scale")
    ap.add_argument("--features", action="store_true",
                    help="also count each l7switch build with bench/run.py's --features configuration "
                         "(rules with regexes and hosts, cookie persistence, health checks, access log)")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not installed (apt-get install -y valgrind)")
    tools = bl.ensure_tools(("nginx", "haproxy") if args.haproxy else ("nginx",))
    tmp = Path(tempfile.mkdtemp(prefix="l7insn-"))
    procs = bl.Procs(tmp)
    # (label, tag, source tree or None for this one, access log format, HAProxy binary, features)
    Build = tuple[str, str, Path | None, str | None, str | None, bool]
    builds: list[Build] = [("this tree", "this", None, None, None, False)]
    if args.baseline is not None:
        builds.insert(0, (f"baseline {args.baseline}", "base", args.baseline.resolve(), None, None, False))
    if args.access_log:
        builds.append((f"this tree, access log {args.access_log}", f"log-{args.access_log}", None,
                       args.access_log, None, False))
    if args.features:
        builds += [(f"{label}, every feature", f"{tag}-all", build, None, None, True)
                   for label, tag, build, *_ in list(builds) if tag in ("base", "this")]
    if args.haproxy:
        builds.append(("HAProxy (nbthread 1)", "haproxy", None, None, tools["haproxy"], False))
    n1, n2 = args.requests, 4 * args.requests
    results: list[tuple[str, float]] = []
    try:
        origin = bl.start_origin(procs, tmp, tools["nginx"])
        for label, tag, build, access_log, haproxy, features in builds:
            i1 = count(build, tmp, procs, origin, n1, args.size, f"{tag}-{n1}", access_log, haproxy, features)
            i2 = count(build, tmp, procs, origin, n2, args.size, f"{tag}-{n2}", access_log, haproxy, features)
            per = (i2 - i1) / (n2 - n1)
            results.append((label, per))
            print(f"# {label}: {i1:,} instructions for {n1} requests, {i2:,} for {n2}: "
                  f"{per:,.0f} per request", file=sys.stderr)
    finally:
        bl.cleanup(procs, tmp, args.keep_tmp)
    print(f"| build | instructions per request ({args.size}, keep-alive, one client) | ratio |")
    print("|---|---:|---:|")
    first = results[0][1]
    for label, per in results:
        print(f"| {label} | {per:,.0f} | {per / first:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
