"""The harness of bench/availability.py: origins and proxies started and stopped, their
server states polled, wrk and plain clients run, and the small helpers the scenarios share."""
from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as bl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT_DIR = HERE / "out"
SCENARIOS = ("kill", "hung", "maxconn", "cost")
PROXIES = ("l7switch", "haproxy")
POLL = 0.1  # seconds between samples of the proxy's server states
BODY = b"x" * 100  # the origins' answer: 100 B, as bench/run.py's /100b
PROCS = HERE / "avail_procs.py"  # the origin and l7switch processes

# =========================================================================== harness


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


class Env:
    """What every scenario shares: tools, the temp dir, started processes, raw output."""

    def __init__(self, args: argparse.Namespace, tools: dict[str, str], tmp: Path) -> None:
        self.args = args
        self.tools = tools
        self.tmp = tmp
        self.procs = bl.Procs(tmp)
        self.raw: list[str] = []  # wrk outputs, transition lines, config files: bench/out/*-raw.txt

    def note(self, title: str, text: str) -> None:
        self.raw.append(f"## {title}\n\n```\n{text.rstrip()}\n```\n")
        if self.args.verbose:
            print(f"--- {title}\n{text.rstrip()}", file=sys.stderr)


@dataclass
class Origin:
    name: str
    port: int
    stats: Path
    proc: subprocess.Popen[bytes]
    proc_name: str  # its name in env.procs

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {}


def start_origin(env: Env, name: str, port: int | None = None, mode: str = "ok", delay: float = 0.2,
                 tag: str = "") -> Origin:
    port = port or bl.free_port()
    stats = env.tmp / f"{name}{tag}.json"
    cmd = [sys.executable, str(PROCS), "_origin", "--port", str(port),
           "--stats", str(stats), "--mode", mode, "--delay", str(delay)]
    proc = env.procs.start(name + tag, cmd)
    err = bl.wait_port(port, proc)
    if err:
        raise RuntimeError(f"origin {name} failed: {err}\n{env.procs.log_tail(name + tag)}")
    return Origin(name, port, stats, proc, name + tag)


def kill_origin(env: Env, o: Origin) -> float:
    """SIGKILL, as a crash: no FIN on its connections, the kernel resets them."""
    os.killpg(o.proc.pid, signal.SIGKILL)
    t = time.time()
    o.proc.wait()
    return t


# --------------------------------------------------------------------------- proxies


@dataclass
class Pool:
    """One scenario's pool, written out for both proxies."""
    servers: list[tuple[str, int]]  # (name, port)
    health: dict[str, Any] | None = None  # {"interval": s, "timeout": s, "rise": n, "fall": n, "http": bool}
    passive: str = "off"  # off | layer4 | layer7 (l7switch observe; HAProxy observe + error-limit 5)
    error_limit: int = 5
    slow_start: float = 0.0
    maxconn: int = 0
    queue_timeout: float | None = None
    server_timeout: float | None = None
    scheduler: str = "wrr"


def _dur(s: float) -> str:
    return f"{round(s * 1000)}ms"


def l7switch_yaml(port: int, pool: Pool) -> str:
    lines = ["listen:", f"  - address: 127.0.0.1:{port}", "pools:", "  origin:",
             f"    scheduler: {pool.scheduler}", "    servers:"]
    lines += [f"      - {{address: 127.0.0.1:{p}, name: {n}}}" for n, p in pool.servers]
    if pool.health:
        h = pool.health
        http = "http: {path: /health, expect: 200-399}, " if h.get("http", True) else ""
        lines.append(f"    health: {{{http}interval: {_dur(h['interval'])}, timeout: {_dur(h['timeout'])}, "
                     f"rise: {h['rise']}, fall: {h['fall']}}}")
    if pool.passive == "off":
        lines.append("    passive: off")
    else:
        lines.append(f"    passive: {{observe: {pool.passive}, error_limit: {pool.error_limit}}}")
    if pool.slow_start:
        lines.append(f"    slow_start: {_dur(pool.slow_start)}")
    if pool.maxconn:
        lines.append(f"    maxconn: {pool.maxconn}")
    if pool.queue_timeout is not None:
        lines.append(f"    queue: {{timeout: {_dur(pool.queue_timeout)}}}")
    lines.append("default_pool: origin")
    if pool.server_timeout is not None:
        lines.append(f"timeouts: {{server: {_dur(pool.server_timeout)}}}")
    return "\n".join(lines) + "\n"


