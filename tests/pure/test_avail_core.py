"""The availability core, pure: request queues, check counting, ejections, agent replies, the
pool's server states, backups, passive checks on a fake clock, slow start, the retry budget and
dispatch with full servers (no sockets)."""

from __future__ import annotations

import collections
import logging

import pytest
from kit import avail_config

from l7switch.balance.build import build_pool
from l7switch.balance.dispatch import Wait, choose, choose_again
from l7switch.balance.health import (AgentReply, CheckResult, CheckState, Ejections,
                                     parse_agent_reply)
from l7switch.balance.pool import MIN_RAMP, ServerPool
from l7switch.balance.queue import RequestQueue
from l7switch.balance.servers import Server
from l7switch.config import parse_config
from l7switch.spec import HealthSpec, PassiveSpec

PORTS = [9001, 9002, 9003]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(scheduler: str = "rr", n: int = 3, options: str = "{}", weights: list[int] | None = None,
              clock: FakeClock | None = None, persistence: str | None = None, **kw) -> ServerPool:
    if persistence is not None:
        kw["persistence"] = persistence
    cfg = parse_config(avail_config(list(range(9001, 9001 + n)), scheduler, options, weights, **kw), "t.yaml")
    return build_pool(cfg.pools["p"], clock=clock or FakeClock())


def by_name(pool: ServerPool, name: str) -> Server:
    return next(s for s in pool.all_servers if s.name == name)


def shares(pool: ServerPool, n: int = 1000, key: str | None = None) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        s = pool.pick(key)
        assert s is not None
        out[s.name] += 1
    return out


# ---- RequestQueue -------------------------------------------------------------------------------

