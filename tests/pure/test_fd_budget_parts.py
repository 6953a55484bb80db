"""The pieces of the fd budget that do no network I/O: the pipe pool and the rate-limited log."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import termios
import array

import pytest

import l7switch.net.pipes as pipes
import l7switch.net.ratelog as ratelog
from l7switch.net.pipes import PipePool


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def unread(fd: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def test_pool_reuses_an_empty_pipe_and_stays_within_its_limit():
    pool = PipePool(limit=2)
    before = open_fds()
    a = pool.take()
    assert a is not None and a.size >= 4096
    pool.give(a, 0)
    assert pool.take() is a  # reused, not made again
    b = pool.take()
    assert b is not None and b is not a
    assert pool.take() is None  # at the limit: the caller copies instead
    assert pool.misses == 1 and pool.made == 2
    pool.give(a, 0)
    pool.give(b, 0)
    assert open_fds() == before + 4  # two idle pipes, kept for the next jobs
    pool.clear()
    assert open_fds() == before


def test_a_pipe_given_back_with_bytes_in_it_is_closed_not_pooled():
    pool = PipePool(limit=4)
    before = open_fds()
    p = pool.take()
    assert p is not None
    os.write(p.w, b"leftover")
    pool.give(p, 8)
    assert pool.idle == [] and pool.busy == 0
    assert open_fds() == before
    # and every pooled pipe is empty
    q = pool.take()
    assert q is not None and unread(q.r) == 0
    pool.give(q, 0)
    assert all(unread(x.r) == 0 for x in pool.idle)
    pool.clear()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
def test_pipe2_out_of_fds_is_a_miss_logged_once(monkeypatch, caplog, code):
    def no_fds(*args):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(pipes.os, "pipe2", no_fds)
    monkeypatch.setattr(ratelog, "fd_log", ratelog.RateLimited(logging.getLogger("l7switch")))
    monkeypatch.setattr(pipes, "fd_log", ratelog.fd_log)
    pool = PipePool()
    with caplog.at_level(logging.WARNING, logger="l7switch"):
        for _ in range(50):
            assert pool.take() is None
    assert pool.misses == 50 and pool.busy == 0
    lines = [r for r in caplog.records if "splice pipes" in r.getMessage()]
    assert len(lines) == 1


def test_rate_limited_log_says_how_many_it_held_back(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(ratelog.time, "monotonic", lambda: now[0])
    rl = ratelog.RateLimited(logging.getLogger("l7switch.test"), interval=1.0)
    with caplog.at_level(logging.WARNING, logger="l7switch.test"):
        assert rl.warning("out of fds: %s", "a")
        for _ in range(9):
            now[0] += 0.05
            assert not rl.warning("out of fds: %s", "b")
        now[0] += 0.6
        assert rl.warning("out of fds: %s", "c")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["out of fds: a", "out of fds: c (9 more like it suppressed)"]


def test_fd_exhausted_knows_its_errnos():
    assert ratelog.fd_exhausted(OSError(errno.EMFILE, "x"))
    assert ratelog.fd_exhausted(OSError(errno.ENFILE, "x"))
    assert not ratelog.fd_exhausted(OSError(errno.ECONNREFUSED, "x"))
    assert not ratelog.fd_exhausted(ValueError())