def haproxy_cfg(tmp: Path, name: str, port: int, pool: Pool) -> str:
    """The closest HAProxy equivalent of ``pool``. Retries as l7switch's: 2, each to another server
    (``option redispatch 1``), after a failed connect or an empty response (idempotent requests
    only, HAProxy's own rule for ``empty-response``)."""
    h = pool.health
    opts = ""
    if h:
        opts += f" check inter {_dur(h['interval'])} rise {h['rise']} fall {h['fall']}"
    elif pool.passive != "off":
        # HAProxy's observe needs `check`: a TCP check so rare it plays no part in the run.
        opts += " check inter 1h"
    if pool.slow_start:
        opts += f" slowstart {_dur(pool.slow_start)}"
    if pool.passive != "off":
        opts += f" observe {pool.passive} error-limit {pool.error_limit} on-error mark-down"
    if pool.maxconn:
        opts += f" maxconn {pool.maxconn}"
    servers = "\n".join(f"  server {n} 127.0.0.1:{p}{opts}" for n, p in pool.servers)
    check_lines = ""
    if h and h.get("http", True):
        check_lines = "  option httpchk GET /health\n  http-check expect status 200-399\n"
    return f"""global
  nbthread 1
  maxconn 4096
  pidfile {tmp}/{name}.pid
  stats socket {tmp}/{name}.sock mode 600 level admin

defaults
  mode http
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server {_dur(pool.server_timeout) if pool.server_timeout else "30s"}
  timeout http-keep-alive 30s
  timeout queue {_dur(pool.queue_timeout) if pool.queue_timeout is not None else "5s"}
  timeout check {_dur(h['timeout']) if h else "1s"}
  retries 2
  option redispatch 1
  retry-on conn-failure empty-response

frontend fe
  bind 127.0.0.1:{port}
  default_backend be

backend be
  balance roundrobin
{check_lines}{servers}
"""


