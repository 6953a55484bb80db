"""Locust load test for the l7switch demo (`l7switch demo`, or `make run`): visitors of a small site.

    make load                       # the demo, 50 users for 60 s, reports in loadtests/out/
    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8080

One user class per scenario; run without naming one, locust mixes them all by their `weight`
(the mixed profile); name some (`... LoggedInUser Downloader`) to run only those.

* PageVisitor:  a page, then the images its HTML references, a few at a time like a browser;
* FormPoster:   the CGI form, shown and posted (the answer must echo the fields), the odd bad post;
* LoggedInUser: logs in on the app pool, then every request must come back from the same
                server (cookie persistence); a change is a failure naming both servers;
* Downloader:   1-4 MiB files, streamed and checked byte for byte by SHA-256.

Every answer is judged by loadcheck.py: status, content type, that X-Server is a server of the
pool the URL belongs to, and the body where it matters, so a mis-route is a failure rather
than a fast success.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import gevent
from gevent.pool import Pool
from loadcheck import (Want, account_problem, download_problem, file_digest, form_echo_problem, image_problem,
                       image_want, judge, page_images)
from locust import FastHttpUser, between, events, task
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from l7switch.devtools.demoapps import FILE_SIZES

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_serial = itertools.count(1)  # per locust process: names of users and messages


@events.quitting.add_listener
def write_final_csv(environment: Any, **_kw: Any) -> None:
    """``<prefix>_{stats,failures,exceptions,users}_final.csv``, which run.py judges the run by.

    locust rewrites its --csv files once a second while it runs, so they can miss the last
    second; these are written at exit, after every user has stopped, in the same format, plus
    how many users of each class ran (so run.py knows which scenarios must show requests).
    """
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for kind, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv),
                        ("exceptions", writer.exceptions_csv)):
        with open(f"{prefix}_{kind}_final.csv", "w", newline="") as f:
            write(csv.writer(f))
    users = getattr(environment.runner, "final_user_classes_count", None) or {}
    with open(f"{prefix}_users_final.csv", "w", newline="") as f:
        csv.writer(f).writerows([("Class", "Users"), *sorted(users.items())])


def header(resp: Any, name: str) -> str:
    headers = getattr(resp, "headers", None)
    return (headers.get(name) or "") if headers is not None else ""


class SiteUser(FastHttpUser):
    """Shared by the scenarios: one request, judged. Not run by itself (abstract)."""
    abstract = True
    host = "http://127.0.0.1:8080"
    # Far below locust's 60 s defaults: a hung answer becomes a failure within the run's time
    # instead of a user silently waiting past its end.
    connection_timeout = 5.0
    network_timeout = 10.0

    def fetch(self, method: str, path: str, want: Want, check: Callable[[Any], str | None] | None = None,
              **kwargs: Any) -> tuple[Any, str | None]:
        """Send, judge, record; returns the response and its problem (None when it passed)."""
        with self.client.request(method, path, catch_response=True, **kwargs) as resp:
            if resp.status_code == 0:  # no answer at all: refused, reset, timed out
                problem = f"no response: {getattr(resp, 'error', None)!r}"
            else:
                problem = judge(want, resp.status_code, header(resp, "Content-Type"),
                                header(resp, "X-Server"))
                if problem is None and check is not None:
                    problem = check(resp)
            if problem is None:
                resp.success()  # also for an expected 4xx
            else:
                resp.failure(problem)
        return resp, problem


class PageVisitor(SiteUser):
    """Pages from the html pool and the images each one references (parsed, not listed here)."""
    weight = 5
    wait_time = between(0.2, 1.0)
    parallel = 4  # images fetched at once, as a browser opens a few connections per host

    @task(1)
    def home(self) -> None:
        self.visit("/")

    @task(2)
    def gallery(self) -> None:
        self.visit("/gallery.html")

    def visit(self, page: str) -> None:
        resp, problem = self.fetch("GET", page, Want("html", "text/html"), check=self._has_images)
        if problem is not None:
            return
        pool = Pool(self.parallel)
        jobs = [pool.spawn(self.image, path) for path in page_images(self.host + page, resp.text)]
        gevent.joinall(jobs, raise_error=True)  # a bug in image() must not vanish in a greenlet

    def _has_images(self, resp: Any) -> str | None:
        return None if page_images(self.host + "/", resp.text or "") else "page references no image"

    def image(self, path: str) -> None:
        ext = path.rpartition(".")[2]
        # One report row per kind of image, rather than one per file.
        self.fetch("GET", path, image_want(path), name=f"/images/*.{ext} (from pages)",
                   check=lambda resp: image_problem(path, resp.content or b""))


class FormPoster(SiteUser):
    """The cgi pool: the guest-book form shown and posted, the hello script, and bad posts."""
    weight = 2
    wait_time = between(0.2, 1.0)

    @task(1)
    def show_form(self) -> None:
        self.fetch("GET", "/cgi-bin/form", Want("cgi", "text/html"),
                   check=lambda r: None if 'action="/cgi-bin/form"' in (r.text or "") else "no form")

    @task(4)
    def post_form(self) -> None:
        n = next(_serial)
        # Spaces, '&', '=', '+' and non-ASCII: everything url-encoding must carry intact.
        form = {"name": f"visitor {n}", "message": f"Grüße & thanks = {random.randint(0, 10**6)} +1"}
        self.fetch("POST", "/cgi-bin/form", Want("cgi", "text/plain"), data=urlencode(form), headers=FORM,
                   check=lambda r: form_echo_problem(form, header(r, "X-Server"), r.text or ""))

    @task(1)
    def post_bad_form(self) -> None:
        # A missing field must be refused with 400: proves the script reads the body it gets.
        self.fetch("POST", "/cgi-bin/form", Want("cgi", "text/plain", status=400),
                   name="/cgi-bin/form (missing field)", data=urlencode({"name": "x"}), headers=FORM)

    @task(1)
    def hello(self) -> None:
        self.fetch("GET", f"/cgi-bin/hello?visit={next(_serial)}", Want("cgi", "text/plain"),
                   name="/cgi-bin/hello?visit=[n]")


class LoggedInUser(SiteUser):
    """Logs in on the app pool, then must stay on the server that logged it in."""
    weight = 2
    wait_time = between(0.2, 1.0)
    user = ""
    server = ""  # the app server that holds our session; "" while logged out

    def on_start(self) -> None:
        self.login()

    def login(self) -> None:
        self.client.cookiejar.clear()  # a new visitor: no session, no SRVID
        self.user, self.server = f"user-{next(_serial)}", ""
        resp, problem = self.fetch("POST", "/app/login", Want("app", "text/html"), check=self._cookies_set,
                                   data=urlencode({"user": self.user}), headers=FORM)
        if problem is None:
            self.server = header(resp, "X-Server")

    def _cookies_set(self, resp: Any) -> str | None:
        names = {c.name for c in self.client.cookiejar}
        missing = sorted({"SRVID", "app_session"} - names)
        return f"login set no {' or '.join(missing)} cookie" if missing else None

    def _no_new_srvid(self, resp: Any, body_check: Callable[[str], str | None]) -> str | None:
        if any(c.startswith("SRVID=") for c in resp.headers.getlist("Set-Cookie")):
            return f"{self.server} set SRVID again: the switch did not recognise the client's cookie"
        return body_check(resp.text or "")

    def session_get(self, path: str, ctype: str, body_check: Callable[[str], str | None]) -> None:
        if not self.server:  # the last login failed: try again rather than fail every request
            self.login()
            return
        # Want.server: an answer from any other server fails as "server changed from A to B".
        _, problem = self.fetch("GET", path, Want("app", ctype, server=self.server),
                                check=lambda r: self._no_new_srvid(r, body_check))
        if problem is not None:
            self.login()  # start a new session; one failure is reported, not a cascade

    @task(6)
    def account(self) -> None:
        self.session_get("/app/account", "application/json",
                         lambda text: account_problem(self.user, self.server, text))

    @task(3)
    def home(self) -> None:
        self.session_get("/app/", "text/html",
                         lambda text: None if f"Hello {self.user}." in text else "not greeted by name")

    @task(1)
    def log_out_and_in(self) -> None:
        # Now and then a visitor leaves and a new one logs in: the new session may land on
        # the other server, and gets a new SRVID cookie.
        if self.server:
            self.fetch("POST", "/app/logout", Want("app", "text/html", server=self.server))
        self.login()


class Downloader(SiteUser):
    """Large files from the files pool, streamed in 64 KiB pieces and verified by SHA-256."""
    weight = 1
    wait_time = between(1.0, 3.0)
    chunk = 64 * 1024

    def on_start(self) -> None:
        for size in FILE_SIZES:  # the expected digests, once, before any download is timed
            file_digest(size)

    @task
    def download(self) -> None:
        size = random.choice(FILE_SIZES)
        path = f"/files/{size}.bin"
        with self.client.get(path, stream=True, catch_response=True) as resp:
            if resp.status_code == 0:
                problem = f"no response: {getattr(resp, 'error', None)!r}"
            else:
                problem = judge(Want("files", "application/octet-stream"), resp.status_code,
                                header(resp, "Content-Type"), header(resp, "X-Server"))
                # Read the whole body even after a problem, so the connection stays usable.
                started, digest, received = time.perf_counter(), hashlib.sha256(), 0
                try:
                    for piece in resp.iter_content(self.chunk, decode_content=False):
                        digest.update(piece)
                        received += len(piece)
                except OSError as e:  # a timeout mid-body; a closed connection just ends the loop
                    problem = problem or f"{size}.bin: broken off after {received} bytes: {e!r}"
                # With stream=True locust times only the head; count the body's time too.
                resp.request_meta["response_time"] += (time.perf_counter() - started) * 1000
                resp.request_meta["response_length"] = received
                problem = problem or download_problem(size, header(resp, "Content-Length"), received,
                                                      digest.hexdigest())
            if problem is None:
                resp.success()
            else:
                resp.failure(problem)
