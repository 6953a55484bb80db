"""Active health checks and agents over real sockets: probes against scripted servers, and a switch
whose checker marks servers down and up, steers requests and obeys agents.

Intervals are 0.1 s (timeouts 0.05-0.08 s) so a fall of 3 takes ~0.3 s; every wait polls with
wait_for and is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from typing import Any

import pytest
from kit import Conn, exchange, get, wait_for

from l7switch.checks.checker import HealthChecker
from l7switch.checks.probes import agent_probe, http_probe, tcp_probe
from l7switch.checks.verdicts import HttpJudge, http_request
from l7switch.config import parse_config
from l7switch.devtools.origin import OriginRequest, OriginResponse
from l7switch.spec import HttpCheckSpec

LISTEN = "listen: [{address: 127.0.0.1:0}]\ndefault_pool: p\n"
FAST = "interval: 0.1s, timeout: 0.08s"


def pool_yaml(servers: list[str], health: str = "", extra: str = "", name: str = "p") -> str:
    lines = [f"  {name}:", "    servers:"] + [f"      - {s}" for s in servers]
    if health:
        lines.append(f"    health: {health}")
    if extra:
        lines.append(f"    {extra}")
    return "\n".join(lines) + "\n"


def config(*pools: str) -> str:
    return LISTEN + "pools:\n" + "".join(pools)


def servers_of(lt: Any, sw: Any, pool: str = "p") -> dict[str, dict[str, Any]]:
    snap = lt.call(sw.snapshot)
    return {s["name"]: s for s in snap["pools"][pool]["servers"]}


def state(lt: Any, sw: Any, name: str, pool: str = "p") -> str:
    return servers_of(lt, sw, pool)[name]["state"]


def probes(lt: Any, sw: Any, kind: str = "health") -> int:
    return sum(t["probes"] for t in lt.call(sw.snapshot)["checks"]["targets"] if t["kind"] == kind)


def lines(caplog: pytest.LogCaptureFixture, *words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if all(w in r.getMessage() for w in words)]


@pytest.fixture
def serve(lt: Any):
    """``serve(behaviour, port=0)`` -> port: an asyncio server running ``behaviour(reader, writer)``
    per connection (``.accepts`` counts them); ``serve.stop(port)`` closes it."""
    servers: dict[int, asyncio.AbstractServer] = {}
    tasks: set[asyncio.Task[Any]] = set()

    class Serve:
        accepts: dict[int, int] = {}

        def __call__(self, behaviour: Any, port: int = 0) -> int:
            holder: list[int] = []

            async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                self.accepts[holder[0]] = self.accepts.get(holder[0], 0) + 1
                task = asyncio.current_task()
                assert task is not None
                tasks.add(task)
                try:
                    await behaviour(reader, writer)
                except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                    pass
                finally:
                    tasks.discard(task)
                    writer.transport.abort()

            async def go() -> int:
                srv = await asyncio.start_server(on_conn, "127.0.0.1", port, reuse_address=True)
                p = srv.sockets[0].getsockname()[1]
                servers[p] = srv
                return p
            holder.append(lt.run(go()))
            return holder[0]

        def stop(self, port: int) -> None:
            async def go() -> None:
                srv = servers.pop(port)
                srv.close()
                await srv.wait_closed()
            lt.run(go())

    s = Serve()
    yield s

    async def end() -> None:
        for srv in servers.values():
            srv.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lt.run(end())


def answer(raw: bytes):
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
    return behaviour


def agent_says(reply: dict[str, bytes]):
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply["line"])
        await writer.drain()
    return behaviour


# ---- probes -------------------------------------------------------------------------------------

def http(lt: Any, port: int, timeout: float = 0.3, **check: Any) -> Any:
    spec = HttpCheckSpec(**check)
    return lt.run(http_probe("127.0.0.1", port, timeout, HttpJudge(spec), http_request(spec, f"127.0.0.1:{port}")))


def test_tcp_probe(lt: Any, serve: Any, free_port: int) -> None:
    port = serve(answer(b""))
    r = lt.run(tcp_probe("127.0.0.1", port, 0.5))
    assert (r.ok, r.detail) == (True, "L4OK") and 0 <= r.duration < 0.5
    r = lt.run(tcp_probe("127.0.0.1", free_port, 0.5))
    assert (r.ok, r.detail) == (False, "connection refused")


def test_http_probe_sends_the_check_request_and_judges_the_answer(lt: Any, serve: Any) -> None:
    seen: list[bytes] = []

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstatus: fine")
        await writer.drain()
    port = serve(behaviour)
    r = http(lt, port, path="/health", host="h.example", body="fine")
    assert (r.ok, r.detail) == (True, "L7OK 200")
    assert seen[0].startswith(b"GET /health HTTP/1.1\r\nHost: h.example\r\nUser-Agent: l7switch-check\r\n")
    assert b"Connection: close\r\n" in seen[0]
    assert http(lt, port, body="missing").detail == "body mismatch"
    assert http(lt, port, expect=((300, 399),)).detail == "status 200"


def test_http_probe_failures(lt: Any, serve: Any, free_port: int) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts and reads, never answers

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        while True:
            writer.write(b"y" * 65536)
            await writer.drain()

    assert http(lt, serve(answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"))).detail == "status 500"
    r = http(lt, serve(hang), timeout=0.1)
    assert (r.ok, r.detail) == (False, "timeout after 0.1s") and 0.09 < r.duration < 0.5
    assert http(lt, serve(answer(b"\x16\x03\x01 garbage\r\n\r\n"))).detail == "invalid response"
    assert http(lt, serve(answer(b""))).detail == "closed without a response"
    r = http(lt, serve(endless))
    assert r.detail == "invalid response (no head within 16 KiB)" and r.duration < 0.3
    assert http(lt, free_port).detail == "connection refused"


def test_a_10mb_body_costs_bounded_memory_and_time(lt: Any, serve: Any) -> None:
    block = b"x" * 65536

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n")
        for _ in range(160):
            writer.write(block)
            await writer.drain()
    port = serve(big)
    tracemalloc.start()
    try:
        r1 = http(lt, port)
        r2 = http(lt, port, body="needle")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (r1.ok, r1.detail) == (True, "L7OK 200") and r1.duration < 0.2
    assert (r2.ok, r2.detail) == (False, "body mismatch") and r2.duration < 0.2
    assert peak < 2 * 1024 * 1024  # both probes, the server's writes and the test's own objects


def test_agent_probe(lt: Any, serve: Any, free_port: int) -> None:
    said = {"line": b"ready 75%\n"}
    port = serve(agent_says(said))
    reply, r = lt.run(agent_probe("127.0.0.1", port, 0.3))
    assert (r.ok, r.detail) == (True, "ready 75%") and (reply.admin, reply.percent) == ("ready", 75)
    said["line"] = b"x" * 2000 + b"\n"
    reply, r = lt.run(agent_probe("127.0.0.1", port, 0.3))
    assert reply is None and r.detail == "reply over 1 KiB"
    said["line"] = b"drain"  # no newline, then closed: what was read counts
    reply, r = lt.run(agent_probe("127.0.0.1", port, 0.3))
    assert r.ok and reply.admin == "drain"
    reply, r = lt.run(agent_probe("127.0.0.1", free_port, 0.3))
    assert reply is None and r.detail == "connection refused"


# ---- the checker ----------------------------------------------------------------------------------

def test_checker_spreads_first_probes_and_delivers_by_name(lt: Any, serve: Any) -> None:
    port = serve(answer(b""))
    # Ten servers on distinct addresses (checked on the one listening port).
    servers = [f"{{address: 127.0.0.{i + 1}:80, name: s{i}, health: {{port: {port}}}}}" for i in range(10)]
    cfg = parse_config(config(pool_yaml(servers, "{interval: 0.5s, timeout: 0.2s}")), "<test>")
    got: list[tuple[float, str, str, str]] = []
    checker = HealthChecker(lambda pool, server, kind, reply, result: got.append((time.monotonic(), pool, server, kind)))
    lt.call(checker.start, cfg.pools)
    try:
        assert wait_for(lambda: len(got) >= 10, 2)
    finally:
        lt.run(checker.stop())
    first = sorted(got[:10])
    assert {g[2] for g in first} == {f"s{i}" for i in range(10)} and {g[1] for g in first} == {"p"}
    assert first[-1][0] - first[0][0] > 0.3  # spread over the 0.5 s interval, not all at once
    assert lt.call(checker.snapshot)["running"] is False


# ---- the switch -----------------------------------------------------------------------------------

def test_a_killed_server_goes_down_after_fall_and_comes_back_after_rise(
        lt: Any, serve: Any, switch_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="l7switch")
    a, b = serve(answer(b"")), serve(answer(b""))
    sw = switch_factory(config(pool_yaml([f"{{address: 127.0.0.1:{a}, name: a}}", f"{{address: 127.0.0.1:{b}, name: b}}"],
                                         f"{{{FAST}, rise: 2, fall: 3}}")))
    assert wait_for(lambda: probes(lt, sw) >= 4, 2)
    assert state(lt, sw, "a") == "up"
    serve.stop(a)
    killed = time.monotonic()
    assert wait_for(lambda: state(lt, sw, "a") == "down", 2)
    assert time.monotonic() - killed >= 0.15  # three failed checks, not the first
    down = lines(caplog, "server p/a", "up -> down")
    assert len(down) == 1 and down[0].levelno == logging.WARNING
    msg = down[0].getMessage()
    assert f"(127.0.0.1:{a})" in msg and "connection refused (3 failed checks)" in msg and "; up for " in msg
    assert servers_of(lt, sw)["a"]["check"]["last"]["detail"] == "connection refused"
    assert state(lt, sw, "b") == "up"
    serve(answer(b""), port=a)
    assert wait_for(lambda: state(lt, sw, "a") == "up", 2)
    up = lines(caplog, "server p/a", "down -> up")
    assert len(up) == 1 and "L4OK (2 passing checks)" in up[0].getMessage()
    assert len(lines(caplog, "server p/a", " -> ")) == 2


def test_http_checks_expect_ranges_body_and_500(origin_factory: Any, switch_factory: Any, lt: Any) -> None:
    o = origin_factory("o1")
    srv = f"{{address: 127.0.0.1:{o.port}, name: o1}}"
    sw = switch_factory(config(
        pool_yaml([srv], f"{{http: {{path: /status/204, expect: 200}}, {FAST}}}", name="p"),
        pool_yaml([srv], f"{{http: {{path: /status/204, expect: 200-299}}, {FAST}}}", name="ranges"),
        pool_yaml([srv], f"{{http: {{path: /ping, body: 'o1: /ping'}}, {FAST}}}", name="body"),
        pool_yaml([srv], f"{{http: {{path: /ping, body: nothere}}, {FAST}}}", name="mismatch"),
        pool_yaml([srv], f"{{http: {{path: /status/500}}, {FAST}}}", name="fails"),
    ))
    assert wait_for(lambda: state(lt, sw, "o1", "p") == "down" and state(lt, sw, "o1", "mismatch") == "down"
                    and state(lt, sw, "o1", "fails") == "down", 2)
    detail = {p: servers_of(lt, sw, p)["o1"]["check"]["last"]["detail"]
              for p in ("p", "ranges", "body", "mismatch", "fails")}
    assert detail == {"p": "status 204", "ranges": "L7OK 204", "body": "L7OK 200", "mismatch": "body mismatch",
                      "fails": "status 500"}
    assert state(lt, sw, "o1", "ranges") == "up" and state(lt, sw, "o1", "body") == "up"


def test_a_hung_check_endpoint_times_out(lt: Any, serve: Any, switch_factory: Any) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
    port = serve(hang)
    sw = switch_factory(config(pool_yaml([f"{{address: 127.0.0.1:{port}, name: h}}"],
                                         "{http: {path: /}, interval: 0.1s, timeout: 0.05s, fall: 2}")))
    assert wait_for(lambda: state(lt, sw, "h") == "down", 2)
    assert servers_of(lt, sw)["h"]["check"]["last"]["detail"] == "timeout after 0.05s"


def test_a_flapping_server_changes_nothing_with_rise_2_fall_3(
        lt: Any, origin_factory: Any, switch_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="l7switch")
    n = [0]

    def flap(req: OriginRequest) -> OriginResponse:
        n[0] += 1
        return OriginResponse(200 if n[0] % 2 else 500, [], b"")
    o = origin_factory("flap", flap)
    sw = switch_factory(config(pool_yaml([f"{{address: 127.0.0.1:{o.port}, name: f}}"],
                                         f"{{http: {{path: /}}, {FAST}, rise: 2, fall: 3}}")))
    assert wait_for(lambda: probes(lt, sw) >= 10, 3)
    assert state(lt, sw, "f") == "up"
    assert lines(caplog, "server p/f") == []


def test_init_state_down_starts_down_and_comes_up_after_rise(
        lt: Any, origin_factory: Any, switch_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="l7switch")
    o = origin_factory("o1")
    sw = switch_factory(config(pool_yaml([f"{{address: 127.0.0.1:{o.port}, name: o1}}"],
                                         "{interval: 0.2s, timeout: 0.1s, rise: 2}", extra="init_state: down")))
    assert state(lt, sw, "o1") == "down"
    assert exchange(sw.port, get("/")).status == 503
    assert wait_for(lambda: state(lt, sw, "o1") == "up", 2)
    assert servers_of(lt, sw)["o1"]["check"]["passes"] >= 2
    assert "L4OK (2 passing checks)" in lines(caplog, "server p/o1", "down -> up")[0].getMessage()
    assert exchange(sw.port, get("/")).status == 200


def test_no_requests_reach_a_down_server(lt: Any, origin_factory: Any, switch_factory: Any) -> None:
    served: dict[str, int] = {"a": 0, "b": 0}

    def handler(name: str, healthy: bool):
        def h(req: OriginRequest) -> OriginResponse:
            if req.path == "/health":
                return OriginResponse(200 if healthy else 500, [], b"")
            served[name] += 1
            return OriginResponse(200, [], name.encode())
        return h
    a, b = origin_factory("a", handler("a", True)), origin_factory("b", handler("b", False))
    sw = switch_factory(config(pool_yaml([f"{{address: 127.0.0.1:{a.port}, name: a}}",
                                          f"{{address: 127.0.0.1:{b.port}, name: b}}"],
                                         f"{{http: {{path: /health}}, {FAST}, fall: 2}}")))
    assert wait_for(lambda: state(lt, sw, "b") == "down", 2)
    with Conn(sw.port) as c:
        for _ in range(20):
            c.send(get("/x"))
            assert c.response().body == b"a"
    for _ in range(10):
        assert exchange(sw.port, get("/y")).body == b"a"
    assert served == {"a": 30, "b": 0}


def test_all_servers_down_503_at_once_without_connecting(lt: Any, serve: Any, switch_factory: Any,
                                                         free_port: int) -> None:
    port = serve(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    # Checked on another port where nothing listens: the serving port sees no check at all.
    sw = switch_factory(config(pool_yaml([f"{{address: 127.0.0.1:{port}, name: s}}"],
                                         f"{{port: {free_port}, {FAST}, fall: 2}}")))
    assert wait_for(lambda: state(lt, sw, "s") == "down", 2)
    t0 = time.monotonic()
    for _ in range(5):
        assert exchange(sw.port, get("/")).status == 503
    assert time.monotonic() - t0 < 0.5
    assert serve.accepts.get(port, 0) == 0


# ---- agents ---------------------------------------------------------------------------------------

def agent_switch(lt: Any, serve: Any, origin_factory: Any, switch_factory: Any, said: dict[str, bytes],
                 agent_port: int | None = None) -> Any:
    o = origin_factory("o1")
    port = agent_port if agent_port is not None else serve(agent_says(said))
    sw = switch_factory(config(pool_yaml([f"{{address: 127.0.0.1:{o.port}, name: s, weight: 10}}"],
                                         extra=f"agent: {{port: {port}, interval: 0.1s, timeout: 0.08s}}")))
    return sw


def test_agent_replies_set_state_and_weight(lt: Any, serve: Any, origin_factory: Any, switch_factory: Any) -> None:
    said = {"line": b"drain\n"}
    sw = agent_switch(lt, serve, origin_factory, switch_factory, said)

    def after(line: bytes, **want: Any) -> None:
        said["line"] = line
        assert wait_for(lambda: all(servers_of(lt, sw)["s"][k] == v for k, v in want.items()), 2), \
            (line, servers_of(lt, sw)["s"])

    after(b"drain\n", state="drain", effective_weight=0)
    after(b"maint\n", state="maint")
    after(b"ready\n", state="up", effective_weight=10)
    after(b"down\n", state="down")
    after(b"up\n", state="up")
    after(b"50%\n", state="up", effective_weight=5, agent_pct=50)
    after(b"ready 75%\n", state="up", effective_weight=7, agent_pct=75)
    assert servers_of(lt, sw)["s"]["agent"]["detail"] == "ready 75%"


@pytest.mark.parametrize("line, problem", [
    (b"bogus\n", "invalid reply 'bogus': unknown word 'bogus'"),
    (b"y" * 1500 + b"\n", "reply over 1 KiB"),
    (None, "connection refused"),
])
def test_agent_problems_are_ignored_and_logged_once(
        lt: Any, serve: Any, origin_factory: Any, switch_factory: Any, free_port: int,
        caplog: pytest.LogCaptureFixture, line: bytes | None, problem: str) -> None:
    caplog.set_level(logging.INFO, logger="l7switch")
    said = {"line": b"50%\n"}
    sw = agent_switch(lt, serve, origin_factory, switch_factory, said, free_port if line is None else None)
    if line is not None:
        assert wait_for(lambda: servers_of(lt, sw)["s"]["effective_weight"] == 5, 2)
        said["line"] = line
        start = probes(lt, sw, "agent")
    else:
        start = 0
    assert wait_for(lambda: probes(lt, sw, "agent") >= start + 4, 2)
    s = servers_of(lt, sw)["s"]
    assert s["agent"]["detail"] == problem and s["agent"]["ok"] is False
    assert s["state"] == "up" and s["effective_weight"] == (5 if line is not None else 10)  # ignored
    logged = lines(caplog, "agent p/s", "reply ignored")
    assert len(logged) == 1 and problem in logged[0].getMessage() and logged[0].levelno == logging.WARNING
    if line is not None:
        said["line"] = b"ready\n"
        assert wait_for(lambda: lines(caplog, "agent p/s", "answers again"), 2)
