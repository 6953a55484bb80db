"""The demo's dynamic origins: a CGI form, a log-in application, and large downloads.

Each gives a load test (loadtests/) something it can check rather than just time:

* the form (``/cgi-bin/form``) answers a POST with exactly what was posted, and a wrong or
  missing field with 400, so a request that reached the wrong pool or lost its body fails;
* the application (``/app/``) keeps its sessions in the memory of the server that created
  them, as many real applications do: a logged-in user only works while every request reaches
  that one server, which is what the pool's cookie persistence is for;
* downloads (``/files/4MiB.bin``) are deterministic bytes (``pattern_bytes``), so a client can
  verify every byte of a large body without the server sending a checksum.
"""

from __future__ import annotations

import functools
import html
import json
import re
import secrets
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable

from ..units import parse_size
from .origin import MAX_BYTES, Handler, OriginRequest, OriginResponse, pattern_bytes, standard_handler

FORM_FIELDS = {"name": 100, "message": 1000}  # field -> longest value accepted
SESSION_COOKIE = "app_session"
MAX_SESSIONS = 10_000  # per server: a long load test must not grow memory without bound
FILE_SIZES = ("1MiB", "2MiB", "4MiB")  # what /files/ lists; any size up to MAX_BYTES is served
_USER = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CACHED_FILE = 4 * 1024 * 1024  # keep bodies up to this size; build larger ones per request

_HTML = "text/html; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


def _answer(status: int, ctype: str, body: str, *extra: tuple[str, str]) -> OriginResponse:
    # Everything here depends on the request or on a session: tell caches not to keep it.
    return OriginResponse(status, [("Content-Type", ctype), ("Cache-Control", "no-store"), *extra],
                          body.encode())


def _header(req: OriginRequest, name: str) -> str:
    lname = name.lower()
    return next((v for n, v in req.headers if n.lower() == lname), "")


def _cookie(req: OriginRequest, name: str) -> str:
    for n, v in req.headers:
        if n.lower() == "cookie":
            for pair in v.split(";"):
                key, _, value = pair.strip().partition("=")
                if key == name:
                    return value
    return ""


def read_form(req: OriginRequest, fields: dict[str, int]) -> dict[str, str] | str:
    """The posted form's fields, or why it is refused (answered 400 or 415 by the caller).

    Exactly ``fields`` must be present, once each, non-empty, one line, at most their length.
    """
    ctype = _header(req, "Content-Type").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return f"expected Content-Type application/x-www-form-urlencoded, got {ctype or 'none'}"
    try:
        pairs = urllib.parse.parse_qsl(req.body.decode("utf-8"), keep_blank_values=True,
                                       strict_parsing=bool(req.body), max_num_fields=len(fields) + 4,
                                       errors="strict")
    except (UnicodeDecodeError, ValueError) as e:
        return f"unreadable form: {e}"
    form: dict[str, str] = {}
    for key, value in pairs:
        if key not in fields:
            return f"unknown field {key!r}"
        if key in form:
            return f"field {key!r} given twice"
        if not value.strip() or len(value) > fields[key] or any(c in value for c in "\r\n\0"):
            return f"field {key!r} must be one line of 1 to {fields[key]} characters"
        form[key] = value
    missing = [f for f in fields if f not in form]
    return f"missing field {missing[0]!r}" if missing else form


def _refuse(name: str, why: str) -> OriginResponse:
    status = 415 if why.startswith("expected Content-Type") else 400
    return _answer(status, _TEXT, f"{name}: {why}\n")


def _not_allowed(allow: str) -> OriginResponse:
    return _answer(405, _TEXT, f"method not allowed; use {allow}\n", ("Allow", allow))


# ---- the CGI form -------------------------------------------------------------------------

