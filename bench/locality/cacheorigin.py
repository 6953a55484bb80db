#!/usr/bin/env python3
"""N caching origin servers in one uvloop process: back-ends with a real, bounded capacity whose
cost depends on cache locality.

Each origin (l7switch.devtools.origin.OriginServer with a custom handler, HTTP/1.1 keep-alive) has:
* an LRU of ``--cache`` whole objects;
* ``--workers`` service slots (an asyncio.Semaphore): a request waits for a slot, then holds it
  for ``--hit-ms`` if its object is cached or ``--miss-ms`` if not (the object is inserted when
  the miss finishes), so each origin serves at most workers/service-time requests per second and
  a miss costs ~10× a hit.

Routes:
  GET /obj/<id>            200, a --body-bytes body, X-Cache: HIT|MISS, X-Server: <name>
  GET /stats               JSON {name, requests, hits, misses, max_inflight, ...}; not counted
  POST|GET /reset          clear cache and stats
  POST|GET /reset/stats    clear stats only (keep the warm cache)

On start it prints one JSON line on stdout: {"origins": [{"name": "o1", "port": 41234}, ...]}.

  bench/locality/cacheorigin.py -n 8 --cache 1000 --workers 2 --hit-ms 1 --miss-ms 10
  bench/locality/cacheorigin.py --ports 9001,9002 ...      # fixed ports instead of ephemeral

It exits on SIGINT/SIGTERM, or after --max-runtime seconds (default 1 h) in any case.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from l7switch.devtools.origin import OriginRequest, OriginResponse, OriginServer  # noqa: E402

JSON = [("Content-Type", "application/json")]


class CacheOrigin:
    def __init__(self, name: str, cache: int, workers: int, hit_ms: float, miss_ms: float,
                 body_bytes: int) -> None:
        self.name = name
        self.capacity = cache
        self.workers = workers
        self.hit_s = hit_ms / 1000
        self.miss_s = miss_ms / 1000
        self.body = (name.encode() + b" " * body_bytes)[:body_bytes]
        self.lru: OrderedDict[str, None] = OrderedDict()
        self.sem = asyncio.Semaphore(workers)
        self.inflight = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests = self.hits = self.misses = 0
        self.max_inflight = self.inflight
        self.svc_hit = self.svc_miss = 0.0  # measured time holding a slot, seconds
        self.wait = 0.0  # time waiting for a slot
        self.since = time.monotonic()

    def reset(self) -> None:
        self.lru.clear()
        self.reset_stats()

    def stats(self) -> dict:
        span = time.monotonic() - self.since
        busy = self.svc_hit + self.svc_miss
        return {
            "name": self.name, "requests": self.requests, "hits": self.hits, "misses": self.misses,
            "hit_rate": round(self.hits / self.requests, 4) if self.requests else None,
            "max_inflight": self.max_inflight, "inflight": self.inflight,
            "cached": len(self.lru), "capacity": self.capacity, "workers": self.workers,
            "mean_hit_ms": round(self.svc_hit / self.hits * 1000, 3) if self.hits else None,
            "mean_miss_ms": round(self.svc_miss / self.misses * 1000, 3) if self.misses else None,
            "mean_wait_ms": round(self.wait / self.requests * 1000, 3) if self.requests else None,
            "busy": round(busy / (span * self.workers), 4) if span > 0 else None,
            "seconds": round(span, 3),
        }

    async def serve(self, key: str) -> OriginResponse:
        self.inflight += 1
        if self.inflight > self.max_inflight:
            self.max_inflight = self.inflight
        t0 = time.monotonic()
        try:
            async with self.sem:
                t1 = time.monotonic()
                lru = self.lru
                hit = key in lru
                if hit:
                    lru.move_to_end(key)
                await asyncio.sleep(self.hit_s if hit else self.miss_s)
                if not hit and key not in lru:
                    lru[key] = None
                    if len(lru) > self.capacity:
                        lru.popitem(last=False)
                t2 = time.monotonic()
        finally:
            self.inflight -= 1
        self.requests += 1
        self.wait += t1 - t0
        if hit:
            self.hits += 1
            self.svc_hit += t2 - t1
        else:
            self.misses += 1
            self.svc_miss += t2 - t1
        return OriginResponse(200, [("Content-Type", "application/octet-stream"),
                                    ("X-Cache", "HIT" if hit else "MISS"),
                                    ("X-Server", self.name)], self.body)

    def handler(self, req: OriginRequest):
        path = req.path
        if path.startswith("/obj/"):
            return self.serve(path)
        if path == "/stats":
            return OriginResponse(200, JSON, json.dumps(self.stats()).encode())
        if path == "/reset":
            self.reset()
            return OriginResponse(200, JSON, b'{"reset": "cache+stats"}')
        if path == "/reset/stats":
            self.reset_stats()
            return OriginResponse(200, JSON, b'{"reset": "stats"}')
        return OriginResponse(404, [("Content-Type", "text/plain")], b"not found\n")


async def serve(args: argparse.Namespace) -> int:
    ports = [int(p) for p in args.ports.split(",")] if args.ports else [0] * args.n
    origins, servers = [], []
    for i, port in enumerate(ports, 1):
        o = CacheOrigin(f"o{i}", args.cache, args.workers, args.hit_ms, args.miss_ms, args.body_bytes)
        srv = OriginServer(o.handler, o.name)
        await srv.start(args.host, port)
        origins.append({"name": o.name, "port": srv.port})
        servers.append(srv)
    print(json.dumps({"origins": origins}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.max_runtime)
    except asyncio.TimeoutError:
        print(f"cacheorigin: --max-runtime {args.max_runtime:g} s reached, exiting", file=sys.stderr)
    for srv in servers:
        await srv.stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=8, help="number of origins (default 8; ignored with --ports)")
    ap.add_argument("--ports", default="", help="comma list of ports (default: N ephemeral ports)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cache", type=int, default=1000, help="LRU objects per origin (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="service slots per origin (default 2)")
    ap.add_argument("--hit-ms", type=float, default=1.0)
    ap.add_argument("--miss-ms", type=float, default=10.0)
    ap.add_argument("--body-bytes", type=int, default=512)
    ap.add_argument("--max-runtime", type=float, default=3600.0, help="exit after this many seconds")
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
