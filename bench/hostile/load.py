"""Normal clients (wrk windows back to back), the attacker processes, and the /proc sampler."""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxies import HERE, bl, fd_count, rss

cpu_seconds = bl.cpu_seconds

ATTACK_PY = HERE / "attack.py"

# wrk's done() hook prints one JSON line: no parsing of its human summary.
WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Window:
    start: float
    end: float
    requests: int = 0  # answered, any status
    failed: int = 0  # connect/read/write errors + timeouts + non-2xx/3xx answers
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return max(0, self.requests - int(self.raw.get("status", 0)))

    @property
    def rps(self) -> float:
        return self.ok / max(1e-6, self.end - self.start)


def run_window(wrk: str, lua: Path, url: str, conns: int, seconds: float) -> Window:
    """One wrk run of ``seconds`` (-t1 -c``conns``, 2 s request timeout); killed 10 s late at most."""
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "2s", "-s", str(lua), url]
    w = Window(time.time(), 0.0)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        w.error = "wrk hung"
    w.end = time.time()
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        # Killed (its connections never got through a full backlog) or broken: no counts; the
        # window's 0 rps shows as outage.
        w.error = w.error or f"no summary from wrk: {text.strip()[-200:]}"
        return w
    d = json.loads(line[5:])
    w.raw = d
    w.requests = d["requests"]
    w.failed = d["connect"] + d["read"] + d["write"] + d["timeout"] + d["status"]
    w.p50_ms, w.p99_ms, w.max_ms = d["p50_us"] / 1000, d["p99_us"] / 1000, d["max_us"] / 1000
    return w


# =========================================================================== attackers


@dataclass
class AttackPlan:
    key: str
    title: str
    kind: str  # idle | upload | head
    conns: int
    one_address: bool
    reconnect: bool
    interval: float  # seconds between bytes / header lines
    scaled: str = ""  # why conns is below the nominal size ("" = full size)


def plan_processes(plan: AttackPlan, max_procs: int) -> tuple[list[tuple[int, list[str]]], str]:
    """Split the attack's connections over processes, each within its fd limit; the source
    addresses: one (127.0.0.2) or 50 connections per address from 127.10.0.0/16 — under the
    per-client connection limit, so only the connection cap and timeouts stand in the way.
    Returns ([(connections, addresses)], why it was scaled down or "")."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_proc = min(5000, (65536 if hard == resource.RLIM_INFINITY else hard) - 100)
    want = plan.conns
    why = []
    if want > per_proc * max_procs:
        want = per_proc * max_procs
        why.append(f"fd limit {hard} × {max_procs} attacker processes")
    if plan.one_address:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        ports = hi - lo + 1 - 1000
        if want > ports:
            want = ports
            why.append(f"one address has {ports} free ephemeral ports")
    nprocs = max(1, math.ceil(want / per_proc))
    out = []
    for p in range(nprocs):
        lo_i = want * p // nprocs
        hi_i = want * (p + 1) // nprocs
        if plan.one_address:
            addrs = ["127.0.0.2"]
        else:
            first, last = lo_i // 50, (hi_i - 1) // 50
            addrs = [f"127.10.{j // 250}.{j % 250 + 1}" for j in range(first, last + 1)]
        out.append((hi_i - lo_i, addrs))
    return out, "; ".join(why)


class Attack:
    """The attacker processes of one run; their stats files are read by the sampler."""

    def __init__(self, tmp: Path, tag: str, plan: AttackPlan, port: int, duration: float,
                 start_at: float, max_procs: int, reconnect_delay: float) -> None:
        self.plan = plan
        self.split, why = plan_processes(plan, max_procs)
        if why:
            plan.scaled = why
        self.total = sum(n for n, _ in self.split)
        self.stats = [tmp / f"{tag}-attack{i}.json" for i in range(len(self.split))]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [tmp / f"{tag}-attack{i}.log" for i in range(len(self.split))]
        self.deadline = start_at + duration + 20
        for i, (n, addrs) in enumerate(self.split):
            cmd = [sys.executable, str(ATTACK_PY), "--kind", plan.kind, "--target", f"127.0.0.1:{port}",
                   "--addrs", ",".join(addrs), "--conns", str(n), "--duration", str(duration),
                   "--stats", str(self.stats[i]), "--interval", str(plan.interval),
                   "--start-at", f"{start_at:.3f}", "--reconnect-delay", str(reconnect_delay)]
            if plan.reconnect:
                cmd.append("--reconnect")
            with open(self.logs[i], "wb") as logf:
                self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                                   stderr=subprocess.STDOUT, start_new_session=True))

    def read(self) -> dict[str, Any]:
        """The processes' counts added up (answers and errors by kind)."""
        tot: dict[str, Any] = {"open": 0, "connecting": 0, "opened": 0, "connect_failed": 0,
                               "closed_by_peer": 0, "reset_by_peer": 0, "answers": {},
                               "connect_errors": {}, "lifetimes": [], "processes": 0,
                               "first_close": None, "all_open_at": None, "cpu_s": 0.0}
        for f in self.stats:
            try:
                d = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            tot["processes"] += 1
            for k in ("open", "connecting", "opened", "connect_failed", "closed_by_peer", "reset_by_peer",
                      "cpu_s"):
                tot[k] += d.get(k, 0)
            for k in ("answers", "connect_errors"):
                for code, n in d.get(k, {}).items():
                    tot[k][code] = tot[k].get(code, 0) + n
            tot["lifetimes"] += d.get("lifetimes", [])
            for k in ("first_close", "all_open_at"):
                if d.get(k) and (tot[k] is None or d[k] < tot[k]):
                    tot[k] = d[k]
        return tot

    def wait(self) -> list[str]:
        """Wait for every attacker to end (they stop themselves); kill one 20 s late."""
        problems = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(timeout=max(0.1, self.deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                problems.append(f"attacker {i} killed (did not stop)")
            if p.returncode not in (0, -9):
                problems.append(f"attacker {i} exited {p.returncode}: "
                                f"{self.logs[i].read_text(errors='replace')[-300:]}")
        return problems

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# =========================================================================== sampler


class Sampler(threading.Thread):
    """Every ``period`` s: the proxy's fds and RSS (process tree) and the attackers' counts."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.period = period
        self.attack: Attack | None = None
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            s: dict[str, Any] = {"t": time.time(), "fds": fd_count(self.pid), "rss": rss(self.pid),
                                 "cpu": cpu_seconds(self.pid), "busy": machine_busy()}
            if self.attack is not None:
                a = self.attack.read()
                s["open"], s["connecting"] = a["open"], a["connecting"]
            self.samples.append(s)
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def machine_busy() -> float:
    """Seconds of CPU the whole machine has spent busy (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / bl.CLK_TCK  # all but idle and iowait


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
