"""The demo end to end: rules/demo.yaml, its embedded origins and the switch, all on port 0.

These are also what the load tests (loadtests/) do once each: a page and its images, a form
post, a logged-in session that must stay on one server, a large download."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from kit import LoopThread, Response, check_png, connect, exchange, read_response, recv_until_close

from l7switch.devtools.demo import DEMO_CONFIG, GALLERY, GIF_1X1, IMAGES, Demo, banner, make_png, start_demo
from l7switch.devtools.origin import pattern_bytes


@pytest.fixture(scope="module")
def demo(lt: LoopThread) -> Iterator[Demo]:
    d = lt.run(start_demo(DEMO_CONFIG, ephemeral=True, monitor=True))
    yield d
    lt.run(d.stop(), timeout=15)


def fetch(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    with connect(port) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: demo.test\r\n\r\n".encode())
        return read_response(s)


def test_index_page_from_html_pool(demo: Demo) -> None:
    status, headers, body = fetch(demo.port, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert headers["x-server"] in ("html1", "html2")
    assert b"<html" in body and headers["x-server"].encode() in body


def test_round_robin_over_both_html_servers(demo: Demo) -> None:
    seen = {fetch(demo.port, "/index.html")[1]["x-server"] for _ in range(4)}
    assert seen == {"html1", "html2"}


def test_logo_png_from_images_pool(demo: Demo) -> None:
    status, headers, body = fetch(demo.port, "/images/logo.png")
    assert status == 200
    assert headers["content-type"] == "image/png"
    assert headers["x-server"] in ("images1", "images2")
    assert body.startswith(b"\x89PNG\r\n\x1a\n")
    assert int(headers["content-length"]) == len(body)
    assert check_png(body) == (32, 32)


def test_image_extension_outside_images_dir(demo: Demo) -> None:
    status, headers, body = fetch(demo.port, "/favicon.ico")
    assert status == 200 and headers["content-type"] == "image/x-icon"
    assert headers["x-server"].startswith("images")
    assert body[:4] == b"\x00\x00\x01\x00"
    status, headers, body = fetch(demo.port, "/images/dot.gif")
    assert (status, headers["content-type"], body) == (200, "image/gif", GIF_1X1)
    assert fetch(demo.port, "/images/missing.webp")[0] == 404


def test_head_of_logo_has_length_and_no_body(demo: Demo) -> None:
    # read_response cannot know a HEAD answer has no body; read the head by hand, then check
    # the connection carries the next answer straight after it (no stray body bytes).
    with connect(demo.port) as s:
        s.sendall(b"HEAD /images/logo.png HTTP/1.1\r\nHost: demo.test\r\n\r\n"
                  b"GET /images/dot.gif HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n")
        data = recv_until_close(s)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {len(make_png())}".encode() in head.lower()
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(GIF_1X1)


def test_cgi_hello_is_dynamic_text(demo: Demo) -> None:
    status, headers, body = fetch(demo.port, "/cgi-bin/hello?name=you")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert headers["x-server"] == "cgi1"
    text = body.decode()
    assert text.startswith("Hello from cgi1!") and "name=you" in text
    _, _, again = fetch(demo.port, "/cgi-bin/hello")
    assert again != body  # counter (and query) changed: really dynamic, not cached
    assert fetch(demo.port, "/cgi-bin/nope")[0] == 404


def test_echo_through_switch_shows_forwarded_request(demo: Demo) -> None:
    import json

    status, headers, body = fetch(demo.port, "/echo")
    doc = json.loads(body)
    assert status == 200 and doc["server"] in ("html1", "html2") and doc["url"] == "/echo"


def test_banner_lists_what_to_try(demo: Demo) -> None:
    text = banner(demo)
    base = f"http://127.0.0.1:{demo.port}"
    for line in (f"{base}/", f"{base}/images/logo.png", f"{base}/cgi-bin/hello", f"{base}/cgi-bin/form",
                 f"{base}/app/login", f"{base}/files/4MiB.bin",
                 # (rules/demo.yaml from the source tree; where the build under test keeps it otherwise)
                 f"l7switch explain {os.path.relpath(DEMO_CONFIG)} {base}/images/logo.png"):
        assert line in text


def test_gallery_page_pulls_its_images_from_the_images_pool(demo: Demo) -> None:
    status, headers, body = fetch(demo.port, "/gallery.html")
    assert status == 200 and headers["x-server"] in ("html1", "html2")
    assert len(GALLERY) >= 4 and all(f'<img src="{path}"'.encode() in body for path in GALLERY)
    for path in GALLERY:
        status, headers, body = fetch(demo.port, path)
        assert status == 200 and headers["x-server"].startswith("images")
        assert (headers["content-type"], body) == IMAGES[path.rpartition(".")[2]]


def post_form(port: int, path: str, form: dict[str, str], cookie: str = "") -> Response:
    body = urlencode(form).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: demo.test\r\nContent-Type: application/x-www-form-urlencoded"
            f"\r\nContent-Length: {len(body)}\r\n" + (f"Cookie: {cookie}\r\n" if cookie else "") + "\r\n")
    return exchange(port, head.encode() + body)


def test_cgi_form_echoes_a_post_and_refuses_a_missing_field(demo: Demo) -> None:
    status, headers, body = fetch(demo.port, "/cgi-bin/form")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<form" in body
    resp = post_form(demo.port, "/cgi-bin/form", {"name": "Ada", "message": "Grüße & 1+1=2"})
    assert resp.status == 200 and resp.header("X-Server") == "cgi1"
    assert resp.body.decode().splitlines()[1:] == ["name: Ada", "message: Grüße & 1+1=2"]
    bad = post_form(demo.port, "/cgi-bin/form", {"name": "Ada"})
    assert bad.status == 400 and b"missing field 'message'" in bad.body


def cookie_pair(resp: Response, name: str) -> str:
    values = [v.split(";")[0] for v in resp.all("Set-Cookie") if v.startswith(f"{name}=")]
    assert len(values) == 1, resp.all("Set-Cookie")
    return values[0]


def get_with(port: int, path: str, cookie: str) -> Response:
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: demo.test\r\nCookie: {cookie}\r\n\r\n".encode())


def test_app_login_stays_on_one_server_by_its_srvid_cookie(demo: Demo) -> None:
    login = post_form(demo.port, "/app/login", {"user": "ada"})
    assert login.status == 200
    server = login.header("X-Server")
    assert server in ("app1", "app2")
    session, srvid = cookie_pair(login, "app_session"), cookie_pair(login, "SRVID")
    # Each request on a new connection, so only the cookie can keep it on that server.
    for _ in range(4):
        resp = get_with(demo.port, "/app/account", f"{srvid}; {session}")
        assert resp.status == 200 and resp.header("X-Server") == server
        assert json.loads(resp.body) == {"user": "ada", "server": server}
        assert not any(v.startswith("SRVID=") for v in resp.all("Set-Cookie"))  # it was recognised
    # Without SRVID the scheduler takes turns, and the other server does not know the session:
    # what the load test's LoggedInUser would see if persistence broke.
    seen = {}
    for _ in range(4):
        resp = get_with(demo.port, "/app/account", session)
        seen[resp.header("X-Server")] = resp.status
    other = "app2" if server == "app1" else "app1"
    assert seen == {server: 200, other: 401}


def test_large_download_through_the_switch(demo: Demo) -> None:
    n = 4 * 1024 * 1024
    with connect(demo.port) as s:
        s.sendall(b"GET /files/4MiB.bin HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        status, headers, body = read_response(s, timeout=30)
    assert status == 200 and headers["x-server"] in ("files1", "files2")
    assert headers["content-type"] == "application/octet-stream" and int(headers["content-length"]) == n
    assert body == pattern_bytes(n)
    status, headers, body = fetch(demo.port, "/files/")
    assert status == 200 and b'href="/files/4MiB.bin"' in body and headers["x-server"].startswith("files")




def test_the_demo_has_a_monitor_and_metrics(demo: Demo) -> None:
    """`make run` shows the monitor too: a user "demo" with a password printed in the banner."""
    from test_monitor import Client

    obs = demo.switch.observers
    text = banner(demo)
    assert f"http://127.0.0.1:{obs.monitor.port}/  (user demo, password {demo.monitor_password})" in text
    c = Client(obs.monitor.port)
    assert c.login("demo", demo.monitor_password) == 303
    assert c.state()["role"] == "admin"
    status, _, body = Client(obs.metrics.port).request("GET", "/metrics")
    assert status == 200 and b"l7switch_server_requests_total" in body