class W:
    """A waiter that records what happened to it."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    def dequeued(self, server: Server) -> None:
        self.log.append((self.name, server.name))

    def queue_expired(self) -> None:
        self.log.append((self.name, "expired"))

    def requeue(self) -> None:
        self.log.append((self.name, "requeue"))


def srv(name: str, maxconn: int = 0) -> Server:
    return Server(name, "127.0.0.1", 9000, 1, "p", 0, maxconn)


def test_queue_serves_pool_and_server_queues_in_arrival_order() -> None:
    a, b = srv("a"), srv("b")
    q = RequestQueue("p", 100, 5.0)
    log: list[tuple[str, str]] = []
    q.push(W("1", log), None, 0)
    q.push(W("2", log), a, 0)
    q.push(W("3", log), b, 0)
    q.push(W("4", log), None, 0)
    q.push(W("5", log), a, 0)
    assert (q.count, a.queued, b.queued) == (5, 2, 1)
    assert q.snapshot()["pool_queue"] == 2
    order = []
    while (t := q.next_for(a)) is not None:
        order.append(t.waiter.name)  # type: ignore[attr-defined]
    assert order == ["1", "2", "4", "5"]  # a takes its own and the pool's, oldest first; never b's
    assert (q.count, a.queued, b.queued) == (1, 0, 1)
    assert q.next_for(b).waiter.name == "3"  # type: ignore[union-attr]
    assert q.count == 0 and q.served == 5


def test_queue_server_not_available_takes_only_its_own() -> None:
    a = srv("a")
    q = RequestQueue("p", 100, 5.0)
    log: list[tuple[str, str]] = []
    q.push(W("pool", log), None, 0)
    q.push(W("own", log), a, 0)
    t = q.next_for(a, any_server=False)  # draining: keeps its sessions only
    assert t is not None and t.waiter.name == "own"  # type: ignore[attr-defined]
    assert q.next_for(a, any_server=False) is None
    assert q.count == 1


def test_queue_cancel_is_lazy_and_counts_exactly() -> None:
    a = srv("a")
    q = RequestQueue("p", 100, 5.0)
    log: list[tuple[str, str]] = []
    tickets = [q.push(W(str(i), log), a if i % 2 else None, 0) for i in range(10)]
    for t in tickets[:6]:
        assert t is not None
        q.cancel(t)
        q.cancel(t)  # twice: no double count
    assert q.count == 4 and a.queued == 2  # exact at once, though the deques still hold them
    assert len(q.pending) + len(q.by_server[a]) == 10  # dropped lazily (cancel is O(1))
    names = [q.next_for(a).waiter.name for _ in range(4)]  # type: ignore[union-attr]
    assert names == ["6", "7", "8", "9"]
    assert q.next_for(a) is None and q.count == 0 and a.queued == 0
    assert not log  # cancelled waiters are told nothing


def test_queue_expire_tells_the_waiter_once() -> None:
    a = srv("a")
    q = RequestQueue("p", 100, 2.5)
    log: list[tuple[str, str]] = []
    t = q.push(W("x", log), a, 10.0)
    assert t is not None and t.deadline == 12.5
    t.on_deadline(12.5)
    t.on_deadline(12.6)
    q.expire(t)
    assert log == [("x", "expired")]
    assert (q.count, a.queued, q.expired, t.deadline) == (0, 0, 1, 0.0)
    q.cancel(t)  # after expiry: nothing more
    assert q.count == 0 and q.next_for(a) is None


def test_queue_full_rejects_and_cancel_makes_room() -> None:
    q = RequestQueue("p", 2, 5.0)
    log: list[tuple[str, str]] = []
    t1 = q.push(W("1", log), None, 0)
    q.push(W("2", log), None, 0)
    assert q.is_full and q.push(W("3", log), None, 0) is None and q.rejected == 1
    assert t1 is not None
    q.cancel(t1)
    assert not q.is_full and q.push(W("4", log), None, 0) is not None
    assert q.snapshot()["queued"] == 2


# ---- active checks ----------------------------------------------------------------------------

def ok(at: float = 0.0) -> CheckResult:
    return CheckResult(True, "L7OK 200", 0.001, at)


def bad(at: float = 0.0) -> CheckResult:
    return CheckResult(False, "connection refused", 0.001, at)


def test_check_state_rise_and_fall() -> None:
    c = CheckState(HealthSpec(rise=2, fall=3))
    assert [c.record(bad(), True) for _ in range(3)] == [None, None, False]
    assert [c.record(ok(), False) for _ in range(2)] == [None, True]
    c.record(bad(), True)
    c.reset()
    assert (c.passes, c.fails, c.probes) == (0, 0, 6)


def test_check_state_flapping_changes_at_most_once_per_window() -> None:
    """Through the pool: alternating results never move the server; at most one transition
    per run of ``fall`` failures or ``rise`` passes."""
    clock = FakeClock()
    pool = make_pool(servers={"o0": {"health": {"rise": 2, "fall": 2}}}, clock=clock)
    s = by_name(pool, "o0")
    for i in range(20):
        pool.check_result(s, ok(i) if i % 2 else bad(i))
        assert s.up
    states = []
    pattern = [False, False, True, False, True, True, False, True, False, False]
    for i, passed in enumerate(pattern):
        pool.check_result(s, ok(i) if passed else bad(i))
        states.append(s.up)
    assert states == [True, False, False, False, False, True, True, True, True, False]
    assert pool.checks[s].snapshot()["probes"] == 30


# ---- passive ejections ---------------------------------------------------------------------------

def test_ejections_double_up_to_the_cap_and_are_forgiven() -> None:
    spec = PassiveSpec(ejection=30.0, max_ejection=300.0)
    ej = Ejections()
    got = []
    now = 0.0
    for _ in range(6):
        got.append(ej.eject(spec, now, timed=True))
        now = ej.until
        ej.until, ej.back_at = 0.0, now  # back
        now += 1.0  # fails again soon
    assert got == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    # Up for a whole max_ejection: forgiven, back to the base time.
    assert ej.eject(spec, now + 300.0, timed=True) == 30.0 and ej.count == 1
    # With an active check the ejection is untimed: the check brings it back.
    assert ej.eject(spec, now + 301.0, timed=False) == 0.0 and ej.until == 0.0


# ---- agent replies ----------------------------------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    ("up", AgentReply(health=True)),
    ("down", AgentReply(health=False)),
    ("fail # disk full", AgentReply(health=False, reason="disk full")),
    ("stopped", AgentReply(health=False)),
    ("ready 75%", AgentReply(admin="ready", percent=75)),
    ("up,drain", AgentReply(health=True, admin="drain")),
    ("  MAINT  ", AgentReply(admin="maint")),
    ("50% maxconn:30 up\n", AgentReply(health=True, percent=50, maxconn=30)),
    ("0%", AgentReply(percent=0)),
    ("25600%", AgentReply(percent=25600)),
    ("up 10% 20%", AgentReply(health=True, percent=20)),  # the last word of a kind wins
    ("down up", AgentReply(health=True)),
])
def test_agent_reply_grammar(line: str, reply: AgentReply) -> None:
    assert parse_agent_reply(line) == reply


@pytest.mark.parametrize("line, why", [
    ("", "empty"), ("   # only a reason", "empty"), ("upp", "unknown word"),
    ("50", "unknown word"), ("-5%", "unknown word"), ("123456%", "unknown word"),
    ("25601%", "out of range"), ("99999%", "out of range"), ("maxconn:", "unknown word"), ("maxconn:x", "unknown word"),
    ("up; drain", "unknown word"),
])
def test_agent_reply_bad_words(line: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_agent_reply(line)


def test_agent_result_applies_health_admin_weight_and_maxconn(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool("wrr", weights=[4, 4, 4])
    s = by_name(pool, "o1")
    res = CheckResult(True, "ready 50% maxconn:7", 0.001, 5.0)
    pool.agent_result(s, parse_agent_reply(res.detail), res)
    assert (s.weight, s.maxconn, s.state) == (2, 7, "up")
    down = CheckResult(True, "down # overloaded", 0.001, 6.0)
    with caplog.at_level(logging.INFO, logger="l7switch"):
        pool.agent_result(s, parse_agent_reply(down.detail), down)
    assert s.state == "down" and "overloaded" in caplog.text
    pool.agent_result(s, None, CheckResult(False, "timeout", 1.0, 7.0))  # unreadable: ignored
    assert s.state == "down" and pool.agents[s].detail == "timeout"
    pool.agent_result(s, parse_agent_reply("up 1%"), CheckResult(True, "up 1%", 0.001, 8.0))
    assert s.state == "up" and s.weight == 1  # never rounded down to 0 (that is drain)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="l7switch"):
        pool.agent_result(s, parse_agent_reply("maint"), CheckResult(True, "maint", 0.001, 9.0))
        pool.agent_result(s, parse_agent_reply("ready"), CheckResult(True, "ready", 0.001, 9.5))
    assert "up -> maint: agent said 'maint'" in caplog.text
    assert "maint -> up: agent said 'ready'" in caplog.text


# ---- server state ---------------------------------------------------------------------------------

def test_state_derivation_maint_down_drain_up(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool("rr")
    s = by_name(pool, "o0")
    with caplog.at_level(logging.INFO, logger="l7switch"):
        assert s.state == "up" and s.available
        pool.set_admin(s, "drain")
        assert (s.state, s.up, s.available, s.weight) == ("drain", True, False, 0)
        pool.mark_down(s)
        assert (s.state, s.up) == ("down", False)
        pool.set_admin(s, "maint")
        assert s.state == "maint"  # maint names the combination even when also down
        pool.mark_up(s)
        assert s.state == "maint" and not s.up
        pool.set_admin(s, "ready")
        assert (s.state, s.up, s.available, s.weight) == ("up", True, True, 1)
        pool.set_weight(s, 0)
        assert s.state == "drain"
        pool.set_weight(s, 3)
        assert s.state == "up" and s.weight == 3
    lines = [r.getMessage() for r in caplog.records if "p/o0" in r.getMessage()]
    assert [ln.split(": ")[0].split(") ")[1] for ln in lines] == [
        "up -> drain", "drain -> down", "down -> maint", "maint -> up", "up -> drain", "drain -> up"]
    # mark_up while in maint changed nothing visible: no line for it
    assert snapshot_server(pool, "o0")["state"] == "up"


def snapshot_server(pool: ServerPool, name: str) -> dict:
    return next(s for s in pool.snapshot()["servers"] if s["name"] == name)


def test_rr_and_wrr_skip_down_servers_and_take_them_back() -> None:
    for sched, weights in (("rr", [1, 1, 1]), ("wrr", [3, 2, 1])):
        pool = make_pool(sched, weights=weights)
        before = shares(pool, 600)
        pool.mark_down(by_name(pool, "o1"))
        during = shares(pool, 600)
        assert "o1" not in during and sum(during.values()) == 600
        pool.mark_up(by_name(pool, "o1"))
        assert shares(pool, 600) == before


@pytest.mark.parametrize("scheduler", ["maglev", "chash"])
def test_hashing_keys_move_only_off_the_down_server_and_back(scheduler: str) -> None:
    pool = make_pool(scheduler, n=4)
    keys = [f"/k{i}" for i in range(2000)]

    def table() -> dict[str, str]:
        out = {}
        for k in keys:
            s = pool.pick(k)
            assert s is not None
            out[k] = s.name
        return out

    before = table()
    down = by_name(pool, "o2")
    pool.mark_down(down)
    during = table()
    moved = [k for k in keys if before[k] != during[k]]
    assert "o2" not in during.values()
    assert all(during[k] != "o2" for k in keys if before[k] == "o2")
    others = [k for k in moved if before[k] != "o2"]
    if scheduler == "chash":
        assert not others  # the ring keeps the down server's points: only its keys move
    else:
        # Maglev rebuilds its table without the server: "only a little more than its own 1/N
        # of the slots changes owner" (Eisenbud et al. §3.4).
        assert len(others) < 0.05 * len(keys)
    pool.mark_up(down)
    assert table() == before


# ---- backups ----------------------------------------------------------------------------------

def test_backups_serve_only_while_no_primary_is_available() -> None:
    pool = make_pool("rr", n=4, backup=["o2", "o3"])
    assert [s.name for s in pool.servers] == ["o0", "o1"]
    assert [s.name for s in pool.backups] == ["o2", "o3"]
    assert set(shares(pool, 100)) == {"o0", "o1"}
    pool.mark_down(by_name(pool, "o0"))
    assert set(shares(pool, 100)) == {"o1"}
    pool.set_admin(by_name(pool, "o1"), "drain")
    got = shares(pool, 100)
    assert set(got) <= {"o2", "o3"} and got  # least loaded backup (all idle: the first)
    assert pool.with_room() is not None and pool.with_room().backup  # type: ignore[union-attr]
    pool.set_admin(by_name(pool, "o1"), "ready")
    assert set(shares(pool, 100)) == {"o1"}
    pool.mark_down(by_name(pool, "o1"))
    b = by_name(pool, "o2")
    pool.begin(b)
    assert pool.pick() is by_name(pool, "o3")  # backups by load
    pool.end(b)
    pool.mark_down(by_name(pool, "o2"))
    pool.mark_down(by_name(pool, "o3"))
    assert pool.pick() is None
    pool.mark_up(by_name(pool, "o0"))
    assert set(shares(pool, 10)) == {"o0"}


# ---- passive checks on the pool ----------------------------------------------------------------

def test_passive_failures_eject_at_error_limit_and_tick_brings_it_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    pool = make_pool("rr", clock=clock, passive={"error_limit": 3, "ejection": "10s", "max_ejection": "60s"})
    s = by_name(pool, "o0")
    with caplog.at_level(logging.INFO, logger="l7switch"):
        pool.failed(s, "connection refused")
        pool.failed(s, "connection refused")
        pool.answered(s, 200)  # a success resets the count
        pool.failed(s, "connection refused")
        pool.failed(s, "connection refused")
        assert s.up and s.errors == 2
        pool.failed(s, "connection refused")
    assert not s.up and s.state == "down"
    assert "o0" not in shares(pool, 30)
    downs = [r for r in caplog.records if "up -> down" in r.getMessage()]
    assert len(downs) == 1 and downs[0].levelno == logging.WARNING
    assert "3 consecutive errors" in downs[0].getMessage() and "ejected for 10s" in downs[0].getMessage()
    clock.now += 9.9
    pool.tick(clock.now)
    assert not s.up
    clock.now += 0.2
    pool.tick(clock.now)
    assert s.up and snapshot_server(pool, "o0")["ejections"] == 1
    # Again soon after: twice as long.
    for _ in range(3):
        pool.failed(s, "reset")
    assert not s.up
    pool.tick(clock.now + 19.9)
    assert not s.up
    pool.tick(clock.now + 20.1)
    assert s.up


def test_failures_while_ejected_do_not_count_after_it_returns() -> None:
    """Requests that were in flight when the server was ejected fail too; those failures must
    not make the first failure after its return eject it again at once."""
    clock = FakeClock()
    pool = make_pool("rr", clock=clock, passive={"error_limit": 3, "ejection": "10s"})
    s = by_name(pool, "o0")
    for _ in range(3):
        pool.failed(s, "reset")
    assert not s.up
    for _ in range(4):  # the in-flight ones
        pool.failed(s, "reset")
    clock.now += 11
    pool.tick(clock.now)
    assert s.up
    pool.failed(s, "reset")
    assert s.up and s.errors == 1


def test_passive_with_an_active_check_waits_for_rise() -> None:
    clock = FakeClock()
    pool = make_pool("rr", clock=clock, passive={"error_limit": 2},
                     servers={"o0": {"health": {"rise": 2, "fall": 3}}})
    s = by_name(pool, "o0")
    pool.failed(s, "reset")
    pool.failed(s, "reset")
    assert not s.up
    pool.tick(clock.now + 1000)  # no timed ejection: time alone does not bring it back
    assert not s.up
    pool.check_result(s, ok(clock.now))
    assert not s.up
    pool.check_result(s, ok(clock.now))
    assert s.up


def test_layer7_counts_5xx_except_501_and_505() -> None:
    pool = make_pool("rr", passive={"observe": "layer7", "error_limit": 3})
    s = by_name(pool, "o0")
    for status in (501, 505, 501, 505, 404, 200):
        pool.answered(s, status)
    assert s.errors == 0 and s.up
    pool.answered(s, 500)
    pool.answered(s, 502)
    pool.answered(s, 501)  # HAProxy: 501 and 505 are valid answers, so the run starts again
    pool.answered(s, 503)
    pool.answered(s, 504)
    assert s.up and s.errors == 2
    pool.answered(s, 599)
    assert not s.up


def test_layer4_ignores_5xx_and_off_never_ejects() -> None:
    pool = make_pool("rr", passive={"observe": "layer4", "error_limit": 2})
    s = by_name(pool, "o0")
    for _ in range(5):
        pool.answered(s, 500)
    assert s.up
    off = make_pool("rr", passive={"observe": "off", "error_limit": 2})
    t = by_name(off, "o0")
    for _ in range(10):
        off.failed(t, "connection refused")
    assert t.up and t.errors == 0


# ---- slow start -------------------------------------------------------------------------------

def ramp_to(pool: ServerPool, clock: FakeClock, server: Server, ramp: float) -> None:
    """Bring ``server`` down and back, then move the clock to ``ramp`` of slow start."""
    pool.mark_down(server)
    pool.mark_up(server)
    assert server.ramp == MIN_RAMP
    clock.now += ramp * pool.spec.slow_start
    pool.tick(clock.now)
    assert server.ramp == pytest.approx(ramp)


@pytest.mark.parametrize("scheduler, weights, expect", [
    ("rr", [1, 1], 0.25 / 1.25),
    ("rr", [1, 1, 1], 0.25 / 2.25),
    ("wrr", [2, 1, 1], 0.5 / 2.5),
])
def test_slow_start_gates_rr_and_wrr_turns(scheduler: str, weights: list[int], expect: float) -> None:
    clock = FakeClock()
    n = len(weights)
    pool = make_pool(scheduler, n=n, weights=weights, clock=clock, slow_start="40s")
    s = by_name(pool, "o0")
    ramp_to(pool, clock, s, 0.25)
    got = shares(pool, 2000)
    assert got["o0"] / 2000 == pytest.approx(expect, abs=0.02)
    clock.now += 40
    pool.tick(clock.now)
    assert s.ramp == 1.0 and not pool._ramping
    got = shares(pool, 2000)
    assert got["o0"] / 2000 == pytest.approx(weights[0] / sum(weights), abs=0.01)


def test_slow_start_scales_wlc_by_load() -> None:
    clock = FakeClock()
    pool = make_pool("wlc", n=2, clock=clock, slow_start="40s")
    a, b = by_name(pool, "o0"), by_name(pool, "o1")
    ramp_to(pool, clock, a, 0.25)
    for _ in range(100):  # requests that stay in flight: the loads settle at the weights' ratio
        s = pool.pick()
        assert s is not None
        pool.begin(s)
    assert a.inflight == pytest.approx(100 * 0.25 / 1.25, abs=2)
    assert b.inflight + a.inflight == 100


def test_slow_start_only_on_return() -> None:
    clock = FakeClock()
    pool = make_pool("rr", clock=clock, slow_start="10s")
    assert all(s.ramp == 1.0 for s in pool.servers)  # not at start
    s = by_name(pool, "o1")
    pool.set_admin(s, "drain")
    pool.set_admin(s, "ready")  # from drain: available again, so it ramps
    assert s.ramp == MIN_RAMP
    clock.now += 2.0
    pool.tick(clock.now)
    assert s.ramp == pytest.approx(0.2)
    pool.mark_down(s)
    pool.tick(clock.now + 1)
    assert s.ramp == 1.0 and s not in pool._ramping


# ---- retry budget --------------------------------------------------------------------------------

def test_retry_budget_has_a_floor_of_three_then_a_share_of_inflight() -> None:
    pool = make_pool("rr", retry_budget="20%")
    assert pool.retry_allowed()
    pool.retrying = 3
    assert not pool.retry_allowed()  # 3 in flight at most on a quiet pool
    for s in pool.servers:
        for _ in range(10):
            pool.begin(s)  # 30 in flight: 20% = 6
    assert pool.retry_allowed()
    pool.retrying = 6
    assert not pool.retry_allowed()
    backup_pool = make_pool("rr", backup=["o2"], retry_budget="50%")
    for _ in range(10):
        backup_pool.begin(by_name(backup_pool, "o2"))  # backups' requests count too
    backup_pool.retrying = 4
    assert backup_pool.retry_allowed()


# ---- dispatch with full servers -------------------------------------------------------------------

def fill(pool: ServerPool, server: Server) -> None:
    while not server.full:
        pool.begin(server)


def test_choose_unbound_goes_to_a_server_with_room_else_waits_for_any() -> None:
    pool = make_pool("rr", maxconn=1)
    a, b, c = pool.servers
    fill(pool, a)
    for _ in range(6):
        got = choose(pool, None, None, None, None)
        assert got in (b, c)
    fill(pool, b)
    fill(pool, c)
    w = choose(pool, None, None, None, None)
    assert isinstance(w, Wait) and w.server is None
    s = choose(pool, None, None, None, None, queue=False)
    assert isinstance(s, Server)  # passthrough: no queue, the pick stands


def test_choose_hashed_waits_for_its_server() -> None:
    pool = make_pool("maglev", maxconn=1)
    s = pool.pick("/x")
    assert s is not None
    fill(pool, s)
    w = choose(pool, "/x", None, None, None)
    assert isinstance(w, Wait) and w.server is s
    # Full queue: the locality is given up for a server with room (redispatch allowed).
    pool.queue.max = 0
    other = choose(pool, "/x", None, None, None)
    assert isinstance(other, Server) and other is not s


def test_choose_sticky_waits_for_its_server_and_redispatch_decides_when_queue_full() -> None:
    pool = make_pool("rr", maxconn=1, persistence="{cookie: {}}")
    persist = pool.persistence
    assert persist is not None
    a = pool.servers[0]
    fill(pool, a)
    w = choose(pool, None, persist, a, None)
    assert isinstance(w, Wait) and w.server is a
    pool.queue.max = 0
    other = choose(pool, None, persist, a, None)
    assert isinstance(other, Server) and other is not a and not other.full
    strict = make_pool("rr", maxconn=1, persistence="{cookie: {redispatch: false}}")
    sa = strict.servers[0]
    fill(strict, sa)
    strict.queue.max = 0
    w = choose(strict, None, strict.persistence, sa, None)
    assert isinstance(w, Wait) and w.server is sa  # the push will fail: 503, never elsewhere


def test_choose_nothing_available() -> None:
    pool = make_pool("rr")
    for s in pool.servers:
        pool.mark_down(s)
    assert choose(pool, None, None, None, None) == "no server available in pool 'p'"


def test_choose_again_excludes_the_failed_server_and_counts_attempts() -> None:
    pool = make_pool("maglev", n=2, retries=1)
    s = pool.pick("/k")
    assert s is not None
    other = choose_again(pool, "/k", None, None, None, s, 1)
    assert isinstance(other, Server) and other is not s
    assert "2 attempts made (retries: 1)" in str(choose_again(pool, "/k", None, None, None, other, 2))
    pool.mark_down(other)
    assert "no other server" in str(choose_again(pool, "/k", None, None, None, s, 1))


def test_serving_the_queue_when_a_request_ends() -> None:
    pool = make_pool("rr", n=2, maxconn=1)
    a, b = pool.servers
    fill(pool, a)
    fill(pool, b)
    log: list[tuple[str, str]] = []

    class Begins(W):
        def dequeued(self, server: Server) -> None:
            super().dequeued(server)
            pool.begin(server)

    pool.queue.push(Begins("any", log), None, 0)
    pool.queue.push(Begins("for-b", log), b, 0)
    pool.end(b)
    assert log == [("any", "o1")]  # oldest first, though b has its own
    pool.end(b)
    assert log[-1] == ("for-b", "o1") and pool.queue.count == 0
    assert b.inflight == 1 and a.inflight == 1


def test_queue_served_when_maxconn_is_raised_or_a_server_returns() -> None:
    pool = make_pool("rr", n=1, maxconn=1)
    (a,) = pool.servers
    fill(pool, a)
    log: list[tuple[str, str]] = []

    class Begins(W):
        def dequeued(self, server: Server) -> None:
            super().dequeued(server)
            pool.begin(server)

    pool.queue.push(Begins("1", log), None, 0)
    pool.agent_result(a, parse_agent_reply("maxconn:2"), CheckResult(True, "maxconn:2", 0, 0))
    assert log == [("1", "o0")]


def test_requests_waiting_for_a_server_that_goes_down_choose_again() -> None:
    """HAProxy's pendconn_redistribute: a down server's own queue is handed back to its waiters;
    the pool's queue is left as it is."""
    pool = make_pool("rr", 2, maxconn=1)
    a, b = by_name(pool, "o0"), by_name(pool, "o1")
    log: list[tuple[str, str]] = []
    pool.queue.push(W("for-a", log), a, 0)
    pool.queue.push(W("any", log), None, 0)
    pool.begin(a), pool.begin(b)  # both full
    pool.mark_down(a)
    assert log == [("for-a", "requeue")]
    assert pool.queue.count == 1 and a.queued == 0


def test_backup_takes_from_the_pool_queue_only_while_no_primary_is_available() -> None:
    pool = make_pool("rr", 2, maxconn=1, backup=["o1"])
    primary, backup = by_name(pool, "o0"), pool.backups[0]
    log: list[tuple[str, str]] = []
    pool.begin(primary)
    pool.begin(backup)  # (a request that went to the backup while the primary was down)
    pool.queue.push(W("w", log), None, 0)
    pool.end(backup)
    assert log == [] and pool.queue.count == 1  # the primary is up: the request waits for it
    pool.end(primary)
    assert log == [("w", "o0")]
