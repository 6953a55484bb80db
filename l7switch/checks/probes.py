"""One probe of one server: connect, maybe send, read a bounded answer, close. Never raises.

Each probe is a coroutine on the running loop (uvloop in the switch) over a plain
``asyncio.Protocol``: no stream buffers, and what is kept is bounded by the judges in
``verdicts.py`` (16 KiB for HTTP, 1 KiB for an agent line). The whole probe — connect included —
is bounded by the check's timeout (HAProxy ``timeout check``, falling back to ``inter``), so a
server that accepts and never answers costs one socket for ``timeout`` seconds and is a failure.

Connections end with a reset (SO_LINGER 0), as HAProxy ends its checks: a check every second to
each of 200 servers would otherwise leave thousands of sockets in TIME_WAIT on the switch's host.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from ..balance.health import AgentReply, CheckResult
from .verdicts import AgentLine, HttpJudge

_LINGER_0 = struct.pack("ii", 1, 0)


class _Reader(asyncio.Protocol):
    """Sends ``request`` on connect, hands what arrives to ``feed`` until it returns a verdict,
    and ``eof`` when the peer closes first. ``done`` holds the verdict."""

    def __init__(self, request: bytes, feed: Callable[[bytes], Any], eof: Callable[[], Any]) -> None:
        self.request = request
        self.feed = feed
        self.eof = eof
        self.done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.request:
            t.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        verdict = self.feed(data)
        if verdict is not None:
            self.done.set_result(verdict)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(self.eof())
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(self.eof())
        else:
            self.done.set_exception(exc)


async def tcp_probe(host: str, port: int, timeout: float) -> CheckResult:
    """Layer 4: a connection accepted within ``timeout`` passes ("L4OK")."""
    start = time.monotonic()
    transport: Any = None
    loop = asyncio.get_running_loop()
    cm = asyncio.timeout(timeout)
    try:
        async with cm:
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
        return _result(True, "L4OK", start)
    except Exception as exc:  # a probe never raises: every failure is a result
        return _result(False, timed_out(timeout) if cm.expired() else describe(exc), start)
    finally:
        _close(transport)


async def http_probe(host: str, port: int, timeout: float, judge: HttpJudge, request: bytes) -> CheckResult:
    """Layer 7: ``request`` sent, the response judged by ``judge`` ("L7OK 200", "status 500",
    "body mismatch", "invalid response")."""
    start = time.monotonic()
    verdict, failure = await _exchange(host, port, timeout, _Reader(request, judge.feed, judge.eof))
    if failure is not None:
        return _result(False, failure, start)
    ok, detail = verdict
    return _result(ok, detail, start)


async def agent_probe(host: str, port: int, timeout: float) -> tuple[AgentReply | None, CheckResult]:
    """An agent's one-line reply: (the reply, a passing result whose detail is the line), or
    (None, a failure saying why: "connection refused", "reply over 1 KiB", "invalid reply ...")."""
    start = time.monotonic()
    line = AgentLine()
    got, failure = await _exchange(host, port, timeout, _Reader(b"", line.feed, line.eof))
    if failure is not None:
        return None, _result(False, failure, start)
    reply, (ok, detail) = got
    return reply, _result(ok, detail, start)


async def _exchange(host: str, port: int, timeout: float, reader: _Reader) -> tuple[Any, str | None]:
    """Connect, let ``reader`` converse, close: (its verdict, None), or (None, what went wrong)."""
    loop = asyncio.get_running_loop()
    cm = asyncio.timeout(timeout)
    try:
        async with cm:
            await loop.create_connection(lambda: reader, host, port)
            return await reader.done, None
    except Exception as exc:  # a probe never raises: every failure is a result
        return None, timed_out(timeout) if cm.expired() else describe(exc)
    finally:
        _close(reader.transport)


def timed_out(timeout: float) -> str:
    return f"timeout after {timeout:g}s"


def describe(exc: BaseException) -> str:
    """An OS error in the words of other servers' logs: "connection refused", "reset"."""
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return os.strerror(exc.errno).lower()
    text = str(exc)
    if isinstance(exc, OSError) and "refused" in text.lower():  # uvloop without an errno
        return "connection refused"
    return text or type(exc).__name__


def _close(transport: asyncio.Transport | None) -> None:
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        except OSError:
            pass
    transport.abort()


def _result(ok: bool, detail: str, start: float) -> CheckResult:
    end = time.monotonic()
    return CheckResult(ok, detail, end - start, end)
