"""Every exception l7switch raises on purpose, in one place.

Each HTTP-facing error knows the status it becomes (h11's ``error_status_hint``), so the frontend
turns any of them into a response with one handler. Configuration problems are a different kind
of error: they carry a list of located issues and never reach a client.
"""

from __future__ import annotations

from dataclasses import dataclass


class L7Error(Exception):
    """Base class; ``status`` is what a client is told, ``close`` whether framing is in doubt.

    ``detail`` always goes to the log. The client sees it only when ``public``: for faults in
    its own request (what to fix); what failed behind the switch (a server's name, address or
    errno) stays in the log, under the request id the client is given.
    """

    status = 500
    reason = "Internal Server Error"
    close = True
    public = False

    def __init__(self, detail: str = "", retry_after: int | None = None) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason
        #: Seconds for a Retry-After field (RFC 9110 §10.2.3), e.g. on a 503 from a full queue.
        self.retry_after = retry_after


# ---- client side (the request was bad) -------------------------------------------------------

class BadRequest(L7Error):
    status, reason = 400, "Bad Request"
    public = True


class RequestTimeout(L7Error):
    status, reason = 408, "Request Timeout"
    public = True


class PayloadTooLarge(L7Error):
    status, reason = 413, "Payload Too Large"
    public = True


class HeadersTooLarge(L7Error):
    status, reason = 431, "Request Header Fields Too Large"
    public = True


class TooManyRequests(L7Error):
    """Over the client's request rate (``limits.per_client``; RFC 6585 §4), with Retry-After.
    The request was read in full, so the connection stays open (framing is sound)."""

    status, reason = 429, "Too Many Requests"
    close = False
    public = True


# ---- server side (a real server failed us) -----------------------------------------------------

class BadGateway(L7Error):
    """The server reset, closed, or sent garbage before a complete response head."""

    status, reason = 502, "Bad Gateway"
    close = False


class ServiceUnavailable(L7Error):
    """No server could take the request: none up, or the connection was refused."""

    status, reason = 503, "Service Unavailable"
    close = False


class OutOfDescriptors(ServiceUnavailable):
    """No fd for the server connection: this process (EMFILE) or host (ENFILE) is out of them.
    The server is not at fault — the failure is neither counted against it nor retried on
    another server (which would fail alike) — and the log line is rate-limited."""


class GatewayTimeout(L7Error):
    """Connect or response-head deadline passed (``timeouts.connect`` / ``timeouts.server``)."""

    status, reason = 504, "Gateway Timeout"
    close = False


# ---- operations ---------------------------------------------------------------------------------

class AdminError(Exception):
    """An admin command (``l7switch ctl``, a monitor action) that cannot be done: the message says
    why and what was probably meant. ``ctl`` prints it and exits 1; the monitor answers 400."""

    status = 400


# ---- configuration ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int  # 1-based, as editors count
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigError(Exception):
    """A rule file that cannot be used; ``issues`` lists every problem found in one pass."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
