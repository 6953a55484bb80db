"""The sans-IO side of checks: the HTTP check's request and judge, the agent's line, the spread of
first probes, and which servers become targets."""

from __future__ import annotations

import types

import pytest

from l7switch.checks.checker import AGENT, HEALTH, first_offset, needs_checker, slot, targets_of
from l7switch.checks.verdicts import CHECK_BUFFER, AgentLine, HttpJudge, http_request, judge_agent_line
from l7switch.spec import AgentSpec, HealthSpec, HttpCheckSpec, PoolSpec, ServerSpec

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def judge(data: bytes | list[bytes], eof: bool = True, **check: object) -> tuple[bool, str] | None:
    j = HttpJudge(HttpCheckSpec(**check))  # type: ignore[arg-type]
    for part in data if isinstance(data, list) else [data]:
        v = j.feed(part)
        if v is not None:
            return v
    return j.eof() if eof else None


def test_request_names_method_path_host_and_closes() -> None:
    req = http_request(HttpCheckSpec(path="/health", method="HEAD"), "10.0.0.1:80")
    assert req == (b"HEAD /health HTTP/1.1\r\nHost: 10.0.0.1:80\r\nUser-Agent: l7switch-check\r\n"
                   b"Connection: close\r\n\r\n")
    assert b"Host: h.example\r\n" in http_request(HttpCheckSpec(host="h.example"), "10.0.0.1:80")


def test_status_ranges() -> None:
    assert judge(OK) == (True, "L7OK 200")
    assert judge(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n") == (True, "L7OK 302")
    assert judge(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n") == (False, "status 500")
    assert judge(b"HTTP/1.1 404 No\r\n\r\n", expect=((200, 200), (404, 404))) == (True, "L7OK 404")
    assert judge(OK, expect=((204, 204),)) == (False, "status 200")


def test_decides_on_the_head_without_waiting_for_the_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"
    assert judge(head, eof=False) == (True, "L7OK 200")


def test_body_substring_split_across_reads_and_chunks() -> None:
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsta\r\n", b"5\r\ntus o\r\n",
             b"1\r\nk\r\n0\r\n\r\n"]
    assert judge(parts, eof=False, body="status ok") == (True, "L7OK 200")
    assert judge(OK, body="fine") == (False, "body mismatch")
    # Waits for more body while it may still come:
    assert judge(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsta", eof=False, body="status") is None


def test_a_huge_body_is_judged_within_the_buffer() -> None:
    j = HttpJudge(HttpCheckSpec(body="needle"))
    assert j.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n") is None
    verdict = None
    fed = 0
    while verdict is None:
        verdict = j.feed(b"x" * 65536)
        fed += 65536
    assert verdict == (False, "body mismatch") and fed <= 2 * CHECK_BUFFER + 65536
    assert j.seen <= CHECK_BUFFER


def test_garbage_and_early_close() -> None:
    assert judge(b"garbage garbage\r\n\r\n") == (False, "invalid response")
    assert judge(b"") == (False, "closed without a response")
    assert judge(b"HTTP/1.1 200 O") == (False, "invalid response")
    j = HttpJudge(HttpCheckSpec())
    v = None
    while v is None:
        v = j.feed(b"HTTP/1.1 200 OK\r\nX: " if j.seen == 0 else b"y" * 4096)
    assert v == (False, "invalid response (no head within 16 KiB)")


def test_interim_responses_are_skipped() -> None:
    assert judge(b"HTTP/1.1 100 Continue\r\n\r\n" + OK) == (True, "L7OK 200")


def test_agent_line() -> None:
    reply, verdict = judge_agent_line(b"ready 75%\r")
    assert verdict == (True, "ready 75%") and reply is not None
    assert (reply.admin, reply.percent) == ("ready", 75)
    reply, verdict = judge_agent_line(b"bogus")
    assert reply is None and verdict == (False, "invalid reply 'bogus': unknown word 'bogus'")


def test_agent_line_bounds_and_eof() -> None:
    line = AgentLine()
    assert line.feed(b"dra") is None
    reply, verdict = line.feed(b"in\nignored")  # type: ignore[misc]
    assert verdict == (True, "drain") and reply is not None and reply.admin == "drain"
    line = AgentLine()
    assert line.feed(b"up") is None
    assert line.eof()[1] == (True, "up")  # closed without a newline: what was read counts
    assert AgentLine().eof() == (None, (False, "closed without a reply"))
    line = AgentLine()
    assert line.feed(b"u" * 1000) is None
    assert line.feed(b"u" * 1000) == (None, (False, "reply over 1 KiB"))
    assert len(line.buf) == 0


def test_first_probes_spread_over_the_interval() -> None:
    offsets = [first_offset(i, 200, 1.0, 0.5) for i in range(200)]
    assert offsets[0] > 0 and offsets[-1] < 1.0
    assert all(b - a > 0.004 for a, b in zip(offsets, offsets[1:]))


def test_start_times_round_up_to_the_timer_slack_grid() -> None:
    assert slot(10.001, 1.0) == pytest.approx(10.05)  # 1 s: 50 ms slots
    assert slot(3.0001, 0.1) == pytest.approx(3.005)  # 0.1 s: 5 ms slots
    assert slot(7.0001, 30.0) == pytest.approx(7.05)  # never more than 50 ms late
    firsts = {slot(100 + first_offset(i, 200, 1.0, 0.5), 1.0) for i in range(200)}
    assert len(firsts) == 20  # 200 servers in 20 small groups a second


def test_targets_health_and_agent_backups_included() -> None:
    h = HealthSpec(http=HttpCheckSpec(path="/h"), port=81)
    servers = (ServerSpec("a", "10.0.0.1", 80, health=h, agent=AgentSpec(9999)), ServerSpec("b", "10.0.0.2", 80))
    pool = PoolSpec("p", "rr", servers, types.MappingProxyType({}),
                    backup=(ServerSpec("c", "10.0.0.3", 80, health=HealthSpec()),))
    ts = targets_of({"p": pool})
    assert [(t.server, t.kind, t.port) for t in ts] == [("a", HEALTH, 81), ("a", AGENT, 9999), ("c", HEALTH, 80)]
    assert b"GET /h HTTP/1.1\r\nHost: 10.0.0.1:80\r\n" in ts[0].request
    assert needs_checker({"p": pool})
    assert not needs_checker({"p": PoolSpec("p", "rr", servers[1:], types.MappingProxyType({}))})
