#!/usr/bin/env python3
"""fds (and RSS) per slow spliced upload in l7switch (issue 10: at most 2.5 on average).

Runs l7switch from this checkout in a subprocess in front of a raw origin (an asyncio server
in this process that reads each request head, then counts body bytes as they come), opens N
uploads — a head with ``Content-Length: 1 MiB`` (spliced: above splice.threshold), then one
byte per round, a second apart; ``limits.buffer_body: 0``, so each connects at its head — and reads the switch's open fds from /proc/PID/fd and its
VmRSS from /proc/PID/status once every upload's bytes have reached the origin. Everything is
bounded by --seconds; the processes are stopped on the way out.

Usage:  python bench/fd_budget.py [-n 1000] [--rounds 3] [--seconds 20] [--pool-limit N]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import uvloop

import benchlib as bl

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def bench(args: argparse.Namespace, procs: bl.Procs, tmp: Path) -> int:
    deadline = time.monotonic() + args.seconds
    heads = 0
    body = 0
    handlers: set[asyncio.Task[None]] = set()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal heads, body
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            heads += 1
            while data := await reader.read(65536):
                body += len(data)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            handlers.discard(task)
            writer.close()

    origin = await asyncio.start_server(on_conn, "127.0.0.1", 0, backlog=4096)
    origin_port = origin.sockets[0].getsockname()[1]
    port = bl.free_port()
    cfg = tmp / "l7switch.yaml"
    cfg.write_text(f"listen: [{{address: 127.0.0.1:{port}}}]\n"
                   f"pools:\n  p: {{servers: [127.0.0.1:{origin_port}]}}\ndefault_pool: p\n"
                   "timeouts: {client: 120s, server: 120s}\n"
                   "splice: {enabled: true, threshold: 64KiB}\n"
                   # Connect at the head, so the body is spliced from its first byte: this measures
                   # the splice path. (By default a body is read up to 64 KiB before a server is
                   # chosen, and a slow upload holds 1 fd: bench/hostile/run.py shows that case.)
                   "limits: {buffer_body: 0}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.pool_limit is not None:  # (a smaller pipe pool, to watch the copy fallback)
        env["L7SWITCH_BENCH_PIPES"] = str(args.pool_limit)
    cmd = [sys.executable, "-c", "import os, sys; import l7switch.net.pipes as p; "
           "n = os.environ.get('L7SWITCH_BENCH_PIPES'); "
           "p.pool.limit = int(n) if n else p.pool.limit; "
           "from l7switch.cli.main import main; sys.exit(main(['run', '-c', sys.argv[1]]))", str(cfg)]
    proc = procs.start("l7switch", cmd, cwd=ROOT, env=env)
    err = await asyncio.to_thread(bl.wait_port, port, proc)
    if err:
        print(f"l7switch did not start: {err}\n{procs.log_tail('l7switch')}", file=sys.stderr)
        return 1
    await asyncio.sleep(0.3)
    pid = proc.pid
    fds0, rss0 = fds(pid), bl.rss_bytes(pid)

    writers: list[asyncio.StreamWriter] = []
    head = b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % MiB

    async def open_one() -> None:
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(head)
        writers.append(w)

    async def until(pred, what: str) -> bool:
        while not pred():
            if time.monotonic() > deadline:
                print(f"timed out waiting for {what}", file=sys.stderr)
                return False
            await asyncio.sleep(0.05)
        return True

    ok = True
    try:
        for i in range(0, args.n, 200):  # in batches: the listen backlog is finite
            await asyncio.gather(*(open_one() for _ in range(min(200, args.n - i))))
        ok = await until(lambda: heads == args.n, f"{args.n} heads at the origin")
        peak_fds = 0
        for rnd in range(1, args.rounds + 1):
            if not ok:
                break
            for w in writers:
                w.write(b"x")
            ok = await until(lambda: body == rnd * args.n, f"round {rnd} of bytes")
            peak_fds = max(peak_fds, fds(pid))
            if rnd < args.rounds:
                await asyncio.sleep(1.0)  # "a byte now and then"
        fds1, rss1 = fds(pid), bl.rss_bytes(pid)
    finally:
        for w in writers:
            w.transport.abort()
        origin.close()
        for t in list(handlers):
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
    n = args.n
    print(f"uploads: {n} slow spliced (Content-Length 1 MiB, {args.rounds} x 1 byte, 1 s apart)")
    print(f"switch fds: {fds0} before, {fds1} with the uploads open (peak {peak_fds})")
    print(f"fds per upload: {(fds1 - fds0) / n:.3f}  (client + server socket = 2; old code: 6)")
    print(f"switch RSS: {rss0 / MiB:.1f} MiB before, {rss1 / MiB:.1f} MiB with the uploads open; "
          f"{(rss1 - rss0) / n / 1024:.1f} KiB per upload")
    if not ok:
        print("INCOMPLETE: not every upload reached the origin in time", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="slow uploads (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="bytes sent per upload, 1 s apart")
    ap.add_argument("--seconds", type=float, default=20.0, help="bound on the whole run")
    ap.add_argument("--pool-limit", type=int, default=None, help="the switch's pipe pool limit")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    bl.raise_nofile(65536)
    bl.install_sigterm_handler()
    tmp = Path(tempfile.mkdtemp(prefix="l7-fd-budget-"))
    procs = bl.Procs(tmp)
    try:
        return uvloop.run(bench(args, procs, tmp))
    finally:
        bl.cleanup(procs, tmp, args.keep_tmp)


if __name__ == "__main__":
    sys.exit(main())
