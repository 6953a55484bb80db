"""The demo end to end: rules/demo.yaml, five embedded origins and the switch, all on port 0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kit import LoopThread, check_png, connect, read_response, recv_until_close

from l7switch.devtools.demo import DEMO_CONFIG, GIF_1X1, Demo, banner, make_png, start_demo


@pytest.fixture(scope="module")
def demo(lt: LoopThread) -> Iterator[Demo]:
    d = lt.run(start_demo(DEMO_CONFIG, ephemeral=True))
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
    for line in (f"{base}/", f"{base}/images/logo.png", f"{base}/cgi-bin/hello",
                 f"l7switch explain rules/demo.yaml {base}/images/logo.png"):
        assert line in text


