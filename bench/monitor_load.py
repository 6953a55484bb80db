"""The monitor's load on the switch, for ``bench/run.py --monitor``: a headless chromium logged in
to the monitor's overview (which polls /api/state every second by itself) and a Prometheus-like
scraper fetching /metrics every second, both running for the whole benchmark run so every
proxy measured shares the browser's CPU on this machine; only ``l7switch+mon`` is watched.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from pathlib import Path

USER, PASSWORD = "bench", "bench-pass"


def write_users(path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from l7switch.config.users import set_user

    set_user(str(path), USER, "admin", PASSWORD)


def start(monitor_port: int, metrics_port: int) -> tuple[Callable[[], dict[str, int]], str | None]:
    """Begin watching; returns (stop, error). ``stop()`` ends both and returns the counts."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    done = threading.Event()
    counts = {"scrapes": 0, "scrape_errors": 0}

    def scrape() -> None:
        while not done.wait(1.0):
            try:
                c = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
                c.request("GET", "/metrics")
                r = c.getresponse()
                r.read()
                c.close()
                counts["scrapes" if r.status == 200 else "scrape_errors"] += 1
            except OSError:
                counts["scrape_errors"] += 1

    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    try:
        d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        d.get(f"http://127.0.0.1:{monitor_port}/login")
        d.find_element(By.ID, "user").send_keys(USER)
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.ID, "login").click()
        time.sleep(2)
        if not d.find_elements(By.CSS_SELECTOR, "tr[id^=srv-]"):
            d.quit()
            return (lambda: counts), "the monitor page shows no server after login"
    except Exception as exc:  # no chromium here: say so, measure nothing
        return (lambda: counts), f"cannot open the monitor in chromium: {exc}"
    t = threading.Thread(target=scrape, daemon=True)
    t.start()

    def stop() -> dict[str, int]:
        done.set()
        t.join(5)
        d.quit()
        return counts
    return stop, None
