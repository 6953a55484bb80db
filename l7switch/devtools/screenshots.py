"""``make screenshots``: pictures of the monitor for README, from a live switch.

Starts, in this process, eight caching origins (each an LRU of ``CACHE`` objects that answers
``X-Cache: HIT`` or ``MISS`` and takes a little longer on a miss), a switch with two pools over
them — ``lblc`` keyed on the path and ``rr`` — the monitor (plain HTTP on loopback, a throw-away
user) and /metrics; sends both pools the same Zipf-distributed traffic from a few threads for
``--seconds``, drains one server so the picture has a state other than up; then headless
chromium logs in and photographs the overview, the locality view and the charts into ``--out``.

    .venv/bin/python -m l7switch.devtools.screenshots [--out docs] [--seconds 40]

Needs chromium, chromedriver and selenium (the test extra), as the browser tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..config import parse_config
from ..config.users import set_user
from .origin import OriginRequest, OriginResponse, OriginServer

ORIGINS = 4  # per pool
CACHE = 300  # objects each origin's cache holds
OBJECTS = 4000  # distinct paths; Zipf(ALPHA) over them
ALPHA = 0.9
MISS_S = 0.004  # what a miss costs the origin (fetching from its own back end)


def caching_handler(name: str) -> Any:
    cache: OrderedDict[str, bool] = OrderedDict()

    async def handle(req: OriginRequest) -> OriginResponse:
        hit = req.path in cache
        if hit:
            cache.move_to_end(req.path)
        else:
            await asyncio.sleep(MISS_S)
            cache[req.path] = True
            if len(cache) > CACHE:
                cache.popitem(last=False)
        return OriginResponse(200, [("X-Server", name), ("X-Cache", "HIT" if hit else "MISS"),
                                    ("Content-Type", "text/plain")], b"x" * 512)
    return handle


def zipf_paths(n: int, seed: int) -> list[str]:
    weights = [1 / (k ** ALPHA) for k in range(1, OBJECTS + 1)]
    rnd = random.Random(seed)
    return [f"/obj/{k}" for k in rnd.choices(range(OBJECTS), weights=weights, k=n)]


def drive(port: int, prefix: str, until: float, seed: int) -> None:
    """Keep-alive GETs of Zipf paths under ``prefix`` until ``until`` (monotonic)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    paths = zipf_paths(20_000, seed)
    i = 0
    while time.monotonic() < until:
        conn.request("GET", prefix + paths[i % len(paths)])
        conn.getresponse().read()
        i += 1
    conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs", help="directory for the PNG files (default docs)")
    ap.add_argument("--seconds", type=float, default=40.0, help="traffic before the pictures (default 40)")
    args = ap.parse_args(argv)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from ..runtime.switch import Switch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="l7shots-"))
    set_user(str(tmp / "users"), "operator", "admin", "operator-pass")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    async def start() -> tuple[Switch, list[OriginServer]]:
        origins = [OriginServer(caching_handler(f"cache{i + 1}"), f"cache{i + 1}") for i in range(2 * ORIGINS)]
        for o in origins:
            await o.start()
        servers = [f"      - {{address: 127.0.0.1:{o.port}, name: {o.name}}}\n" for o in origins]
        text = ("listen: [{address: 127.0.0.1:0}]\npools:\n"
                "  images-lblc:\n    scheduler: lblc\n    scheduler_options: {capacity: 8}\n    servers:\n"
                + "".join(servers[:ORIGINS]) +
                "  images-rr:\n    scheduler: rr\n    servers:\n" + "".join(servers[ORIGINS:]) +
                "rules:\n  - {name: rr, match: {path_prefix: /rr/}, pool: images-rr}\n"
                "default_pool: images-lblc\n"
                f"monitor: {{listen: 127.0.0.1:0, users: {tmp}/users, insecure: true}}\n"
                "metrics: {listen: 127.0.0.1:0}\n")
        sw = Switch(parse_config(text, str(tmp / "site.yaml")))
        await sw.start()
        return sw, origins

    sw, origins = run(start())
    assert sw.observers.monitor is not None
    base = f"http://127.0.0.1:{sw.observers.monitor.port}"
    until = time.monotonic() + args.seconds
    threads = [threading.Thread(target=drive, args=(sw.port, prefix, until, seed), daemon=True)
               for seed, prefix in enumerate(["", "", "/rr", "/rr"])]
    for t in threads:
        t.start()
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--hide-scrollbars"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(base + "/login")
        d.find_element(By.ID, "user").send_keys("operator")
        d.find_element(By.ID, "password").send_keys("operator-pass")
        d.find_element(By.ID, "login").click()
        time.sleep(max(0.0, until - time.monotonic() - 3))
        d.find_element(By.ID, "drain-images-rr_cache8").click()
        time.sleep(2.5)
        d.save_screenshot(str(out / "monitor-overview.png"))
        d.find_element(By.ID, "tab-locality").click()
        time.sleep(1.5)
        d.save_screenshot(str(out / "monitor-locality.png"))
        d.find_element(By.ID, "tab-charts").click()
        time.sleep(2.5)
        d.save_screenshot(str(out / "monitor-charts.png"))
    finally:
        d.quit()
        for t in threads:
            t.join(15)
        run(sw.stop(0.5))
        for o in origins:
            run(o.stop())
        loop.call_soon_threadsafe(loop.stop)
    for name in ("monitor-overview.png", "monitor-locality.png", "monitor-charts.png"):
        print(f"wrote {out / name} ({os.path.getsize(out / name)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
