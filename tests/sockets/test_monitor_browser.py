"""The monitor in a real browser: Debian's chromium, headless, driven by selenium (issue 12).

A wrong password is refused; the right one shows every pool and server; draining a server from
the page changes its state on the page and in ``l7switch ctl show servers``; an action without
the CSRF token gets 403; the session cookie has its flags; logout ends the session.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``apt-get install -y chromium
chromium-driver``; .ci/run installs them). Without them the test is skipped, unless
L7SWITCH_BROWSER_TESTS=required (CI sets it), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kit import PACKAGE_ROOT, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ROOT = PACKAGE_ROOT  # subprocesses run the build under test (kit.py)

if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    if os.environ.get("L7SWITCH_BROWSER_TESTS") == "required":
        raise RuntimeError("browser tests required, but chromium/chromedriver are missing "
                           "(apt-get install -y chromium chromium-driver)")
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from test_monitor import monitored  # noqa: E402,F401  (the fixture)


def browser() -> webdriver.Chrome:
    opts = Options()
    opts.binary_location = CHROMIUM
    # The test CA is not in chromium's store: accept the switch's throw-away certificate.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--ignore-certificate-errors", "--window-size=1400,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def ctl_servers(sock: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "l7switch", "ctl", "--socket", str(sock), "show", "servers"],
                       capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture
def driver():
    d = browser()
    d.set_page_load_timeout(20)
    yield d
    d.quit()


def _login(d: webdriver.Chrome, base: str, user: str, password: str) -> None:
    d.get(base + "/login")
    d.find_element(By.ID, "user").send_keys(user)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.ID, "login").click()


def _text(d: webdriver.Chrome, element_id: str) -> str:
    """An element's text, or "" while the page it was found on is being replaced (a submitted
    form: the old page's element goes stale under us)."""
    try:
        return d.find_element(By.ID, element_id).text
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def _shown(d: webdriver.Chrome, element_id: str) -> bool:
    try:
        return d.find_element(By.ID, element_id).is_displayed()
    except (StaleElementReferenceException, NoSuchElementException):
        return False  # (the locality view is redrawn every second)


def _attr(d: webdriver.Chrome, element_id: str, name: str) -> str | None:
    try:
        return d.find_element(By.ID, element_id).get_attribute(name)
    except (StaleElementReferenceException, NoSuchElementException):
        return None


def test_the_monitor_in_chromium(lt, tmp_path, monitored, driver):  # noqa: F811
    sock = tmp_path / "admin.sock"
    sw, port, _, _ = monitored(tls=True, extra=f"admin: {{socket: {sock}}}\n")
    base = f"https://localhost:{port}"
    d = driver
    _login(d, base, "alice", "not-her-password")
    assert wait_for(lambda: "Wrong user name or password" in _text(d, "login-error"), 10)
    _login(d, base, "alice", "alice-pass")
    assert wait_for(lambda: d.find_elements(By.ID, "srv-web_o1") and d.find_elements(By.ID, "srv-web_o2"), 10)
    assert d.find_element(By.ID, "pool-web").is_displayed()
    cookie = d.get_cookie("l7s_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert "o1" in ctl_servers(sock) and "drain" not in ctl_servers(sock)

    d.find_element(By.ID, "drain-web_o1").click()
    assert wait_for(lambda: _attr(d, "srv-web_o1", "data-state") == "drain", 10)
    assert "drain" in next(line for line in ctl_servers(sock).splitlines() if " o1 " in f" {line} ")

    # An action without the CSRF token, from the page's own origin and session: refused.
    status = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/action', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({action: 'disable', server: 'web/o2'})}).then(r => done(r.status));")
    assert status == 403
    assert sw.state.current.pools["web"].servers[1].state == "up"

    d.find_element(By.ID, "tab-locality").click()
    assert wait_for(lambda: _shown(d, "locality-web"), 5)
    d.find_element(By.ID, "logout").click()
    assert wait_for(lambda: d.current_url.endswith("/login"), 10)
    d.get(base + "/")
    assert d.current_url.endswith("/login")  # the session is gone
