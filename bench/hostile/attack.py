#!/usr/bin/env python3
"""One attacker process of bench/hostile (stdlib only, non-blocking sockets and epoll).

    python bench/hostile/attack.py --kind idle|upload|head --target 127.0.0.1:PORT
        --addrs 127.10.0.1,127.10.0.2,... --conns N --duration S --stats FILE
        [--reconnect] [--reconnect-delay 1] [--interval 3] [--start-at UNIX_TIME]

Opens ``--conns`` connections to the target, each bound to one of ``--addrs`` (round robin), and
keeps them as the kind says:

* idle    never sends a byte;
* upload  sends a POST head with Content-Length 1 MiB to /upload, then one body byte per
          ``--interval`` seconds (1 s: 1 byte/s);
* head    sends ``GET /100b HTTP/1.1`` and Host at once, then one more header line every
          ``--interval`` seconds, never the blank line that ends the head.

A connection the proxy closes (or answers: a 408, a 429) is counted; with ``--reconnect`` its slot
opens a new one ``--reconnect-delay`` seconds later at the soonest (as slowloris does). Every
0.5 s and at the end the counts go to ``--stats`` as JSON. The process ends by itself after
``--duration`` seconds (every socket closed with a reset, so no TIME_WAIT is left), whatever
happens; the parent kills it 20 s later at the latest.
"""
from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import random
import resource
import select
import socket
import struct
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
UPLOAD_HEAD = (b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Length: 1048576\r\n\r\n")
HEAD_START = b"GET /100b HTTP/1.1\r\nHost: bench\r\n"
LINGER0 = struct.pack("ii", 1, 0)

# slot states
FREE, CONNECTING, OPEN = 0, 1, 2
SEND, REOPEN = 0, 1  # timer kinds


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="attack.py")
    ap.add_argument("--kind", choices=("idle", "upload", "head"), required=True)
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--addrs", required=True, help="comma list of source addresses (round robin)")
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--reconnect", action="store_true")
    ap.add_argument("--reconnect-delay", type=float, default=1.0)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between bytes / header lines")
    ap.add_argument("--open-rate", type=float, default=20000.0, help="new connections per second at most")
    ap.add_argument("--start-at", type=float, default=0.0, help="wait until this time.time() first")
    a = ap.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.target.rsplit(":", 1)
    target = (host, int(port))
    addrs = [x for x in a.addrs.split(",") if x]
    n = a.conns
    if a.start_at:
        time.sleep(max(0.0, a.start_at - time.time()))
    t0 = time.time()
    end = t0 + a.duration

    st: dict[str, object] = {
        "kind": a.kind, "conns": n, "started": t0, "open": 0, "connecting": 0, "peak_open": 0,
        "opened": 0, "connect_failed": 0, "connect_errors": {}, "closed_by_peer": 0, "answers": {},
        "reset_by_peer": 0, "bytes_sent": 0, "first_close": None, "lifetimes": [], "ended": None,
        "all_open_at": None,
    }
    errs: dict[str, int] = st["connect_errors"]  # type: ignore[assignment]
    answers: dict[str, int] = st["answers"]  # type: ignore[assignment]
    lifetimes: list[float] = st["lifetimes"]  # type: ignore[assignment]

    ep = select.epoll()
    state = [FREE] * n
    socks: list[socket.socket | None] = [None] * n
    since = [0.0] * n  # when the slot's connection opened (or when it may reopen)
    fd_slot: dict[int, int] = {}
    # Each slot sends in its own phase of the interval, so sends are spread evenly.
    phase = [random.random() * a.interval for _ in range(n)]
    gen = [0] * n  # bumped when a slot's socket goes: its old timers are then ignored
    timers: list[tuple[float, int, int, int]] = []  # (when, slot, gen, SEND or REOPEN)
    counts = {"open": 0, "connecting": 0}

    def retry_later(i: int, now: float) -> None:
        since[i] = now + a.reconnect_delay if a.reconnect else float("inf")
        if a.reconnect:
            heapq.heappush(timers, (since[i], i, gen[i], REOPEN))

    def release(i: int, rst: bool) -> None:
        s = socks[i]
        if s is None:
            return
        fd = s.fileno()
        try:
            ep.unregister(fd)
        except OSError:
            pass
        fd_slot.pop(fd, None)
        if rst:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            except OSError:
                pass
        s.close()
        socks[i] = None
        gen[i] += 1
        if state[i] == OPEN:
            counts["open"] -= 1
        elif state[i] == CONNECTING:
            counts["connecting"] -= 1
        state[i] = FREE

    def open_slot(i: int, now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((addrs[i % len(addrs)], 0))
            rc = s.connect_ex(target)
        except OSError as e:
            s.close()
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            errs[name] = errs.get(name, 0) + 1
            st["connect_failed"] = int(st["connect_failed"]) + 1  # type: ignore[call-overload]
            retry_later(i, now)
            return
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            name = errno.errorcode.get(rc, str(rc))
            errs[name] = errs.get(name, 0) + 1
            st["connect_failed"] = int(st["connect_failed"]) + 1  # type: ignore[call-overload]
            retry_later(i, now)
            return
        socks[i] = s
        fd_slot[s.fileno()] = i
        state[i] = CONNECTING
        counts["connecting"] += 1
        since[i] = now
        ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLIN | select.EPOLLRDHUP)

    def established(i: int, now: float) -> None:
        s = socks[i]
        assert s is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            name = errno.errorcode.get(err, str(err))
            errs[name] = errs.get(name, 0) + 1
            st["connect_failed"] = int(st["connect_failed"]) + 1  # type: ignore[call-overload]
            release(i, rst=False)
            retry_later(i, now)
            return
        counts["connecting"] -= 1
        counts["open"] += 1
        state[i] = OPEN
        since[i] = now
        st["opened"] = int(st["opened"]) + 1  # type: ignore[call-overload]
        ep.modify(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        first = UPLOAD_HEAD if a.kind == "upload" else HEAD_START if a.kind == "head" else b""
        if first:
            send(i, first)
        # the next byte / line in this slot's phase of the interval
        if a.kind != "idle":
            k = int((now - t0 - phase[i]) // a.interval) + 1
            heapq.heappush(timers, (t0 + phase[i] + k * a.interval, i, gen[i], SEND))

    def send(i: int, data: bytes) -> None:
        s = socks[i]
        if s is None:
            return
        try:
            st["bytes_sent"] = int(st["bytes_sent"]) + s.send(data)  # type: ignore[call-overload]
        except BlockingIOError:
            pass
        except OSError:
            peer_closed(i, time.time(), reset=True)

    def peer_closed(i: int, now: float, reset: bool = False, data: bytes = b"") -> None:
        if st["first_close"] is None:
            st["first_close"] = now
        st["closed_by_peer"] = int(st["closed_by_peer"]) + 1  # type: ignore[call-overload]
        if reset:
            st["reset_by_peer"] = int(st["reset_by_peer"]) + 1  # type: ignore[call-overload]
        if data.startswith(b"HTTP/"):
            code = data[9:12].decode(errors="replace")
            answers[code] = answers.get(code, 0) + 1
        if len(lifetimes) < 50000:
            lifetimes.append(round(now - since[i], 3))
        release(i, rst=False)
        retry_later(i, now)

    def readable(i: int, now: float) -> None:
        s = socks[i]
        assert s is not None
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            peer_closed(i, now, reset=True)
            return
        # Any answer (408, 429, 400...) or EOF ends the connection for an attacker.
        peer_closed(i, now, data=data)

    def dump(final: bool = False) -> None:
        st["open"], st["connecting"] = counts["open"], counts["connecting"]
        st["peak_open"] = max(int(st["peak_open"]), counts["open"])  # type: ignore[call-overload]
        st["t"] = time.time()
        if final:
            st["ended"] = st["t"]
            ru = resource.getrusage(resource.RUSAGE_SELF)
            st["cpu_s"] = ru.ru_utime + ru.ru_stime
        tmp = a.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, a.stats)

    # Open in order, at most --open-rate per second; reopen closed slots when allowed.
    cursor = 0
    last_dump = 0.0
    budget_t = time.time()
    while True:
        now = time.time()
        if now >= end:
            break
        # first openings
        allowed = int((now - budget_t) * a.open_rate) + 1
        while cursor < n and allowed > 0:
            open_slot(cursor, now)
            cursor += 1
            allowed -= 1
        budget_t = now if cursor < n else budget_t
        if cursor >= n and st["all_open_at"] is None and counts["connecting"] == 0:
            st["all_open_at"] = now
        wait = 0.05 if cursor < n or not timers else min(0.05, max(0.0, timers[0][0] - time.time()))
        for fd, ev in ep.poll(wait, 4096):
            i = fd_slot.get(fd)
            if i is None:
                continue
            if state[i] == CONNECTING:
                if ev & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                    established(i, now)
                if state[i] == OPEN and ev & (select.EPOLLIN | select.EPOLLRDHUP):
                    readable(i, now)
            elif state[i] == OPEN:
                readable(i, now)
        now = time.time()
        # timed sends and reconnects
        while timers and timers[0][0] <= now:
            when, i, g, what = heapq.heappop(timers)
            if g != gen[i]:
                continue  # that connection is gone
            if what == SEND and state[i] == OPEN:
                send(i, b"x" if a.kind == "upload" else b"X-Slow-%d: %d\r\n" % (i, int(now)))
                if state[i] == OPEN:
                    heapq.heappush(timers, (when + a.interval, i, gen[i], SEND))
            elif what == REOPEN and state[i] == FREE:
                open_slot(i, now)
        if now - last_dump >= 0.5:
            last_dump = now
            dump()
    for i in range(n):
        release(i, rst=True)
    dump(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
