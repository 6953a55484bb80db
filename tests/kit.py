"""The test kit. Mostly for tests that use real sockets: a uvloop loop on a background thread, blocking
clients that read responses byte-exact, and scripted raw origins for faults.

Servers under test (the switch, origins) run on the loop thread (``LoopThread``); tests talk to
them with plain blocking sockets, which makes raw-bytes cases (one byte at a time, half-closes,
resets) easy to write and impossible to mis-schedule. ``Conn`` keeps its own buffer so
pipelined, interim, chunked and close-delimited responses can be checked byte for byte.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvloop

import l7switch

T = TypeVar("T")


# ---- the loop thread and blocking clients ----------------------------------------------------

#: Where the l7switch under test lives: the source tree, or build/compiled when `make
#: test-compiled` runs the suite against the mypyc build (PYTHONPATH). Subprocesses (`l7switch
#: run`, `ctl`, workers) start from there, so `python -m l7switch` imports the same build.
PACKAGE_ROOT = Path(l7switch.__file__).resolve().parents[1]
#: The suite is running against the mypyc build: a test that replaces a method of a compiled
#: class (compiled callers call it directly, past the patch) runs only on the pure build.
COMPILED = Path(importlib.import_module("l7switch.proxy.upstream").__file__ or "").suffix != ".py"


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


# ---- a buffered client ------------------------------------------------------------------------

class Response:
    def __init__(self, status: int, reason: bytes, headers: list[tuple[str, str]], body: bytes,
                 raw_head: bytes, chunked: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw_head = raw_head
        self.chunked = chunked

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def json(self) -> dict:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:80]!r}>"


class Conn:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = connect(port, timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def __enter__(self) -> Conn:
        return self

    def trickle(self, data: bytes, every: float, limit: float) -> None:
        """Send ``data`` a byte at a time, ``every`` seconds apart, for ``limit`` seconds at most;
        stops early when the peer has closed (a send fails)."""
        t0 = time.monotonic()
        for i in range(len(data)):
            try:
                self.send(data[i:i + 1])
            except OSError:
                return
            time.sleep(every)
            if time.monotonic() - t0 > limit:
                return

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.eof:
            raise ConnectionError("peer closed")
        self.sock.settimeout(self.timeout)
        data = self.sock.recv(1 << 20)
        if not data:
            self.eof = True
            raise ConnectionError("peer closed")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> tuple[int, bytes, list[tuple[str, str]], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.split(b"\r\n")
        version, status, *reason = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        return int(status), reason[0] if reason else b"", headers, raw + b"\r\n\r\n"

    def response(self, head: bool = False, keep_interim: bool = False) -> Response:
        """One final response (1xx interim responses are skipped unless keep_interim)."""
        while True:
            status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and status != 101 and not keep_interim:
                continue
            break
        resp = Response(status, reason, headers, b"", raw, False)
        if head or status in (204, 304) or 100 <= status < 200:
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if te:
            assert te == "chunked", te
            resp.chunked = True
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exact(size))
                assert self._exact(2) == b"\r\n"
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._exact(int(cl))
        else:
            resp.body = self.read_to_close()
        return resp

    def read_to_close(self, limit: float | None = None) -> bytes:
        """Everything up to EOF (or reset). Raises TimeoutError if the peer keeps it open."""
        self.sock.settimeout(limit or self.timeout)
        chunks = [self.buf]
        self.buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        self.eof = True
        return b"".join(chunks)

    def is_closed(self, wait: float = 2.0) -> bool:
        """True if the peer closes (EOF or reset) within ``wait`` s with nothing more sent."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except (TimeoutError, socket.timeout):
            return False
        if data:
            self.buf += data
            return False
        return True

    def is_open(self, wait: float = 0.1) -> bool:
        """Nothing arrives and no close within ``wait`` s."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1)
        except (TimeoutError, socket.timeout):
            return True
        except ConnectionResetError:
            return False
        if data:
            self.buf += data
        return bool(data)


def get(path: str, host: str = "x", extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def exchange(port: int, raw: bytes, head: bool = False) -> Response:
    with Conn(port) as c:
        c.send(raw)
        return c.response(head=head)


def wait_for(pred, timeout: float = 3.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ---- scripted raw origins ------------------------------------------------------------------

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawOrigin:
    def __init__(self, server: asyncio.AbstractServer) -> None:
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []  # heads read with read_head()
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """The request head up to and including the blank line."""
    return await reader.readuntil(b"\r\n\r\n")


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer sees a TCP reset."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TLSOrigin:
    """Answers every request with its own name (or, for POST /echo, the body back), then waits for
    the client's close_notify and sends its own, so sessions end cleanly and stay resumable."""

    def __init__(self, name: str, ctx: ssl.SSLContext) -> None:
        self.name = name
        self.ctx = ctx
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.handshakes = 0
        self.sni: list[str | None] = []
        self.tasks: set[asyncio.Task] = set()
        ctx.sni_callback = self._on_sni

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            payload = body if head.startswith(b"POST /echo") else self.name.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(payload))
            writer.write(payload)
            await writer.drain()
            await reader.read()  # until the client's close_notify (or EOF)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ---- rule files and checks (no sockets; pure tests use these too) -------------------------------

