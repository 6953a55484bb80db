"""Monitor logins: sessions with a CSRF token each, and the brake on guessing passwords.

Pure (a clock is passed in; no sockets). A session is a random 256-bit token in an HttpOnly,
Secure, SameSite=Strict cookie; it ends after ``timeout`` unused, at logout, or when the table
is full and it is the least recently used. Each session has its own CSRF token, which the page
sends back in a header on every state-changing request (OWASP's synchroniser token pattern).

Failed logins: after ``FREE_FAILURES`` failures from a client address, or for a user name, each
further attempt waits ``2 ** (failures - FREE_FAILURES)`` seconds before its password is even
checked, up to ``MAX_DELAY``; attempts already waiting count as failures, so firing many at once
gains nothing, and a client may have only one attempt waiting (the others get 429). Quiet for
``FORGET_AFTER`` and the count starts again. Both tables are bounded LRUs.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from ..config.users import User

MAX_SESSIONS = 10_000
FREE_FAILURES = 3  # a typo or two costs nothing
MAX_DELAY = 30.0  # seconds; the longest an attempt is held
FORGET_AFTER = 15 * 60.0  # seconds of no failure before the count starts again
MAX_TRACKED = 10_000  # client addresses and user names remembered


class Session:
    __slots__ = ("token", "user", "role", "csrf", "expires")

    def __init__(self, user: User, expires: float) -> None:
        self.token = secrets.token_urlsafe(32)
        self.user = user.name
        self.role = user.role
        self.csrf = secrets.token_urlsafe(32)
        self.expires = expires

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def __repr__(self) -> str:
        return f"<Session {self.user} ({self.role})>"


class Sessions:
    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: User) -> Session:
        s = Session(user, self.clock() + self.timeout)
        self._by_token[s.token] = s
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return s

    def get(self, token: str | None) -> Session | None:
        """The live session for a cookie's token (its idle time starts again), or None."""
        if not token:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        now = self.clock()
        if now > s.expires:
            del self._by_token[token]
            return None
        s.expires = now + self.timeout
        self._by_token.move_to_end(token)
        return s

    def end(self, token: str) -> None:
        self._by_token.pop(token, None)

    def end_user(self, name: str) -> int:
        """Every session of ``name`` (removed from the users file, or its role changed)."""
        gone = [t for t, s in self._by_token.items() if s.user == name]
        for t in gone:
            del self._by_token[t]
        return len(gone)

    def __len__(self) -> int:
        return len(self._by_token)


class _Count:
    __slots__ = ("failures", "waiting", "last")

    def __init__(self) -> None:
        self.failures = 0
        self.waiting = 0
        self.last = 0.0


class LoginThrottle:
    """Failed-login counts per client address and per user name, and the delay they earn."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_delay: float = MAX_DELAY) -> None:
        self.clock = clock
        self.max_delay = max_delay
        self._counts: OrderedDict[str, _Count] = OrderedDict()

    def _get(self, key: str) -> _Count:
        c = self._counts.get(key)
        now = self.clock()
        if c is None or (not c.waiting and now - c.last > FORGET_AFTER):
            c = self._counts[key] = _Count()
            while len(self._counts) > MAX_TRACKED:
                self._counts.popitem(last=False)
        self._counts.move_to_end(key)
        return c

    def _delay(self, n: int) -> float:
        return 0.0 if n < FREE_FAILURES else min(self.max_delay, 2.0 ** (n - FREE_FAILURES))

    def begin(self, client: str, user: str) -> float | None:
        """An attempt arrives: how long it must wait before its password is checked, or None
        when this client already has one waiting (answer 429). Pair with ``end``."""
        c, u = self._get("client " + client), self._get("user " + user)
        delay = max(self._delay(c.failures + c.waiting), self._delay(u.failures + u.waiting))
        if delay and c.waiting:
            return None
        c.waiting += 1
        u.waiting += 1
        return delay

    def end(self, client: str, user: str, ok: bool) -> int:
        """The attempt's outcome; a success clears the client's and the user's counts. Returns
        the client's failures so far (for the log line)."""
        now = self.clock()
        c, u = self._get("client " + client), self._get("user " + user)
        c.waiting = max(0, c.waiting - 1)
        u.waiting = max(0, u.waiting - 1)
        if ok:
            c.failures = u.failures = 0
        else:
            c.failures += 1
            u.failures += 1
        c.last = u.last = now
        return c.failures

    def failures(self, client: str) -> int:
        c = self._counts.get("client " + client)
        return c.failures if c is not None else 0