class Source:
    """The proxy's view of its servers: {name: {state, total, failures, inflight, ...}}."""

    def __init__(self, kind: str, sock: Path) -> None:
        self.kind = kind
        self.sock = sock

    def _ask(self, request: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(self.sock))
            if request:
                s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def sample(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self._ask(b"show stat\n" if self.kind == "haproxy" else b"")
        except OSError:
            return None
        try:
            if self.kind == "haproxy":
                return _haproxy_servers(raw.decode())
            return _l7switch_servers(json.loads(raw))
        except (ValueError, KeyError):
            return None


def _l7switch_servers(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    pool = snap["pools"]["origin"]
    for s in pool["servers"]:
        out[s["name"]] = {
            "state": "up" if s["state"] in ("up", "drain") else "down", "raw_state": s["state"],
            "total": s["total"], "failures": s["failures"], "inflight": s["inflight"],
            "retries": s["retries"], "redispatches": s["redispatches"], "queued": s["queued"],
            "ramp": s.get("slow_start"), "check": (s.get("check") or {}).get("last"),
        }
    out["_pool"] = {"queued": pool["queue"], "retries": pool["retries"]}
    return out


def _haproxy_servers(text: str) -> dict[str, dict[str, Any]]:
    text = text.lstrip("# ")
    out = {}

    def num(v: str) -> int:
        return int(v) if v.strip().isdigit() else 0

    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") != "be" or row.get("svname") in ("FRONTEND", "BACKEND"):
            if row.get("pxname") == "be" and row.get("svname") == "BACKEND":
                out["_pool"] = {"queued": num(row.get("qcur", "")), "retries": num(row.get("wretr", ""))}
            continue
        status = row.get("status", "")
        out[row["svname"]] = {
            "state": "up" if status.startswith("UP") or status == "no check" else "down", "raw_state": status,
            "total": num(row["stot"]), "failures": num(row["econ"]) + num(row["eresp"]),
            "inflight": num(row["scur"]), "retries": num(row["wretr"]), "redispatches": num(row["wredis"]),
            "queued": num(row["qcur"]), "check": row.get("check_status"),
        }
    return out


class Poller(threading.Thread):
    """Samples a Source every POLL seconds: [(time, {server: {...}})]."""

    def __init__(self, source: Source) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.series: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.time()
            s = self.source.sample()
            if s is not None:
                self.series.append((t, s))
            self.halt.wait(POLL)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


@dataclass
class Proxy:
    kind: str
    port: int
    source: Source
    name: str
    config: str


def start_proxy(env: Env, kind: str, tag: str, pool: Pool) -> Proxy:
    port = bl.free_port()
    name = f"{kind}-{tag}"
    if kind == "haproxy":
        text = haproxy_cfg(env.tmp, name, port, pool)
        cfg = env.tmp / f"{name}.cfg"
        cfg.write_text(text)
        cmd = [env.tools["haproxy"], "-f", str(cfg), "-db"]
        sock = env.tmp / f"{name}.sock"
    else:
        text = l7switch_yaml(port, pool)
        cfg = env.tmp / f"{name}.yaml"
        cfg.write_text(text)
        sock = env.tmp / f"{name}.sock"
        cmd = [sys.executable, str(PROCS), "_l7switch", "--config", str(cfg),
               "--sock", str(sock)]
    log(f"start {name}: {shlex.join(cmd)}")
    proc = env.procs.start(name, cmd)
    err = bl.wait_port(port, proc, timeout=15.0)
    if err:
        tail = env.procs.log_tail(name, 30)
        env.procs.stop(name)
        raise RuntimeError(f"{name} failed to start ({err})\n{text}\n{tail}")
    src = Source(kind, sock)
    deadline = time.time() + 5
    while src.sample() is None and time.time() < deadline:
        time.sleep(0.1)
    env.note(f"{name} config", text)
    return Proxy(kind, port, src, name, text)


def stop_proxy(env: Env, p: Proxy) -> str:
    """Stop it; returns the transition lines of its log."""
    text = ""
    for n, _, logf, path in env.procs.procs:
        if n == p.name:
            logf.flush()
    env.procs.stop(p.name)
    try:
        text = (env.tmp / f"{p.name}.log").read_text(errors="replace")
    except OSError:
        pass
    keep = [ln for ln in text.splitlines()
            if re.search(r" -> |is (DOWN|UP)|Server be/|ERROR|Traceback|Error", ln)]
    env.note(f"{p.name} log (transitions, errors)", "\n".join(keep[-60:]) or "(none)")
    # l7switch logs each error answer: "<id> 503 GET /100b (default): <why>"; count them by why.
    why: dict[str, int] = {}
    for m in re.finditer(r"WARNING [0-9a-f]+ (\d{3}) \S+ \S+ \([^)]*\): (.*)", text):
        key = f"{m.group(1)} " + re.sub(r"127\.0\.0\.1:\d+", "SERVER", m.group(2))
        why[key] = why.get(key, 0) + 1
    if why:
        env.note(f"{p.name} error answers by reason",
                 "\n".join(f"{n:6} {k}" for k, n in sorted(why.items(), key=lambda kv: -kv[1])))
    return text


def wait_all_up(src: Source, names: list[str], timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = src.sample()
        if s and all(s.get(n, {}).get("state") == "up" for n in names):
            return True
        time.sleep(0.1)
    return False


def get_once(port: int, path: str = "/100b", timeout: float = 5.0) -> int | str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError) as e:
        return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------- series helpers

Series = list[tuple[float, dict[str, dict[str, Any]]]]


def first_when(series: Series, after: float, pred: Callable[[dict[str, dict[str, Any]]], bool]) -> float | None:
    for t, s in series:
        if t >= after and pred(s):
            return t
    return None


def at(series: Series, t: float, before: bool = True) -> dict[str, dict[str, Any]] | None:
    """The last sample taken at or before ``t`` (before=True), or the first at or after it."""
    if before:
        found = None
        for ts, s in series:
            if ts > t:
                break
            found = s
        return found
    return next((s for ts, s in series if ts >= t), None)


def delta(series: Series, server: str, key: str, t0: float, t1: float, from_before: bool = False) -> int | None:
    """How much ``key`` of ``server`` grew from the first sample at/after t0 (``from_before``: the last
    one before t0) to the last at/before t1."""
    a, b = at(series, t0, before=from_before), at(series, t1)
    if a is None or b is None or server not in a or server not in b:
        return None
    return int(b[server][key]) - int(a[server][key])


# --------------------------------------------------------------------------- wrk


def parse_wrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": 0, "rps": None, "non2xx": 0, "socket": {}}
    if m := re.search(r"(\d+) requests in", text):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["non2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        out["socket"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    out["errors"] = out["non2xx"] + sum(out["socket"].values())
    return out


def start_wrk(env: Env, port: int, seconds: float, conns: int, path: str = "/100b") -> subprocess.Popen[bytes]:
    cmd = [env.tools["wrk"], "-t1", f"-c{conns}", f"-d{int(seconds)}s", "--latency",
           f"http://127.0.0.1:{port}{path}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish_wrk(p: subprocess.Popen[bytes], seconds: float) -> str:
    try:
        out, _ = p.communicate(timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return out.decode(errors="replace") + "\n(wrk killed: over time)"
    return out.decode(errors="replace")


def sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.05))


# --------------------------------------------------------------------------- a Python client pool


@dataclass
class Rec:
    start: float
    end: float
    status: int | str  # HTTP status, or the exception's name
    retry_after: bool = False


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for ln in lines[1:]:
        k, sep, v = ln.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    close = "close" in headers.get("connection", "").lower() or lines[0].startswith("HTTP/1.0")
    return status, headers, close


async def client_pool(port: int, clients: int, seconds: float, timeout: float,
                      at_times: list[tuple[float, Callable[[], None]]] = ()) -> tuple[list[Rec], float]:
    """``clients`` keep-alive clients sending GET /100b back to back for ``seconds``; each request
    is given up after ``timeout``. ``at_times``: (seconds after start, action). Returns the
    records and the start time."""
    loop = asyncio.get_running_loop()
    t0 = time.time()
    t_end = t0 + seconds
    recs: list[Rec] = []
    req = b"GET /100b HTTP/1.1\r\nHost: bench\r\n\r\n"
    for delay, action in at_times:
        loop.call_later(delay, action)

    async def worker() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.time() < t_end:
            t1 = time.time()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
                assert reader is not None
                writer.write(req)
                status, headers, close = await asyncio.wait_for(_read_response(reader), timeout)
                recs.append(Rec(t1, time.time(), status, "retry-after" in headers))
                if close:
                    writer.close()
                    writer = None
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError) as e:
                recs.append(Rec(t1, time.time(), type(e).__name__))
                if writer is not None:
                    writer.close()
                    writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return recs, t0


def run_clients(port: int, clients: int, seconds: float, timeout: float,
                at_times: list[tuple[float, Callable[[], None]]] = ()) -> tuple[list[Rec], float]:
    try:
        import uvloop
        return uvloop.run(client_pool(port, clients, seconds, timeout, at_times))
    except ImportError:
        return asyncio.run(client_pool(port, clients, seconds, timeout, at_times))


