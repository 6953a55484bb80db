"""BodyPace (proxy/pace.py) with a fake time: silence, rate over a sliding window after a grace."""

from __future__ import annotations

from l7switch.proxy.pace import GRACE, WINDOW, BodyPace


def run(rate: float, seconds: float, min_rate: int = 500, idle: float = 60.0, step: float = 1.0):
    """Bytes arriving at ``rate`` B/s, looked at every ``step``: (time of the verdict, verdict)."""
    p = BodyPace(0.0, 0)
    t = 0.0
    while t < seconds:
        t += step
        why = p.look(t, int(rate * t), idle, min_rate)
        if why:
            return t, why
    return None, None


def test_slow_body_cut_once_grace_passed():
    t, why = run(100, 60)
    assert t == GRACE and "too slow" in why


def test_one_byte_per_second_does_not_live_forever():
    t, why = run(1, 600)
    assert t is not None and t <= GRACE + 1


def test_fast_body_never_cut():
    assert run(5000, 300) == (None, None)
    assert run(501, 300) == (None, None)


def test_zero_rate_is_off_but_silence_still_counts():
    assert run(1, 300, min_rate=0) == (None, None)
    p = BodyPace(0.0, 0)
    assert p.look(1.0, 10, 2.0, 0) is None
    assert p.look(2.0, 10, 2.0, 0) is None
    assert "stalled" in (p.look(3.0, 10, 2.0, 0) or "")


def test_window_is_sliding_early_speed_is_not_banked():
    """Fast for 30 s, then a trickle: cut about a window after the trickle starts."""
    p = BodyPace(0.0, 0)
    total, t, cut = 0, 0.0, None
    while t < 100:
        t += 1
        total += 100_000 if t <= 30 else 10
        if p.look(t, total, 60, 500):
            cut = t
            break
    assert cut is not None and 30 < cut <= 30 + WINDOW + 1


def test_excuse_restarts_the_window():
    """While we do not read the client (its server is full), it is not judged."""
    p = BodyPace(0.0, 0)
    for t in range(1, 40):
        p.excuse(float(t), 0)
    assert p.look(40.0, 0, 60, 500) is None  # right after an excuse: neither silent nor judged
    assert p.look(39.0 + min(GRACE, WINDOW) - 0.5, 0, 60, 500) is None
    assert "too slow" in (p.look(39.0 + min(GRACE, WINDOW) + 0.5, 0, 60, 500) or "")


def test_step():
    assert BodyPace.step(60) == 1.0
    assert BodyPace.step(0.4) == 0.1
