"""The monitor: login, the live page, its JSON API and the admin actions.

Everything it shows comes from one command, ``internal stats`` (runtime/admin.py: the switch's
pools, servers and listeners; with workers the master adds up every worker's), sampled once a
second into ``History``; every action it takes is an ``l7switch ctl`` command through the same
``run`` (drain, enable, disable, set weight), so the monitor can do nothing ctl cannot and
logs what it does the same way.

Routes: ``GET /login`` and ``POST /login`` (form), ``POST /logout``, ``GET /`` (the page),
``GET /static/NAME`` (files of the package, by name from a fixed list), ``GET /api/state``,
``GET /api/charts``, ``POST /api/action`` (JSON; admins only; the session's CSRF token in
``X-CSRF-Token``). Anything else is 404.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import os
import secrets
import string
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from ..config.users import MAX_PASSWORD, User, hash_password, load_users, verify_password
from ..errors import AdminError
from ..net.tls import server_context
from ..spec import MonitorSpec
from .history import History
from .sessions import LoginThrottle, Session, Sessions
from .web import HttpServer, Request, Response, Source

log = logging.getLogger("l7switch")

SAMPLE_INTERVAL = 1.0  # seconds between snapshots (the page refreshes as often)
SESSION_COOKIE = "l7s_session"
LOGIN_COOKIE = "l7s_login"  # the login form's own CSRF token (a login is a state change too)
VERIFY_AT_ONCE = 2  # scrypt checks running together (each ~50 ms of a core and 16 MiB)
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
ACTIONS = ("drain", "enable", "disable", "weight")


def _load_static() -> dict[str, bytes]:
    files = resources.files(__package__).joinpath("static")
    return {f.name: f.read_bytes() for f in files.iterdir() if f.is_file()}


STATIC = _load_static()  # read once: a request can only ever name one of these


class Monitor:
    def __init__(self, spec: MonitorSpec, source: Source, header_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.source = source
        self.header_timeout = header_timeout
        self.sessions = Sessions(spec.session_timeout, clock)
        self.throttle = LoginThrottle(clock)
        self.history = History()
        self.server: HttpServer | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._verify = asyncio.Semaphore(VERIFY_AT_ONCE)
        self._users: dict[str, User] = {}
        self._users_stamp: tuple[float, int] | None = None
        # Checked against when the user does not exist, so a wrong name costs what a wrong
        # password costs (no user enumeration by timing).
        self._decoy = hash_password(secrets.token_urlsafe(16))
        self._sample_failed = False

    # ---- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        spec = self.spec
        ctx = server_context(spec.tls) if spec.tls is not None else None
        self.server = HttpServer(self.handle, spec.host, spec.port, ctx, self.header_timeout, "monitor")
        await self.server.start()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())
        scheme = "http" if ctx is None else "https"
        log.info("monitor on %s://%s/%s", scheme, self.server.address,
                 " (insecure: plain HTTP)" if ctx is None else "")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def reconfigure(self, spec: MonitorSpec, header_timeout: float) -> None:
        """A reload that keeps the monitor where it is: its new settings (session lifetime, the
        users file, the header timeout) apply from now on."""
        self.spec = spec
        self.sessions.timeout = spec.session_timeout
        self.header_timeout = header_timeout
        if self.server is not None:
            self.server.header_timeout = header_timeout
        self._users_stamp = None  # read the users file again (it may be another one)

    def adopt(self, old: Monitor) -> None:
        """A reload moved the monitor (address or TLS): what the old one knew goes on here."""
        self.sessions, self.throttle, self.history = old.sessions, old.throttle, old.history
        self.sessions.timeout = self.spec.session_timeout


    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else 0

    async def sample(self) -> None:
        stats = await self.source.run(["internal", "stats"])
        self.history.add(time.time(), stats)

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
                self._sample_failed = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a worker being replaced, say: try again next second
                if not self._sample_failed:
                    log.warning("monitor: cannot read the switch's state: %s", exc)
                self._sample_failed = True
            await asyncio.sleep(SAMPLE_INTERVAL)

    # ---- users -----------------------------------------------------------------------------------
    def _user(self, name: str) -> User | None:
        """From the users file, read again whenever it changed (l7switch passwd needs no reload)."""
        try:
            st = os.stat(self.spec.users)
            stamp = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._users_stamp:
            users, problems = load_users(self.spec.users)
            for p in problems:
                log.warning("monitor users: %s", p)
            for gone in set(self._users) - set(users):
                self.sessions.end_user(gone)
            for kept, u in users.items():
                if kept in self._users and self._users[kept].role != u.role:
                    self.sessions.end_user(kept)  # a new role starts with a new login
            self._users, self._users_stamp = users, stamp
        return self._users.get(name)

    # ---- requests --------------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response:
        path, method = req.path, req.method
        if path == "/login":
            if method == "GET":
                return self._login_page(req)
            if method == "POST":
                return await self._login(req)
            return _method_not_allowed("GET, POST")
        if path == "/favicon.ico":
            return _redirect("/static/favicon.svg")
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            body = STATIC.get(name)
            if body is None or method != "GET" or name.endswith(".html"):
                return Response(404, b"not found\n")
            return Response(200, body, STATIC_TYPES.get(os.path.splitext(name)[1], "application/octet-stream"))
        session = self.sessions.get(req.cookie(SESSION_COOKIE))
        if path == "/":
            if method != "GET":
                return _method_not_allowed("GET")
            if session is None:
                return _redirect("/login")
            return self._app_page(session)
        if path == "/logout":
            if method != "POST":
                return _method_not_allowed("POST")
            if session is not None:
                form = _form(req) or {}
                if not self._csrf_ok(session, req, form.get("csrf")):
                    return Response(403, b"missing or wrong CSRF token\n")
                self.sessions.end(session.token)
                log.info("monitor: %s logged out", session.user)
            return _redirect("/login", [("Set-Cookie", self._cookie(SESSION_COOKIE, "", 0, "/"))])
        if path.startswith("/api/"):
            if session is None:
                return _json(401, {"error": "not logged in"})
            if path == "/api/state" and method == "GET":
                return _json(200, self._state(session))
            if path == "/api/charts" and method == "GET":
                return _json(200, {"charts": self.history.charts(), "interval": SAMPLE_INTERVAL})
            if path == "/api/action":
                if method != "POST":
                    return _method_not_allowed("POST")
                return await self._action(session, req)
        return Response(404, b"not found\n")

    def _state(self, session: Session) -> dict[str, Any]:
        return {"user": session.user, "role": session.role, "time": time.time(),
                "stats": self.history.last, "recent": self.history.recent()}

    def _csrf_ok(self, session: Session, req: Request, form_token: str | None = None) -> bool:
        token = req.headers.get("x-csrf-token") or form_token or ""
        return hmac.compare_digest(token.encode(), session.csrf.encode())

    async def _action(self, session: Session, req: Request) -> Response:
        if not self._csrf_ok(session, req):
            return _json(403, {"error": "missing or wrong CSRF token"})
        if not session.admin:
            return _json(403, {"error": f"{session.user} is a viewer: actions need the admin role"})
        if not req.headers.get("content-type", "").startswith("application/json"):
            return _json(400, {"error": "expected Content-Type: application/json"})
        try:
            body = json.loads(req.body)
            action, target = body["action"], body["server"]
            if action not in ACTIONS or not isinstance(target, str) or "/" not in target:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return _json(400, {"error": 'expected {"action": drain|enable|disable|weight, '
                                        '"server": "POOL/SERVER", "weight": "N" or "N%"}'})
        if action == "weight":
            value = str(body.get("weight", ""))
            words = ["set", "weight", target, value]
        else:
            words = [action, target]
        try:
            result = await self.source.run(words)
        except AdminError as exc:
            return _json(400, {"error": str(exc)})
        log.info("monitor: %s: %s", session.user, " ".join(words))
        try:
            await self.sample()  # the next refresh shows the change
        except Exception:  # (the action is done; the picture follows a second later)
            pass
        return _json(200, {"ok": True, "result": result})

    # ---- login -----------------------------------------------------------------------------------
    def _login_page(self, req: Request, error: str = "", status: int = 200) -> Response:
        if not error and self.sessions.get(req.cookie(SESSION_COOKIE)) is not None:
            return _redirect("/")
        token = secrets.token_urlsafe(24)
        page = _page("login.html", csrf=token, error=html.escape(error),
                     error_class="error" if error else "hidden")
        return Response(status, page, STATIC_TYPES[".html"],
                        [("Set-Cookie", self._cookie(LOGIN_COOKIE, token, 600, "/login"))])

    async def _login(self, req: Request) -> Response:
        if not req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return Response(400, b"expected a form (application/x-www-form-urlencoded)\n")
        form = _form(req)
        if form is None:
            return Response(400, b"the form cannot be read\n")
        missing = [f for f in ("user", "password", "csrf") if not form.get(f)]
        if missing:
            return Response(400, f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}\n".encode())
        name, password = form["user"], form["password"]
        if len(password) > MAX_PASSWORD or len(name) > 64:
            return Response(400, b"user name or password too long\n")
        pre = req.cookie(LOGIN_COOKIE) or ""
        if not hmac.compare_digest(pre.encode(), form["csrf"].encode()):
            return Response(403, b"the login form expired or came from elsewhere: load /login again\n")
        delay = self.throttle.begin(req.client, name)
        if delay is None:
            return Response(429, b"too many failed logins: wait\n", headers=[("Retry-After", "30")])
        ok = False
        try:
            if delay:
                await asyncio.sleep(delay)
            user = self._user(name)
            async with self._verify:
                ok = await asyncio.to_thread(verify_password, password, user.hash if user else self._decoy)
            ok = ok and user is not None
        finally:
            failures = self.throttle.end(req.client, name, ok)
        if not ok or user is None:
            log.warning("monitor: failed login for %r from %s (%d in a row from this address%s)", name,
                        req.client, failures, f"; this one held {delay:g}s" if delay else "")
            return self._login_page(req, "Wrong user name or password.", 401)
        session = self.sessions.create(user)
        log.info("monitor: %s (%s) logged in from %s", user.name, user.role, req.client)
        return _redirect("/", [("Set-Cookie", self._cookie(SESSION_COOKIE, session.token,
                                                           int(self.spec.session_timeout), "/")),
                               ("Set-Cookie", self._cookie(LOGIN_COOKIE, "", 0, "/login"))])

    def _cookie(self, name: str, value: str, max_age: int, path: str) -> str:
        secure = "" if self.spec.tls is None else "; Secure"
        return f"{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"

    def _app_page(self, session: Session) -> Response:
        return Response(200, _page("index.html", csrf=session.csrf, user=html.escape(session.user),
                                   role=session.role), STATIC_TYPES[".html"])


def _page(name: str, **values: str) -> bytes:
    return string.Template(STATIC[name].decode("utf-8")).safe_substitute(values).encode("utf-8")


def _form(req: Request) -> dict[str, str] | None:
    try:
        fields = parse_qs(req.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items()}


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value).encode(), "application/json")


def _redirect(to: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(303, b"", headers=[("Location", to), *(headers or [])])


def _method_not_allowed(allow: str) -> Response:
    return Response(405, b"method not allowed\n", headers=[("Allow", allow)])
