"""What a check's bytes mean, sans-IO: the HTTP check's request and its judge, the agent's line.

``probes.py`` moves the bytes and keeps time; these take bytes and return a verdict, so every
odd answer (garbage, an endless body, a line that never ends) is a pure test. Both judges keep at
most ``CHECK_BUFFER`` bytes whatever the peer sends: what is not judged within it is judged on
what was read.
"""

from __future__ import annotations

from typing import Any

import httptools

from ..balance.health import MAX_AGENT_LINE, AgentReply, parse_agent_reply
from ..spec import HttpCheckSpec

#: Bytes of a check's response that are read at all. HAProxy reads a check's response into one
#: buffer (``tune.bufsize``, 16 KiB by default; formerly ``tune.chksize``) and matches
#: ``http-check expect string`` within it; a 10 MB body costs no more than that.
CHECK_BUFFER = 16 * 1024
USER_AGENT = "l7switch-check"

#: (passed, detail): what the pool counts and what the log and snapshot show.
Verdict = tuple[bool, str]


def http_request(check: HttpCheckSpec, host: str) -> bytes:
    """The check's request: one per connection (``Connection: close``), as HAProxy's
    ``option httpchk`` sends one; ``host`` is ``check.host`` or the server's address."""
    return (f"{check.method} {check.path} HTTP/1.1\r\nHost: {check.host or host}\r\n"
            f"User-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n").encode("utf-8", "replace")


class HttpJudge:
    """Feed it what the server sends; it answers as soon as it can tell (status, then the body's
    first bytes when ``check.body`` asks for a substring), or at the end of what it will read."""

    __slots__ = ("check", "needle", "cap", "seen", "status", "head_done", "complete", "body",
                 "verdict", "_parser")

    def __init__(self, check: HttpCheckSpec, cap: int = CHECK_BUFFER) -> None:
        self.check = check
        self.needle = check.body.encode("utf-8") if check.body is not None else None
        self.cap = cap
        self.seen = 0  # bytes fed to the parser (never more than cap)
        self.status = 0
        self.head_done = False
        self.complete = False
        self.body = bytearray()  # the body's first bytes, kept only when a substring is expected
        self.verdict: Verdict | None = None
        self._parser: Any = httptools.HttpResponseParser(self)

    # ---- httptools callbacks ----------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the final response follows
        self.status = status
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if self.needle is not None and self.head_done:
            self.body += body[:self.cap - len(self.body)]

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    # ---- feeding ----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> Verdict | None:
        """The verdict once known (then the caller closes), else None: send more."""
        if self.verdict is not None:
            return self.verdict
        room = self.cap - self.seen
        chunk = data[:room]
        self.seen += len(chunk)
        try:
            self._parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            pass  # a 101: the head is complete, and that is all a check looks at
        except httptools.HttpParserError:
            return self._end((False, "invalid response"))
        verdict = self._judge(final=self.seen >= self.cap or len(data) > room)
        return self._end(verdict) if verdict is not None else None

    def eof(self) -> Verdict:
        """The server closed: judge what arrived."""
        if self.verdict is not None:
            return self.verdict
        verdict = self._judge(final=True)
        assert verdict is not None
        return self._end(verdict)

    def _judge(self, final: bool) -> Verdict | None:
        if not self.head_done:
            if not final:
                return None
            if self.seen == 0:
                return False, "closed without a response"
            if self.seen >= self.cap:
                return False, f"invalid response (no head within {self.cap // 1024} KiB)"
            return False, "invalid response"
        status = self.status
        if not any(lo <= status <= hi for lo, hi in self.check.expect):
            return False, f"status {status}"
        needle = self.needle
        if needle is None or needle in self.body:
            return True, f"L7OK {status}"
        if final or self.complete or len(self.body) >= self.cap:
            return False, "body mismatch"
        return None

    def _end(self, verdict: Verdict) -> Verdict:
        self.verdict = verdict
        self.body = bytearray()
        return verdict


class AgentLine:
    """An agent's reply: one line, at most ``MAX_AGENT_LINE`` bytes (HAProxy's agent-check reads
    one line; feedbackd-style agents write one and close)."""

    __slots__ = ("buf", "result")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.result: tuple[AgentReply | None, Verdict] | None = None

    def feed(self, data: bytes) -> tuple[AgentReply | None, Verdict] | None:
        if self.result is not None:
            return self.result
        end = data.find(b"\n")
        take = data if end < 0 else data[:end]
        self.buf += take[:MAX_AGENT_LINE + 1 - len(self.buf)]
        if len(self.buf) > MAX_AGENT_LINE:
            return self._end(None, (False, f"reply over {MAX_AGENT_LINE // 1024} KiB"))
        if end >= 0:
            return self._end(*judge_agent_line(bytes(self.buf)))
        return None

    def eof(self) -> tuple[AgentReply | None, Verdict]:
        """The agent closed: a line without its newline still counts (HAProxy's agent-check
        takes what it read at close)."""
        if self.result is not None:
            return self.result
        if not self.buf.strip():
            return self._end(None, (False, "closed without a reply"))
        return self._end(*judge_agent_line(bytes(self.buf)))

    def _end(self, reply: AgentReply | None, verdict: Verdict) -> tuple[AgentReply | None, Verdict]:
        self.result = (reply, verdict)
        self.buf = bytearray()
        return self.result


def judge_agent_line(line: bytes) -> tuple[AgentReply | None, Verdict]:
    """The parsed reply and (True, the line) — or None and why it is refused."""
    text = line.decode("latin-1").strip()
    try:
        reply = parse_agent_reply(text)
    except ValueError as exc:
        return None, (False, f"invalid reply {_clip(text)!r}: {exc}")
    return reply, (True, text)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