def simple_config(*ports: int, extra: str = "") -> str:
    """One pool ``p`` with the given origin ports, plus any extra top-level YAML."""
    servers = ", ".join(f"127.0.0.1:{p}" for p in ports)
    return f"listen: [{{address: 127.0.0.1:0}}]\npools:\n  p: {{servers: [{servers}]}}\ndefault_pool: p\n{extra}"


def pool_config(ports: list[int], scheduler: str, options: str = "{}", weights: list[int] | None = None) -> str:
    weights = weights or [1] * len(ports)
    servers = ", ".join(f"{{address: 127.0.0.1:{p}, weight: {w}, name: o{i}}}"
                        for i, (p, w) in enumerate(zip(ports, weights)))
    return (f"listen: [{{address: 127.0.0.1:0}}]\ndefault_pool: p\npools:\n  p:\n"
            f"    scheduler: {scheduler}\n    scheduler_options: {options}\n    servers: [{servers}]\n")


def check_png(data: bytes) -> tuple[int, int]:
    """Walk every chunk, verify CRCs and that IDAT inflates to the right size; (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height, depth, ctype = struct.unpack(">IIBB", data[16:26])
    assert (depth, ctype) == (8, 6)  # 8-bit RGBA
    assert len(zlib.decompress(idat)) == height * (1 + 4 * width)
    return width, height



# ---- rule files with the availability keys ---------------------------------------------------------

def _flow(v: Any) -> str:
    """A YAML flow value: dicts as {k: v}, lists as [a, b], anything else as written."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return str(v)


def avail_config(ports: list[int], scheduler: str = "rr", options: str = "{}",
                 weights: list[int] | None = None, *, backup: tuple[str, ...] | list[str] = (),
                 servers: dict[str, dict[str, Any]] | None = None,
                 timeouts: dict[str, Any] | None = None, **pool_keys: Any) -> str:
    """Pool ``p`` with servers o0, o1... on ``ports`` (as ``pool_config``), those named in
    ``backup`` in its ``backup:`` list, ``servers`` per-server keys by name, ``pool_keys`` the
    pool's own keys (maxconn, passive, queue, slow_start, retries, retry_budget, persistence...)
    and ``timeouts`` the top-level section; values are written as YAML flow text."""
    weights = weights or [1] * len(ports)
    entries: dict[bool, list[str]] = {False: [], True: []}
    for i, (port, w) in enumerate(zip(ports, weights)):
        name = f"o{i}"
        fields = {"address": f"127.0.0.1:{port}", "weight": w, "name": name, **(servers or {}).get(name, {})}
        entries[name in backup].append(_flow(fields))
    lines = ["listen: [{address: 127.0.0.1:0}]", "default_pool: p", "pools:", "  p:",
             f"    scheduler: {scheduler}", f"    scheduler_options: {options}",
             f"    servers: [{', '.join(entries[False])}]"]
    if entries[True]:
        lines.append(f"    backup: [{', '.join(entries[True])}]")
    lines += [f"    {k}: {_flow(v)}" for k, v in pool_keys.items()]
    if timeouts:
        lines.append(f"timeouts: {_flow(timeouts)}")
    return "\n".join(lines) + "\n"
