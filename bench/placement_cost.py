#!/usr/bin/env python3
"""What the locality schedulers' placement costs per request (pure CPU, no sockets).

With ``workers: N`` lblc/lblcr/lard place a new key by rendezvous hash (``placement: hash``,
balance/schedulers/_locality.py) so that every worker, with its own table, picks the same server
without asking anyone. This times ``scheduler.pick(key)``:

* a key already in the table (the common case once caches are warm): the table lookup, the same
  code whatever the placement;
* a new key: least loaded (``load``, IPVS) vs rendezvous (``hash``), over pools of 4-50 servers.

For scale, a lookup in a table the master owns would be one round trip over a Unix socket per new
key (tens of µs), and shared memory would need a lock and its own hash table.

    .venv/bin/python bench/placement_cost.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l7switch.balance.schedulers import create  # noqa: E402
from l7switch.balance.servers import Server  # noqa: E402

KEYS = 20_000


def per_pick(name: str, n: int, placement: str, known: bool, repeat: int) -> float:
    """Median µs per pick over ``repeat`` runs of KEYS picks."""
    runs = []
    for r in range(repeat):
        servers = [Server(f"s{i}", "127.0.0.1", 9000 + i, 1, "p", i) for i in range(n)]
        for i, s in enumerate(servers):
            s.inflight = i % 7  # some load, so least loaded has to compare
        sched = create(name, servers, {"placement": placement, "max_entries": 2 * KEYS})
        keys = [f"/objects/{r}/{k}.jpg" for k in range(KEYS)]
        if known:
            for k in keys:
                sched.pick(k)
        pick = sched.pick
        t0 = time.perf_counter()
        for k in keys:
            pick(k)
        runs.append((time.perf_counter() - t0) / KEYS * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="4,12,50")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    print("| scheduler | servers | known key µs | new key, load µs | new key, hash µs |")
    print("|---|---:|---:|---:|---:|")
    for name in ("lblc", "lard"):
        for n in sizes:
            known = per_pick(name, n, "hash", True, args.repeat)
            load = per_pick(name, n, "load", False, args.repeat)
            hashed = per_pick(name, n, "hash", False, args.repeat)
            print(f"| {name} | {n} | {known:.2f} | {load:.2f} | {hashed:.2f} |")


if __name__ == "__main__":
    main()
