"""Heads are bounded as their bytes arrive: a request header line that never ends gets 431 once
``limits.max_header_bytes`` is passed (llhttp buffers an unfinished line without limit and calls
back only when it ends), and a server's response head over
``limits.max_response_header_bytes`` gets the client a 502 and the server connection closed."""

from __future__ import annotations

import asyncio
import select
import time
from pathlib import Path

import pytest
from kit import Conn, get, read_head, simple_config, wait_for

KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parents[2]


# ---- (c) header lines that never end -----------------------------------------------------------

def _flood_request_head(port: int, prefix: bytes, cap: int = 4 * MiB):
    """Send ``prefix`` then 'a' * 4096 pieces until the switch answers (or closes), up to
    ``cap`` bytes; returns (conn, bytes sent after the prefix, whether an answer was seen)."""
    c = Conn(port, timeout=5)
    c.sock.settimeout(2)
    c.send(prefix)
    piece = b"a" * 4096
    sent = 0
    answered = False
    while sent < cap:
        try:
            c.sock.sendall(piece)
        except OSError:  # closed/reset by the switch, or it stopped reading for 2 s
            break
        sent += len(piece)
        readable, _, _ = select.select([c.sock], [], [], 0.001)
        if readable:
            answered = True
            break
    if not answered:
        readable, _, _ = select.select([c.sock], [], [], 1.0)
        answered = bool(readable)
    return c, sent, answered


@pytest.mark.parametrize("prefix", [
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ",  # a header value that never ends
    b"GET / HTTP/1.1\r\nHost: t\r\nXXXXXXXX",  # a header name that never ends (no colon)
], ids=["endless-value", "endless-name"])
def test_endless_request_header_line_431(proxy, prefix):
    """(c) max_header_bytes (default 32 KiB) must count bytes of a header line still in
    progress: a never-ending line gets 431 and a close long before 1 MiB has been sent.
    Old code counted only completed lines (on_header), so it buffered all 4 MiB and never
    answered."""
    sw, o = proxy()
    c, sent, answered = _flood_request_head(sw.port, prefix)
    with c:
        assert answered, f"no answer after {sent} bytes of one header line"
        assert sent <= 1 * MiB, f"the switch read {sent} bytes of one header line before answering"
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"connection closed without a response after {sent} bytes: {exc!r}")
        assert r.status == 431
        assert c.is_closed()
    assert o.requests == 0


def test_endless_response_header_line_502(raw_origin, switch_factory):
    """(c) A server whose response head never ends (one header line streaming forever) must
    get the client a 502 and have its connection closed, not be buffered without limit.
    Old code counted only completed response header lines (101 max), so it swallowed all
    8 MiB of the single line and the client got no answer at all."""
    cap = 8 * MiB
    state = {"sent": 0, "stopped": False}

    async def behave(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        piece = b"a" * 16384
        try:
            while state["sent"] < cap and not writer.transport.is_closing():
                writer.write(piece)
                state["sent"] += len(piece)
                await writer.drain()
                await asyncio.sleep(0.001)  # let the switch (same loop) read
        finally:
            state["stopped"] = True
        if state["sent"] >= cap:
            await asyncio.sleep(10)  # keep the connection open: the switch must close it
    ro = raw_origin(behave)
    sw = switch_factory(simple_config(ro.port))
    with Conn(sw.port, timeout=3) as c:
        c.send(get("/"))
        t0 = time.monotonic()
        try:
            r = c.response()
        except (ConnectionError, OSError) as exc:
            pytest.fail(f"no response after {time.monotonic() - t0:.2f}s; the origin had sent "
                        f"{state['sent']} bytes of one header line: {exc!r}")
        assert r.status == 502
    assert wait_for(lambda: state["stopped"], timeout=3), "the server connection was never closed"
    assert state["sent"] < 2 * MiB, f"the switch read {state['sent']} bytes of one header line"
