#!/usr/bin/env python3
"""The processes bench/availability.py starts: an origin that counts what it receives, and a
wrapper that runs ``l7switch run`` with a unix socket answering ``Switch.snapshot()``.

    python bench/avail_procs.py _origin --port P --stats FILE [--mode ok|hang|slow] [--delay S]
    python bench/avail_procs.py _l7switch --config FILE [--sock PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BODY = b"x" * 100  # the origins' answer: 100 B, as bench/run.py's /100b

# =========================================================================== the origin process


def origin_main(argv: list[str]) -> int:
    """``_origin --port P --stats FILE [--mode ok|hang|slow] [--delay S]``.

    ok: answer every request at once (100 B); slow: answer after --delay seconds; hang: read
    requests and never answer. SIGUSR1 switches to hang (health checks included), SIGUSR2 back
    to ok. Every 0.2 s (and on SIGTERM) the counts go to --stats as JSON.
    """
    ap = argparse.ArgumentParser(prog="avail_procs.py _origin")
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
    ap = argparse.ArgumentParser(prog="avail_procs.py _l7switch")
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




if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_origin":
        sys.exit(origin_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_l7switch":
        sys.exit(l7switch_main(sys.argv[2:]))
    sys.exit(__doc__)
