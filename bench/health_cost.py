#!/usr/bin/env python3
"""What active health checks cost an idle switch: CPU% of the switch process with N servers
HTTP-checked every interval, against the same switch with checks off.

An accept-and-answer server listens on N ports in this process (uvloop, on a thread): it reads
a request head and answers ``200 ok``, counting answers. The switch runs as its own process
(``python -m l7switch run -c FILE`` from this source tree, or $L7SWITCH_CMD) with one pool of N
servers; no client traffic is sent. For each mode the switch's utime+stime (/proc, its whole
process tree) is read over ``--duration`` seconds after ``--settle`` seconds of warm-up.

Usage:  python bench/health_cost.py [--servers 200] [--interval 1] [--duration 20] [--settle 2]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvloop

import benchlib as bl

ROOT = Path(__file__).resolve().parent.parent
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Answer(asyncio.Protocol):
    """Reads a request head, answers, closes; a bare accept (TCP check) just sees the close."""

    answered = 0

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf and self.transport is not None:
            Answer.answered += 1
            self.transport.write(ANSWER)
            self.transport.close()
            self.buf = b""


def start_origins(n: int) -> tuple[list[int], asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="origins").start()

    async def listen() -> list[int]:
        ports = []
        for _ in range(n):
            srv = await loop.create_server(Answer, "127.0.0.1", 0, backlog=1024)
            ports.append(srv.sockets[0].getsockname()[1])
        return ports
    return asyncio.run_coroutine_threadsafe(listen(), loop).result(30), loop


def write_config(tmp: Path, ports: list[int], interval: float, checks: bool) -> Path:
    listen = bl.free_port()
    servers = "\n".join(f"      - 127.0.0.1:{p}" for p in ports)
    health = (f"    health: {{http: {{path: /health}}, interval: {interval:g}s, timeout: {interval / 2:g}s}}\n"
              if checks else "")
    path = tmp / f"health_{'on' if checks else 'off'}.yaml"
    path.write_text(f"listen: [{{address: 127.0.0.1:{listen}}}]\ndefault_pool: p\n"
                    f"pools:\n  p:\n    servers:\n{servers}\n{health}")
    return path


def switch_cmd(config: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if os.environ.get("L7SWITCH_CMD"):
        return bl.l7switch_cmd(config), env
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return [sys.executable, "-m", "l7switch", "run", "-c", str(config)], env


def measure(procs: bl.Procs, tmp: Path, ports: list[int], args: argparse.Namespace, checks: bool) -> dict[str, float]:
    config = write_config(tmp, ports, args.interval, checks)
    name = f"l7switch-{'on' if checks else 'off'}"
    cmd, env = switch_cmd(config)
    proc = procs.start(name, cmd, cwd=ROOT, env=env)
    listen = int(config.read_text().split("127.0.0.1:", 1)[1].split("}", 1)[0])
    err = bl.wait_port(listen, proc)
    if err is not None:
        raise SystemExit(f"{name}: {err}\n{procs.log_tail(name)}")
    time.sleep(args.settle)
    cpu0, answered0, t0 = bl.cpu_seconds(proc.pid), Answer.answered, time.monotonic()
    time.sleep(args.duration)
    cpu1, answered1, t1 = bl.cpu_seconds(proc.pid), Answer.answered, time.monotonic()
    rss = bl.rss_bytes(proc.pid)
    procs.stop(name)
    wall = t1 - t0
    return {"cpu_pct": 100 * (cpu1 - cpu0) / wall, "cpu_s": cpu1 - cpu0, "wall": wall,
            "checks_per_s": (answered1 - answered0) / wall, "rss_mib": rss / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=200)
    ap.add_argument("--interval", type=float, default=1.0, help="check interval, s (timeout: half)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds measured per mode")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after start-up before measuring")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    bl.raise_nofile()
    bl.install_sigterm_handler()
    tmp = Path(tempfile.mkdtemp(prefix="l7-health-"))
    procs = bl.Procs(tmp)
    try:
        ports, _ = start_origins(args.servers)
        print(f"# {args.servers} servers, HTTP check every {args.interval:g}s, {args.duration:g}s measured "
              f"per mode after {args.settle:g}s; switch CPU = utime+stime of its process tree")
        rows = [(mode, measure(procs, tmp, ports, args, checks=mode == "on")) for mode in ("off", "on")]
        print(f"{'checks':<8}{'CPU %':>8}{'CPU s':>8}{'checks/s':>10}{'RSS MiB':>9}")
        for mode, r in rows:
            print(f"{mode:<8}{r['cpu_pct']:>8.2f}{r['cpu_s']:>8.2f}{r['checks_per_s']:>10.1f}{r['rss_mib']:>9.1f}")
        on, off = rows[1][1], rows[0][1]
        print(f"# cost of checks: {on['cpu_pct'] - off['cpu_pct']:.2f}% of a core "
              f"({1e6 * (on['cpu_s'] - off['cpu_s']) / max(on['checks_per_s'] * on['wall'], 1):.0f} µs CPU per check)")
    finally:
        bl.cleanup(procs, tmp, args.keep_tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
