"""Locust load test for the l7switch demo (`l7switch demo`, or `make run`).

    pip install -e '.[load]'
    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8080

The mix mirrors a small web site: mostly pages and images, some dynamic requests. Every
response is checked for the right status, content type and the X-Server header the demo
origins add, so a mis-route (say, a PNG answered by an html server) counts as a failure
rather than a fast success.
"""

from __future__ import annotations

from locust import FastHttpUser, between, task

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DemoVisitor(FastHttpUser):
    # FastHttpUser (geventhttpclient) keeps connections alive and costs far less CPU per request
    # than HttpUser (requests), so the load generator is less likely to be the bottleneck.
    host = "http://127.0.0.1:8080"
    wait_time = between(0.05, 0.2)  # a busy but human-ish visitor

    def _check(self, path: str, ctype: str, pool: str, name: str | None = None) -> None:
        with self.client.get(path, name=name or path, catch_response=True) as resp:
            server = resp.headers.get("X-Server", "")
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
            elif not resp.headers.get("Content-Type", "").startswith(ctype):
                resp.failure(f"content type {resp.headers.get('Content-Type')!r}, wanted {ctype}")
            elif not server.startswith(pool):
                resp.failure(f"answered by {server!r}, wanted a server of pool {pool!r}")
            elif ctype == "image/png" and not resp.content.startswith(PNG_SIGNATURE):
                resp.failure("body is not a PNG")
            else:
                resp.success()

    @task(5)
    def index(self) -> None:
        self._check("/", "text/html", "html")

    @task(4)
    def logo(self) -> None:
        self._check("/images/logo.png", "image/png", "images")

    @task(2)
    def cgi_hello(self) -> None:
        # One stats row for all query strings, as a dashboard would group them.
        self._check(f"/cgi-bin/hello?visit={id(self) % 1000}", "text/plain", "cgi",
                    name="/cgi-bin/hello?visit=[n]")