FORM_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>guest book — {who}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>Guest book</h1><p>Served by <b>{who}</b> (cgi pool). The answer echoes what you send.</p>
<form method="post" action="/cgi-bin/form">
<p><label>name <input name="name" maxlength="100" required></label></p>
<p><label>message <input name="message" maxlength="1000" size="50" required></label></p>
<p><button>send</button></p></form></body></html>
"""


def form_script(name: str, req: OriginRequest) -> OriginResponse:
    """``/cgi-bin/form``: GET shows the form, POST echoes its fields as text."""
    if req.method in ("GET", "HEAD"):
        return _answer(200, _HTML, FORM_PAGE.format(who=html.escape(name)))
    if req.method != "POST":
        return _not_allowed("GET, POST")
    form = read_form(req, FORM_FIELDS)
    if isinstance(form, str):
        return _refuse(name, form)
    lines = [f"Thank you, {form['name']}: {name} received your form."]
    lines += [f"{key}: {form[key]}" for key in FORM_FIELDS]
    return _answer(200, _TEXT, "\n".join(lines) + "\n")


# ---- the log-in application ---------------------------------------------------------------

def app_handler(name: str) -> Handler:
    """``/app/``: log in with POST /app/login (user=NAME), then GET /app/account.

    Sessions are a dict in this server's memory: another server of the pool does not know
    them and answers 401, so a broken persistence shows up as failed requests.
    """
    fallback = standard_handler(name)
    sessions: OrderedDict[str, str] = OrderedDict()  # token -> user, oldest first
    who = html.escape(name)

    def page(title: str, body: str) -> str:
        return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title} — {who}</title>'
                f'</head>\n<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">'
                f"\n<h1>{title}</h1>\n{body}\n<p><small>served by {who} (app pool)</small></p>"
                "</body></html>\n")

    login_form = ('<form method="post" action="/app/login"><label>user <input name="user" '
                  'pattern="[A-Za-z0-9._\\-]{1,64}" required></label> <button>log in</button></form>')

    def handler(req: OriginRequest) -> OriginResponse | Awaitable[OriginResponse]:
        path = req.path
        user = sessions.get(_cookie(req, SESSION_COOKIE))
        if path == "/app/login":
            if req.method != "POST":
                return _not_allowed("POST")
            form = read_form(req, {"user": 64})
            if isinstance(form, str):
                return _refuse(name, form)
            if not _USER.fullmatch(form["user"]):
                return _refuse(name, "user: 1 to 64 letters, digits, '.', '_' or '-'")
            token = secrets.token_urlsafe(16)
            sessions[token] = form["user"]
            if len(sessions) > MAX_SESSIONS:
                sessions.popitem(last=False)
            body = (f"<p>Welcome, {html.escape(form['user'])}. Your session lives on {who}; the "
                    'switch\'s SRVID cookie keeps you there.</p><p><a href="/app/account">'
                    "your account</a> (JSON)</p>")
            return _answer(200, _HTML, page("Logged in", body), ("Set-Cookie",
                           f"{SESSION_COOKIE}={token}; Path=/app/; HttpOnly; SameSite=Lax"))
        if path == "/app/account":
            if user is None:
                return _answer(401, _JSON, json.dumps({"error": "not logged in", "server": name}))
            return _answer(200, _JSON, json.dumps({"user": user, "server": name}))
        if path == "/app/logout":
            if req.method != "POST":
                return _not_allowed("POST")
            sessions.pop(_cookie(req, SESSION_COOKIE), None)
            return _answer(200, _HTML, page("Logged out", login_form), ("Set-Cookie",
                           f"{SESSION_COOKIE}=; Path=/app/; Max-Age=0; HttpOnly; SameSite=Lax"))
        if path in ("/app/", "/app/index.html"):
            if user is None:
                return _answer(200, _HTML, page("Application", login_form))
            body = (f"<p>Hello {html.escape(user)}.</p><form method=\"post\" action=\"/app/logout\">"
                    "<button>log out</button></form>")
            return _answer(200, _HTML, page("Application", body))
        if path.startswith("/app/"):
            return _answer(404, _TEXT, f"{name}: no such page {path}\n")
        return fallback(req)

    return handler


# ---- large downloads ----------------------------------------------------------------------

@functools.lru_cache(maxsize=len(FILE_SIZES))
def _cached_body(n: int) -> bytes:
    return pattern_bytes(n)


def file_body(n: int) -> bytes:
    """The body of ``/files/<n bytes>.bin``: ``pattern_bytes(n)``, kept for the usual sizes."""
    return _cached_body(n) if n <= _CACHED_FILE else pattern_bytes(n)


def files_handler(name: str) -> Handler:
    """``/files/SIZE.bin`` (SIZE as in a rule file: 1MiB, 512KiB ...) and a listing at /files/."""
    fallback = standard_handler(name)
    links = "".join(f'<li><a href="/files/{s}.bin">{s}.bin</a></li>' for s in FILE_SIZES)
    listing = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>files — {html.escape(name)}'
               f"</title></head><body><h1>Downloads</h1><ul>{links}</ul></body></html>\n")

    def handler(req: OriginRequest) -> OriginResponse | Awaitable[OriginResponse]:
        path = req.path
        if path == "/files/":
            return OriginResponse(200, [("Content-Type", _HTML)], listing.encode())
        if not path.startswith("/files/"):
            return fallback(req)
        size = path[len("/files/"):].removesuffix(".bin")
        try:
            n = parse_size(size) if path.endswith(".bin") else -1
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BYTES:
            return OriginResponse(404, [("Content-Type", _TEXT)], f"{name}: no such file {path}\n".encode())
        # Static content: cacheable, and named for a browser's save dialog.
        return OriginResponse(200, [("Content-Type", "application/octet-stream"),
                                    ("Content-Disposition", f'attachment; filename="{size}.bin"'),
                                    ("Cache-Control", "public, max-age=3600")], file_body(n))

    return handler
