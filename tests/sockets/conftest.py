"""Fixtures for the socket tests: the switch, origins and scripted raw origins all run on one
uvloop loop on a background thread (kit.LoopThread); tests talk to them with plain blocking
sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from kit import Behaviour, LoopThread, RawOrigin, simple_config

import l7switch.net.splice
from l7switch.config import parse_config
from l7switch.devtools.origin import OriginServer, standard_handler
from l7switch.runtime.switch import Switch
from l7switch.spec import Config


@pytest.fixture(scope="session")
def lt() -> LoopThread:
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.close()


@pytest.fixture
def origin_factory(lt: LoopThread):
    """``origin_factory(name="o1")`` -> a started OriginServer with the standard routes."""
    started: list[OriginServer] = []

    def make(name: str = "origin", handler=None) -> OriginServer:
        async def go() -> OriginServer:
            o = OriginServer(handler or standard_handler(name), name=name)
            await o.start()
            return o
        o = lt.run(go())
        started.append(o)
        return o

    yield make
    for o in started:
        lt.run(o.stop(), timeout=10)


@pytest.fixture
def switch_factory(lt: LoopThread):
    """``switch_factory(yaml_text)`` -> a started Switch listening on 127.0.0.1:<port> (or
    ``switch_factory(config)`` for a parsed, edited ``Config``)."""
    started: list[Switch] = []

    def make(yaml_text: str | Config) -> Switch:
        cfg = yaml_text if isinstance(yaml_text, Config) else parse_config(yaml_text, "<test>")

        async def go() -> Switch:
            sw = Switch(cfg)
            await sw.start()
            return sw
        sw = lt.run(go())
        started.append(sw)
        return sw

    yield make
    for sw in started:
        lt.run(sw.stop(0.2), timeout=10)


@pytest.fixture
def proxy(origin_factory, switch_factory):
    """``proxy(extra_yaml="")`` -> (switch, origin): one standard origin behind a switch."""
    def make(extra: str = "", name: str = "o1"):
        o = origin_factory(name)
        sw = switch_factory(simple_config(o.port, extra=extra))
        return sw, o
    return make


@pytest.fixture
def raw_origin(lt: LoopThread):
    """``raw_origin(behaviour)`` -> RawOrigin; ``behaviour(reader, writer)`` runs per connection.

    The writer is closed when the behaviour returns (unless it already was).
    """
    started: list[RawOrigin] = []

    def make(behaviour: Behaviour) -> RawOrigin:
        holder: list[RawOrigin] = []

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ro = holder[0]
            ro.connections += 1
            ro.writers.append(writer)
            task = asyncio.current_task()
            ro.tasks.add(task)
            try:
                await behaviour(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                ro.tasks.discard(task)
                if not writer.transport.is_closing():
                    writer.close()

        async def go() -> RawOrigin:
            srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
            ro = RawOrigin(srv)
            holder.append(ro)
            return ro
        ro = lt.run(go())
        started.append(ro)
        return ro

    yield make

    async def stop(ro: RawOrigin) -> None:
        ro.server.close()
        for w in ro.writers:
            w.transport.abort()
        for t in list(ro.tasks):
            t.cancel()
        await asyncio.gather(*ro.tasks, return_exceptions=True)
    for ro in started:
        lt.run(stop(ro), timeout=10)


@pytest.fixture
def free_port() -> int:
    """A port with nothing listening (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def count_splice(monkeypatch):
    """``count_splice[0]``: how many os.splice calls the switch made during the test."""
    calls = [0]
    real = os.splice

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(l7switch.net.splice.os, "splice", counting)
    return calls
