"""The demo's dynamic origins (devtools/demoapps.py) called directly: a request in, a response out.

Through the switch they are covered by tests/sockets/test_demo.py; here each refusal is pinned
down, since the load tests count on a wrong request being answered with an error."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from l7switch.devtools.demoapps import (FILE_SIZES, SESSION_COOKIE, app_handler, file_body, files_handler,
                                        form_script, read_form)
from l7switch.devtools.origin import OriginRequest, OriginResponse, pattern_bytes

FORM_TYPE = ("Content-Type", "application/x-www-form-urlencoded")


def request(method: str, url: str, body: bytes = b"",
            headers: list[tuple[str, str]] | None = None) -> OriginRequest:
    return OriginRequest(method, url, headers or [], body, ("127.0.0.1", 40000))


def post(url: str, fields: dict[str, str] | str, *extra: tuple[str, str]) -> OriginRequest:
    body = fields if isinstance(fields, str) else urlencode(fields)
    return request("POST", url, body.encode(), [FORM_TYPE, *extra])


def answer(resp: object) -> OriginResponse:
    assert isinstance(resp, OriginResponse)  # the demo's handlers are all synchronous
    return resp


def header(resp: OriginResponse, name: str) -> str:
    return next(v for n, v in resp.headers if n.lower() == name.lower())


def test_form_echoes_what_was_posted() -> None:
    fields = {"name": "Ada & Bob", "message": "Grüße = 1+1"}
    resp = form_script("cgi1", post("/cgi-bin/form", fields))
    assert resp.status == 200 and header(resp, "Content-Type").startswith("text/plain")
    assert resp.body is not None
    assert resp.body.decode().splitlines() == [
        "Thank you, Ada & Bob: cgi1 received your form.", "name: Ada & Bob", "message: Grüße = 1+1"]


def test_form_get_shows_the_form() -> None:
    resp = form_script("cgi1", request("GET", "/cgi-bin/form"))
    assert resp.status == 200 and header(resp, "Content-Type").startswith("text/html")
    assert resp.body is not None and b'action="/cgi-bin/form"' in resp.body and b'name="message"' in resp.body
    assert form_script("cgi1", request("PUT", "/cgi-bin/form")).status == 405


@pytest.mark.parametrize(("body", "why"), [
    ("name=a", "missing field 'message'"),
    ("", "missing field 'name'"),
    ("name=a&message=b&extra=c", "unknown field 'extra'"),
    ("name=a&name=b&message=c", "field 'name' given twice"),
    ("name=&message=b", "field 'name' must be one line"),
    ("name=a&message=" + "x" * 1001, "field 'message' must be one line"),
    ("name=a%0Ab&message=c", "field 'name' must be one line"),
    ("name=a&message", "unreadable form"),
    ("name=%FF&message=b", "unreadable form"),
])
def test_form_refuses_a_wrong_or_missing_field(body: str, why: str) -> None:
    resp = form_script("cgi1", post("/cgi-bin/form", body))
    assert resp.status == 400 and resp.body is not None and why in resp.body.decode()


def test_form_needs_a_urlencoded_body() -> None:
    req = request("POST", "/cgi-bin/form", b'{"name": "a"}', [("Content-Type", "application/json")])
    assert form_script("cgi1", req).status == 415
    with_charset = ("content-type", "application/x-www-form-urlencoded; charset=utf-8")
    assert read_form(request("POST", "/x", b"user=a", [with_charset]), {"user": 10}) == {"user": "a"}


def test_app_session_lives_on_the_server_that_made_it() -> None:
    app1, app2 = app_handler("app1"), app_handler("app2")
    login = answer(app1(post("/app/login", {"user": "ada"})))
    assert login.status == 200 and header(login, "Content-Type").startswith("text/html")
    cookie = header(login, "Set-Cookie")
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "Path=/app/" in cookie and "HttpOnly" in cookie
    jar = ("Cookie", "SRVID=whatever; " + cookie.split(";")[0])
    account = answer(app1(request("GET", "/app/account", headers=[jar])))
    assert account.status == 200 and header(account, "Content-Type") == "application/json"
    assert account.body is not None and json.loads(account.body) == {"user": "ada", "server": "app1"}
    home = answer(app1(request("GET", "/app/", headers=[jar])))
    assert home.body is not None and b"Hello ada." in home.body
    # The other server never saw this session: exactly why the pool needs persistence.
    other = answer(app2(request("GET", "/app/account", headers=[jar])))
    assert other.status == 401 and other.body is not None and json.loads(other.body)["server"] == "app2"
    assert answer(app1(request("GET", "/app/account"))).status == 401


def test_app_logout_ends_the_session() -> None:
    app1 = app_handler("app1")
    cookie = header(answer(app1(post("/app/login", {"user": "ada"}))), "Set-Cookie").split(";")[0]
    out = answer(app1(request("POST", "/app/logout", headers=[("Cookie", cookie)])))
    assert out.status == 200 and "Max-Age=0" in header(out, "Set-Cookie")
    assert answer(app1(request("GET", "/app/account", headers=[("Cookie", cookie)]))).status == 401


@pytest.mark.parametrize(("req", "status"), [
    (post("/app/login", {"user": "has space"}), 400),
    (post("/app/login", {"user": "a", "password": "x"}), 400),
    (request("GET", "/app/login"), 405),
    (request("GET", "/app/logout"), 405),
    (request("GET", "/app/nothing"), 404),
])
def test_app_refusals(req: OriginRequest, status: int) -> None:
    assert answer(app_handler("app1")(req)).status == status


def test_app_forgets_its_oldest_sessions_beyond_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from l7switch.devtools import demoapps

    monkeypatch.setattr(demoapps, "MAX_SESSIONS", 2)
    app1 = app_handler("app1")
    cookies = [header(answer(app1(post("/app/login", {"user": f"u{i}"}))), "Set-Cookie").split(";")[0]
               for i in range(3)]
    states = [answer(app1(request("GET", "/app/account", headers=[("Cookie", c)]))).status for c in cookies]
    assert states == [401, 200, 200]


def test_files_are_pattern_bytes_of_the_named_size() -> None:
    files = files_handler("files1")
    resp = answer(files(request("GET", "/files/1MiB.bin")))
    assert resp.status == 200 and header(resp, "Content-Type") == "application/octet-stream"
    assert resp.body == pattern_bytes(1024 * 1024)
    assert 'filename="1MiB.bin"' in header(resp, "Content-Disposition")
    assert answer(files(request("GET", "/files/100.bin"))).body == pattern_bytes(100)
    assert file_body(4 * 1024 * 1024) is file_body(4 * 1024 * 1024)  # built once, then kept
    listing = answer(files(request("GET", "/files/")))
    assert listing.body is not None
    assert all(f'href="/files/{s}.bin"'.encode() in listing.body for s in FILE_SIZES)


@pytest.mark.parametrize("path", ["/files/1MiB.txt", "/files/lots.bin", "/files/1.5MiB.bin",
                                  "/files/65MiB.bin", "/files/-1.bin"])
def test_files_refuse_what_is_not_a_file(path: str) -> None:
    assert answer(files_handler("files1")(request("GET", path))).status == 404
