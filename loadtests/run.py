"""`make load` and `make load-smoke`: the demo in the background, locust headless against it.

    .venv/bin/python loadtests/run.py --time 60s --users 50 [--rate 10] [--port 8080]
                                      [--host URL] [--name load] [CLASS ...]

1. starts `l7switch demo --port PORT` (unless --host names a switch that is already running)
   and waits until it answers;
2. runs locust headless for --time, writing CSV and HTML reports to loadtests/out/NAME*;
3. stops the demo whatever happened (Ctrl-C and SIGTERM included);
4. prints a results table (also in loadtests/out/NAME_summary.md) and exits 1 if any request
   failed, the locustfile raised, nothing was requested, or a scenario that had users made
   none of its requests.

Every step is bounded: the demo must answer within 20 s, locust is killed 60 s after its run
time, the demo 15 s after it was asked to stop.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

from loadreport import classes_run, problems, read_rows, read_stats, table

from l7switch.units import parse_duration

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "loadtests" / "out"
START_TIMEOUT = 20.0
LOCUST_GRACE = 60.0  # beyond --time: ramp-up, the users' stop timeout, writing reports
STOP_TIMEOUT = 15.0
INTERRUPTED = 130  # the shell's status for a command ended by SIGINT


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def answers(url: str) -> bool:
    """The demo's home page answers 200 from a named server (not just any listener)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an http_proxy
    try:
        with opener.open(url, timeout=1.0) as resp:
            return resp.status == 200 and bool(resp.headers.get("X-Server"))
    except OSError:
        return False


def start_demo(port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C in the terminal reaches locust (which then writes its reports)
    # but not the demo, which we stop ourselves once locust is done.
    return subprocess.Popen([sys.executable, "-m", "l7switch", "demo", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_up(proc: subprocess.Popen[bytes], port: int, log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"run.py: the demo exited with status {proc.returncode}; its output "
                             f"is in {log}")
        if answers(f"http://127.0.0.1:{port}/"):
            return
        time.sleep(0.2)
    raise SystemExit(f"run.py: the demo did not answer within {START_TIMEOUT:.0f} s; see {log}")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU a running process has used (Linux /proc), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def machine_busy() -> float | None:
    """CPU seconds all processors have spent busy since boot (/proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_note(demo_cpu: float | None, locust_cpu: float, busy: float | None, seconds: float) -> str:
    """Where the machine's CPU went: the load generator competes with what it measures, and
    anything else running on the machine competes with both (it shows as "the rest")."""
    def share(cpu: float) -> str:
        return f"{cpu:.1f} s ({100 * cpu / seconds:.0f}% of one CPU)"

    parts = [f"locust {share(locust_cpu)}"]
    if demo_cpu is not None:
        parts.insert(0, f"switch and origins {share(demo_cpu)}")
    if busy is not None:
        parts.append(f"the rest {share(max(0.0, busy - locust_cpu - (demo_cpu or 0.0)))}")
    return f"CPU over the {seconds:.0f} s run: " + ", ".join(parts)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # the demo finishes requests in flight, then exits
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_locust(args: argparse.Namespace, host: str, prefix: Path) -> int:
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
           "--headless", "--users", str(args.users), "--spawn-rate", str(args.rate),
           "--run-time", args.time, "--host", host, "--csv", str(prefix), "--html", f"{prefix}.html",
           "--only-summary", "--stop-timeout", "10", "--exit-code-on-error", "1", *args.classes]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return proc.wait(parse_duration(args.time) + LOCUST_GRACE)
    except subprocess.TimeoutExpired:
        print(f"run.py: locust overran its time limit by {LOCUST_GRACE:.0f} s; killed", flush=True)
        proc.kill()
        proc.wait()
        return 1
    finally:
        if proc.poll() is None:  # interrupted: locust stops its users and writes its reports
            if _terminated:  # a Ctrl-C reached locust too (same process group); SIGTERM did not
                proc.terminate()
            try:
                proc.wait(LOCUST_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def report(args: argparse.Namespace, prefix: Path, locust_rc: int, cpu: str) -> int:
    def file(suffix: str) -> Path:
        return prefix.with_name(prefix.name + suffix)

    rows = read_stats(file("_stats_final.csv").read_text()) if file("_stats_final.csv").exists() else []
    failures = read_rows(file("_failures_final.csv"))
    exceptions = read_rows(file("_exceptions_final.csv"))
    found = problems(rows, failures, exceptions, classes_run(read_rows(file("_users_final.csv"))))
    what = " ".join(args.classes) or "mixed profile"
    summary = (f"{what}: {args.users} users (+{args.rate:g}/s) for {args.time}; {os.cpu_count()} CPUs "
               f"shared by locust, the switch and the origins; Python {platform.python_version()}\n"
               f"{cpu}\n\n{table(rows)}\n")
    file("_summary.md").write_text(summary)
    print(f"\n{summary}\nreports: {prefix}.html, {prefix}_stats.csv, {prefix}_summary.md")
    if locust_rc != 0 and not found:
        found = ["interrupted" if locust_rc == INTERRUPTED else f"locust exited with status {locust_rc}"]
    for line in found:
        print(line if line.startswith("  ") else f"FAIL: {line}")
    if not found:
        print(f"PASS: {rows[-1].requests:,} requests, none failed")
    return 1 if found else 0


_terminated = False


def _interrupt(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time", default="60s", help="run time, as locust's -t (60s, 2m)")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--rate", type=float, default=10, help="users started per second")
    ap.add_argument("--port", type=int, default=8080, help="the demo switch's port")
    ap.add_argument("--host", default="", help="test this running switch instead of starting the demo")
    ap.add_argument("--name", default="load", help="report file prefix in loadtests/out/")
    ap.add_argument("classes", nargs="*", help="user classes to run (default: all, by weight)")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    prefix = OUT / args.name
    for old in OUT.glob(f"{args.name}[._]*"):  # a stale report must not pass for this run's
        old.unlink()
    # SIGTERM (make killed, CI cancelled) unwinds like Ctrl-C, so the demo is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    demo = None
    host = args.host
    cpu = ""
    try:
        if not host:
            if port_taken(args.port):
                raise SystemExit(f"run.py: port {args.port} is taken (a `make run` demo?). Stop it, or "
                                 f"use LOAD_PORT=<free port>, or LOAD_HOST=http://127.0.0.1:{args.port} "
                                 "to test the switch already running there.")
            log = prefix.with_name(args.name + "_demo.log")
            with open(log, "wb") as out:  # the child keeps its own descriptor
                demo = start_demo(args.port, out)
            wait_until_up(demo, args.port, str(log))
            host = f"http://127.0.0.1:{args.port}"
        started, busy = time.monotonic(), machine_busy()
        demo_cpu = cpu_seconds(demo.pid) if demo is not None else None
        rc = run_locust(args, host, prefix)
        seconds = time.monotonic() - started
        if busy is not None:
            busy = (machine_busy() or busy) - busy
        if demo is not None and demo_cpu is not None:
            demo_cpu = (cpu_seconds(demo.pid) or demo_cpu) - demo_cpu
        # Only locust has been waited for so far, so the children's usage is locust's.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = cpu_note(demo_cpu, children.ru_utime + children.ru_stime, busy, seconds)
    except KeyboardInterrupt:
        rc = INTERRUPTED
    finally:
        if demo is not None:
            stop(demo)
    return report(args, prefix, rc, cpu)


if __name__ == "__main__":
    sys.exit(main())
