#!/usr/bin/env python3
"""Memory per idle keep-alive connection in l7switch.

Starts l7switch (and, unless --config is given, an nginx origin plus a generated
config), opens N client connections that each send one `GET /`, read the full
response and then stay open and idle, and reads l7switch's VmRSS from
/proc/<pid>/status. Prints RSS before/after and bytes per connection.

Usage:  python bench/idle_conns.py [-n 10000] [--concurrency 500] [--config FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httptools
import uvloop

import benchlib as bl

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: l7switch-idle-bench\r\n\r\n"


class IdleClient(asyncio.Protocol):
    """Send one request, wait for the complete response, then just sit there.

    A raw Protocol (not streams) keeps the client's own per-connection cost tiny,
    so 10k of them fit comfortably next to the server on a small machine.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[int] = loop.create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(REQUEST)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not self.done.done():
                self.done.set_exception(e)

    def on_message_complete(self) -> None:  # httptools callback
        if not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("closed before response"))


async def open_all(host: str, port: int, n: int, concurrency: int, time_limit: float
                   ) -> tuple[list[IdleClient], Counter[str], bool]:
    """Open n idle connections, at most `concurrency` handshakes/requests in flight."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    clients: list[IdleClient] = []
    errors: Counter[str] = Counter()

    async def one() -> None:
        async with sem:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: IdleClient(loop), host, port), 10)
                clients.append(proto)
                status = await asyncio.wait_for(proto.done, 10)
                if status != 200:
                    errors[f"HTTP {status}"] += 1
            except (OSError, asyncio.TimeoutError, httptools.HttpParserError) as e:
                errors[type(e).__name__ + (f" ({e.strerror})" if isinstance(e, OSError) and e.strerror else "")] += 1

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), time_limit)
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True  # wait_for cancelled the rest; report what we got
    return clients, errors, timed_out


def listen_address(config: Path) -> tuple[str, int]:
    """First `listen[].address` of an l7switch YAML config."""
    import yaml  # in the project venv (l7switch dependency)
    addr = yaml.safe_load(config.read_text())["listen"][0]["address"]
    host, _, port = str(addr).rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port)


def mib(b: int) -> str:
    return f"{b / 2**20:.1f} MiB"


def run(args: argparse.Namespace, procs: bl.Procs, tmp: Path) -> int:
    n = args.connections
    soft, hard = bl.raise_nofile(n + 1000)
    if hard < n + 100:
        print(f"WARNING: client RLIMIT_NOFILE hard limit is {hard} < N+100 = {n + 100}; "
              f"capping N to {hard - 100}", file=sys.stderr)
        n = hard - 100
    print(f"# client RLIMIT_NOFILE = {soft}/{hard}", file=sys.stderr)

    if args.config:
        config = args.config.resolve()
    else:
        tools = bl.ensure_tools(["nginx"])
        origin_port = bl.start_origin(procs, tmp, tools["nginx"])
        config = bl.write_l7switch_config(tmp, bl.free_port(), origin_port)
        # The connection cap (issue 10) would otherwise be derived from the fd limit and start
        # closing idle keep-alive connections above 80% of it: room for N, below that mark.
        with config.open("a") as f:
            f.write(f"limits: {{max_connections: {n * 13 // 10}}}\n")
    host, port = listen_address(config)
    cmd = bl.l7switch_cmd(config)
    env = None
    if args.build is not None:  # that package (e.g. the compiled build) with this interpreter
        cmd, env = bl.package_cmd(config, args.build.resolve())
    print(f"# l7switch: {shlex.join(cmd)} (RLIMIT_NOFILE raised in the child via preexec_fn)",
          file=sys.stderr)
    proc = procs.start("l7switch", cmd, env=env)
    if err := bl.wait_port(port, proc, timeout=10.0):
        print(f"l7switch failed to start: {err}\n{procs.log_tail('l7switch')}", file=sys.stderr)
        return 1
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    server_nofile = next((ln.split()[3:5] for ln in limits.splitlines() if ln.startswith("Max open files")), "?")
    print(f"# l7switch pid {proc.pid}, RLIMIT_NOFILE {'/'.join(server_nofile)}", file=sys.stderr)

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    clients: list[IdleClient] = []
    try:
        # One request first so lazy imports/pools are in the baseline, not the delta.
        warm, werr, _ = loop.run_until_complete(open_all(host, port, 1, 1, 15))
        if werr or not warm:
            print(f"warm-up request failed: {dict(werr)}\n{procs.log_tail('l7switch')}", file=sys.stderr)
            return 1
        for c in warm:
            c.transport.close()  # type: ignore[union-attr]
        loop.run_until_complete(asyncio.sleep(0.5))
        rss0 = bl.rss_bytes(proc.pid)

        t0 = time.monotonic()
        clients, errors, timed_out = loop.run_until_complete(
            open_all(host, port, n, args.concurrency, args.time_limit))
        elapsed = time.monotonic() - t0
        # Let the server finish any per-connection work (e.g. returning upstream conns).
        loop.run_until_complete(asyncio.sleep(args.settle))
        rss1 = bl.rss_bytes(proc.pid)
        answered = [c for c in clients if c.done.done() and not c.done.cancelled() and not c.done.exception()]
        alive = sum(1 for c in answered if not c.closed)
        server_dead = proc.poll() is not None

        print(f"\nl7switch idle keep-alive connections (N requested = {args.connections})")
        print(f"  opened+answered      : {alive} still open after {args.settle:.0f} s settle "
              f"({len(clients)} connected in {elapsed:.1f} s{', TIME LIMIT HIT' if timed_out else ''})")
        if len(answered) > alive:
            print(f"  closed by server     : {len(answered) - alive} (after a successful response)")
        if errors:
            print("  errors               : " + ", ".join(f"{k}: {v}" for k, v in errors.most_common()))
        if server_dead:
            print(f"  l7switch DIED (exit {proc.returncode}):\n{procs.log_tail('l7switch')}")
        print(f"  VmRSS baseline       : {mib(rss0)}")
        print(f"  VmRSS with idle conns: {mib(rss1)}")
        if alive:
            print(f"  RSS total / conn     : {rss1 / alive:,.0f} B")
            print(f"  (RSS - baseline)/conn: {(rss1 - rss0) / alive:,.0f} B")
        return 0 if alive and not server_dead else 1
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        loop.run_until_complete(asyncio.sleep(0.2))
        loop.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--connections", type=int, default=10_000, help="idle connections (default 10000)")
    ap.add_argument("--concurrency", type=int, default=500, help="connects in flight at once (default 500)")
    ap.add_argument("--config", type=Path,
                    help="existing l7switch YAML (its first listen address is used); "
                         "default: generate one in front of a temp nginx origin")
    ap.add_argument("--time-limit", type=float, default=120, help="overall limit for opening conns (s)")
    ap.add_argument("--settle", type=float, default=2, help="seconds to wait before reading RSS")
    ap.add_argument("--build", type=Path, metavar="DIR",
                    help="run the l7switch package in DIR (e.g. build/compiled) instead of this tree")
    ap.add_argument("--keep-tmp", action="store_true", help="keep temp dir (configs, logs)")
    args = ap.parse_args()
    print(f"# command: {shlex.join([sys.executable] + sys.argv)}", file=sys.stderr)

    bl.install_sigterm_handler()
    tmp = Path(tempfile.mkdtemp(prefix="l7idle-"))
    procs = bl.Procs(tmp)
    try:
        return run(args, procs, tmp)
    except KeyboardInterrupt:
        print("# interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bl.cleanup(procs, tmp, args.keep_tmp)


if __name__ == "__main__":
    sys.exit(main())
