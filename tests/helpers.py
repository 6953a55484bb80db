"""Shared test plumbing: a uvloop event loop on a background thread.

Servers under test (the switch, origins) run on that loop; tests talk to them with plain
blocking sockets, which makes raw-bytes cases (one byte at a time, half-closes, resets) easy
to write and impossible to mis-schedule.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="l7-test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        async def _call() -> Any:
            return fn(*args)
        return self.run(_call())

    def close(self) -> None:
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(_cancel_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def connect(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_until_close(s: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (or ``limit`` seconds pass)."""
    s.settimeout(limit)
    chunks = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except (TimeoutError, socket.timeout):
            break
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def read_response(s: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read exactly one HTTP/1.1 response (Content-Length, chunked or close-delimited).

    Headers come back lower-cased; for repeated names the last value wins. Raises
    ConnectionError when the peer closes before a complete response.
    """
    s.settimeout(timeout)
    f = s.makefile("rb")
    try:
        status_line = f.readline()
        if not status_line:
            raise ConnectionError("closed before a response")
        while status_line.startswith(b"HTTP/1.1 1") and not status_line.startswith(b"HTTP/1.1 101"):
            while f.readline() not in (b"\r\n", b""):
                pass
            status_line = f.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            n = int(headers["content-length"])
            body = f.read(n)
            if len(body) != n:
                raise ConnectionError(f"short body {len(body)}/{n}")
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = f.readline()
                if not size_line:
                    raise ConnectionError("closed inside chunked body")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while f.readline() not in (b"\r\n", b""):
                        pass
                    break
                parts.append(f.read(size))
                f.readline()
            body = b"".join(parts)
        elif status not in (101, 204, 304):
            body = f.read()
        return status, headers, body
    finally:
        f.close()
