"""The load tests' judgements (loadtests/loadcheck.py), without locust.

What matters is that a wrong answer is a failure: a request switched to the wrong pool, a
session that moved, a lost form field or a short download must each produce a message."""

from __future__ import annotations

import hashlib

import pytest
from loadcheck import (Want, account_problem, download_problem, file_digest, form_echo_problem, image_problem,
                       image_want, judge, page_images, pool_servers, sticky_problem)

from l7switch.devtools.demo import GALLERY, GIF_1X1, LOGO_PNG, SVG_LOGO, html_handler
from l7switch.devtools.demoapps import FILE_SIZES
from l7switch.devtools.origin import OriginRequest, OriginResponse, pattern_bytes

POOLS = {"html": frozenset({"html1", "html2"}), "images": frozenset({"images1", "images2"}),
         "app": frozenset({"app1", "app2"})}


def test_pools_come_from_the_demo_rule_file() -> None:
    pools = pool_servers()
    assert pools["html"] == POOLS["html"] and pools["app"] == POOLS["app"]
    assert set(pools) == {"html", "images", "cgi", "app", "files"}


def test_judge_passes_a_right_answer() -> None:
    assert judge(Want("html", "text/html"), 200, "text/html; charset=utf-8", "html2", POOLS) is None
    assert judge(Want("app", "text/plain", status=400), 400, "text/plain", "app1", POOLS) is None
    sticky = Want("app", "application/json", server="app1")
    assert judge(sticky, 200, "application/json", "app1", POOLS) is None


@pytest.mark.parametrize(("want", "status", "ctype", "server", "message"), [
    # A mis-route is named as one even when the wrong server answered 200 or 404.
    (Want("images", "image/png"), 200, "text/plain", "html1",
     "answered by html1, not a server of pool images (images1, images2)"),
    (Want("images", "image/png"), 404, "text/plain", "html1",
     "answered by html1, not a server of pool images"),
    (Want("html", "text/html"), 200, "text/html", "", "answered by no X-Server"),
    (Want("html", "text/html"), 503, "text/html", "html1", "status 503 from html1, expected 200"),
    (Want("html", "text/html"), 200, "text/plain", "html1", "content type 'text/plain' from html1"),
    (Want("app", "application/json", server="app1"), 401, "application/json", "app2",
     "server changed from app1 to app2"),
])
def test_judge_fails_a_wrong_answer(want: Want, status: int, ctype: str, server: str, message: str) -> None:
    problem = judge(want, status, ctype, server, POOLS)
    assert problem is not None and message in problem


def test_sticky_problem_names_both_servers() -> None:
    assert sticky_problem("app1", "app1") is None
    problem = sticky_problem("app1", "app2")
    assert problem is not None and "app1" in problem and "app2" in problem


def test_page_images_are_parsed_from_the_demo_pages() -> None:
    # The gallery as the html origin really serves it: the loader finds every picture.
    def page(path: str) -> str:
        resp = html_handler("html1")(OriginRequest("GET", path, [], b"", ("127.0.0.1", 1)))
        assert isinstance(resp, OriginResponse) and resp.body is not None
        return resp.body.decode()

    assert page_images("http://127.0.0.1:8080/gallery.html", page("/gallery.html")) == list(GALLERY)
    assert page_images("http://127.0.0.1:8080/", page("/")) == ["/images/logo.png"]


def test_page_images_resolve_relative_and_skip_other_hosts_and_repeats() -> None:
    text = ('<IMG SRC="a.png"><img src="/b.gif?v=2"><img src="a.png"><img alt="no src">'
            '<img src="https://cdn.example/c.png"><img src="http://h:8080/d/e.svg">')
    assert page_images("http://h:8080/d/page.html", text) == ["/d/a.png", "/b.gif?v=2", "/d/e.svg"]


def test_images_must_be_what_their_name_says() -> None:
    assert image_want("/images/photo-1.png") == Want("images", "image/png")
    assert image_want("/favicon.ico").ctype == "image/x-icon"
    assert image_problem("/images/a.png", LOGO_PNG) is None
    assert image_problem("/images/a.gif", GIF_1X1) is None
    assert image_problem("/images/a.svg", SVG_LOGO) is None
    problem = image_problem("/images/a.png", b"html1: /images/a.png\n")
    assert problem is not None and "not a PNG" in problem


def test_form_echo_must_repeat_every_field() -> None:
    form = {"name": "visitor 7", "message": "Grüße & thanks"}
    text = "Thank you, visitor 7: cgi1 received your form.\nname: visitor 7\nmessage: Grüße & thanks\n"
    assert form_echo_problem(form, "cgi1", text) is None
    lost = form_echo_problem(form, "cgi1", text.replace("Grüße", "Gr"))
    assert lost is not None and "message: Grüße" in lost


def test_account_must_name_user_and_server() -> None:
    assert account_problem("u1", "app1", '{"user": "u1", "server": "app1"}') is None
    for text in ('{"user": "u2", "server": "app1"}', '{"user": "u1", "server": "app2"}', "[]", "<html>"):
        assert account_problem("u1", "app1", text) is not None


def test_downloads_are_checked_by_length_and_digest() -> None:
    n, digest = file_digest("1MiB")
    assert n == 1024 * 1024 and digest == hashlib.sha256(pattern_bytes(n)).hexdigest()
    assert download_problem("1MiB", str(n), n, digest) is None
    assert "Content-Length 5" in (download_problem("1MiB", "5", n, digest) or "")
    assert "received 100 of" in (download_problem("1MiB", str(n), 100, digest) or "")
    assert "SHA-256" in (download_problem("1MiB", str(n), n, "0" * 64) or "")
    assert all(file_digest(s)[0] > 0 for s in FILE_SIZES)
