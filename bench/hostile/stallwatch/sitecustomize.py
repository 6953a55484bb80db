"""Stall watch for the switch under a hostile bench (bench-only; loaded when bench/hostile/run.py
is given ``--stallwatch``, through PYTHONPATH).

A thread asks the event loop for a callback every 5 ms (``call_soon_threadsafe``); while one is
overdue by more than 20 ms the loop is stalled, and the thread samples the main thread's Python
stack every millisecond. After each stall it rewrites, per stall longer than 50 ms, its start,
length and the stacks seen most, to the file named by L7SWITCH_STALLWATCH. A sample with no
Python frame above the loop's run call is time spent inside the loop itself (libuv, system calls,
callbacks written in C) or waiting for the GIL.
"""
from __future__ import annotations

import collections
import gc
import os
import sys
import threading
import time
import traceback

OUT = os.environ.get("L7SWITCH_STALLWATCH")
LONG = float(os.environ.get("L7SWITCH_STALL_MS", "50")) / 1000


def _stack(frame, limit=14):
    out = []
    for fs in traceback.extract_stack(frame)[-limit:]:
        name = os.path.basename(fs.filename)
        if name in ("base_events.py", "runners.py", "__main__.py", "runpy.py"):
            continue
        out.append(f"{name}:{fs.lineno}:{fs.name}")
    return " <- ".join(reversed(out)) or "(in the loop: no Python frame)"


def _watch():
    main = threading.main_thread().ident
    sys.setswitchinterval(0.001)  # samples every ~1 ms even while the loop holds the GIL
    loop = None
    while loop is None:
        time.sleep(0.5)
        for o in gc.get_objects():
            if type(o).__name__ == "Loop" and type(o).__module__.startswith("uvloop") and o.is_running():
                loop = o
                break
    _dump()  # an empty file says: watching, no stall yet
    beat = [time.monotonic()]
    asked = [0.0]

    def answer():
        beat[0] = time.monotonic()

    stalls = []
    gc_time = [0.0]
    gc_start = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - gc_start[0]

    gc.callbacks.append(on_gc)
    cur = None
    while True:
        now = time.monotonic()
        if beat[0] >= asked[0]:
            if cur is not None:
                cur["length"] = now - cur["t0"]
                cur["gc"] = gc_time[0] - cur["gc0"]
                if cur["length"] > LONG:
                    stalls.append(cur)
                    _dump()
                cur = None
            asked[0] = now
            try:
                loop.call_soon_threadsafe(answer)
            except RuntimeError:
                return
            time.sleep(0.005)
            continue
        if now - asked[0] > min(0.02, LONG / 2):
            if cur is None:
                cur = {"t0": asked[0], "wall": time.time(), "stacks": collections.Counter(),
                       "samples": 0, "gc0": gc_time[0]}
                _STALLS[0] = stalls
            f = sys._current_frames().get(main)
            if f is not None:
                cur["stacks"][_stack(f)] += 1
                cur["samples"] += 1
        time.sleep(0.001)


_STALLS = [[]]


def _dump():
    if not OUT:
        return
    with open(OUT, "w") as fh:
        for s in _STALLS[0]:
            fh.write(f"stall at {time.strftime('%H:%M:%S', time.localtime(s['wall']))}"
                     f".{int(s['wall'] % 1 * 1000):03d}: {s['length'] * 1000:.0f} ms, gc {s['gc'] * 1000:.0f} ms, "
                     f"{s['samples']} samples\n")
            for st, n in s["stacks"].most_common(12):
                fh.write(f"  {n:5d}  {st}\n")


if OUT:
    threading.Thread(target=_watch, daemon=True, name="stallwatch").start()
