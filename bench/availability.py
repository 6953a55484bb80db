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

Every origin here is a small uvloop server in its own process (this file, ``_origin``); it
counts the requests it gets per 0.1 s, the health checks it answers, and the most requests it
held at once. l7switch runs through this file's ``_l7switch`` wrapper: the ordinary
``l7switch run``, plus a unix socket that answers ``Switch.snapshot()`` as JSON, which the
benchmark polls every 0.1 s as it polls HAProxy's stats socket (``show stat``).

Usage:  .venv/bin/python bench/availability.py [--scenarios kill,hung,maxconn,cost]
                                               [--proxies l7switch,haproxy] [--quick]
"""
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT_DIR = HERE / "out"
SCENARIOS = ("kill", "hung", "maxconn", "cost")
PROXIES = ("l7switch", "haproxy")
POLL = 0.1  # seconds between samples of the proxy's server states
BODY = b"x" * 100  # the origins' answer: 100 B, as bench/run.py's /100b


# =========================================================================== the origin process


def origin_main(argv: list[str]) -> int:
    """``_origin --port P --stats FILE [--mode ok|hang|slow] [--delay S]``.

    ok: answer every request at once (100 B); slow: answer after --delay seconds; hang: read
    requests and never answer. SIGUSR1 switches to hang (health checks included), SIGUSR2 back
    to ok. Every 0.2 s (and on SIGTERM) the counts go to --stats as JSON.
    """
    ap = argparse.ArgumentParser(prog="availability.py _origin")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--mode", default="ok", choices=("ok", "hang", "slow"))
    ap.add_argument("--delay", type=float, default=0.2)
    a = ap.parse_args(argv)
    try:
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    st: dict[str, Any] = {
        "port": a.port, "started": time.time(), "mode": a.mode, "hang_since": None,
        "buckets": {},  # int(time * 10) -> traffic requests received in that 0.1 s
        "health": [],  # times health checks were answered
        "health_hung": [],  # times health checks came in while hanging (never answered)
        "first_traffic": None, "traffic": 0, "received": 0, "conns": 0, "conc": 0, "max_conc": 0,
    }
    buckets: dict[int, int] = st["buckets"]
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
    health_resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
    cl_re = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
    mode = [a.mode]

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.tr: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""
            self.skip = 0
            self.closing = False
            st["conns"] += 1

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            while True:
                if self.skip:
                    n = min(self.skip, len(buf))
                    buf, self.skip = buf[n:], self.skip - n
                    if self.skip:
                        break
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > 65536:
                        self.tr.close()
                        buf = b""
                    break
                head, buf = buf[:i], buf[i + 4:]
                lower = head.lower()
                if (m := cl_re.search(lower)) is not None:
                    self.skip = int(m.group(1))
                self.request(head, lower)
            self.buf = buf

        def request(self, head: bytes, lower: bytes) -> None:
            now = time.time()
            st["received"] += 1
            first = head.split(b"\r\n", 1)[0]
            parts = first.split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            if mode[0] == "hang":
                if path.startswith(b"/health"):
                    st["health_hung"].append(now)
                return
            close = b"\r\nconnection: close" in lower or (
                first.endswith(b"HTTP/1.0") and b"\r\nconnection: keep-alive" not in lower)
            if path.startswith(b"/health"):
                st["health"].append(now)
                self.answer(health_resp, close)
                return
            st["traffic"] += 1
            k = int(now * 10)
            buckets[k] = buckets.get(k, 0) + 1
            if st["first_traffic"] is None:
                st["first_traffic"] = now
            if mode[0] == "slow":
                st["conc"] += 1
                st["max_conc"] = max(st["max_conc"], st["conc"])
                loop.call_later(a.delay, self.slow_done, close)
            else:
                self.answer(resp, close)

        def slow_done(self, close: bool) -> None:
            st["conc"] -= 1
            self.answer(resp, close)

        def answer(self, data: bytes, close: bool) -> None:
            if self.closing or self.tr.is_closing():
                return
            self.tr.write(data)
            if close:
                self.closing = True
                self.tr.close()

    def dump() -> None:
        tmp = a.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(st))
        os.replace(tmp, a.stats)

    def tick() -> None:
        dump()
        loop.call_later(0.2, tick)

    def hang() -> None:
        mode[0] = "hang"
        st["mode"], st["hang_since"] = "hang", time.time()
        dump()

    def unhang() -> None:
        mode[0] = st["mode"] = "ok"

    stop = asyncio.Event()

    async def main() -> None:
        server = await loop.create_server(Conn, "127.0.0.1", a.port, backlog=4096, reuse_address=True)
        loop.add_signal_handler(signal.SIGUSR1, hang)
        loop.add_signal_handler(signal.SIGUSR2, unhang)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        tick()
        await stop.wait()
        server.close()
        dump()

    loop.run_until_complete(main())
    return 0


# =========================================================================== the l7switch wrapper


def l7switch_main(argv: list[str]) -> int:
    """``_l7switch --config FILE [--sock PATH]``: ``l7switch run -c FILE`` of the tree this file
    lives in (REPO first on sys.path), plus a unix socket answering ``Switch.snapshot()``."""
    ap = argparse.ArgumentParser(prog="availability.py _l7switch")
    ap.add_argument("--config", required=True)
    ap.add_argument("--sock")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from l7switch.cli.main import main as cli_main
    from l7switch.runtime import switch as sw

    if a.sock:
        original = sw.Switch.start
        keep: list[Any] = []

        async def start(self: Any) -> None:
            await original(self)

            async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    writer.write(json.dumps(self.snapshot(), default=str).encode() + b"\n")
                    await writer.drain()
                finally:
                    writer.close()

            keep.append(await asyncio.start_unix_server(answer, path=a.sock))

        sw.Switch.start = start  # type: ignore[method-assign]
    return cli_main(["run", "-c", a.config])


# =========================================================================== harness

import benchlib as bl  # (the subcommands above need nothing of it)


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
    cmd = [sys.executable, str(Path(__file__).resolve()), "_origin", "--port", str(port),
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
        cmd = [sys.executable, str(Path(__file__).resolve()), "_l7switch", "--config", str(cfg),
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
    if len(sys.argv) > 1 and sys.argv[1] == "_origin":
        return origin_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_l7switch":
        return l7switch_main(sys.argv[2:])

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
