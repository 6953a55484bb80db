"""How fast a request body arrives: ``BodyPace``, looked at by the deadline clock.

Two limits on a client sending a body, both judged on the bytes it has delivered (read by
Python or moved by splice, which Python never sees byte by byte):

- ``timeouts.client`` is the longest silence (nginx ``client_body_timeout``): no new byte for
  that long -> 408.
- ``limits.min_body_rate`` (bytes/s) is the slowest pace tolerated once ``GRACE`` seconds have
  passed since the end of the head, measured over the last ``WINDOW`` seconds. This is Apache
  mod_reqtimeout's ``RequestReadTimeout body=20,MinRate=500`` in spirit: its default gives a
  body 20 s, then one more second per 500 bytes received; a sliding window instead of a
  growing budget means a client cannot bank speed early to trickle later, and a burst after a
  pause is judged on the last WINDOW seconds only. A 1 byte/s upload (the slow-POST attack, OWASP
  "R-U-Dead-Yet") is cut after GRACE; a legitimate upload on a slow link (500 B/s is 4 kbit/s)
  is not.

The pace is looked at every ``STEP`` seconds (not per read: the read path stays one byte
count, which ``RequestBody`` keeps anyway), so a body costs one clock visit per second.
"""

from __future__ import annotations

from collections import deque

#: Seconds after the end of the head before the rate is judged (the issue's "say 10 s, at most
#: 20 s"; Apache's body=20 is its upper bound).
GRACE = 10.0
#: The rate is over the last WINDOW seconds (or since the head, before that).
WINDOW = 10.0
#: Seconds between two looks at most; a quarter of timeouts.client if that is shorter, so a
#: silence is noticed at most ~25% late (as the clock's tick).
STEP = 1.0


class BodyPace:
    __slots__ = ("t0", "moved_at", "seen", "marks")

    def __init__(self, now: float, total: int) -> None:
        self.t0 = now  # the end of the head (or when the request's turn came)
        self.moved_at = now  # the last look that saw new bytes
        self.seen = total
        self.marks: deque[tuple[float, int]] = deque(((now, total),))

    def excuse(self, now: float, total: int) -> None:
        """We stopped reading the client (its server is not taking the body): nothing it could
        do, so the silence and the window start again from here."""
        self.moved_at = now
        self.seen = total
        self.marks.clear()
        self.marks.append((now, total))
        # Judged again only once a window (or the grace, if shorter) of its own pace has passed.
        self.t0 = max(self.t0, now - GRACE + min(GRACE, WINDOW))

    def look(self, now: float, total: int, idle: float, min_rate: int) -> str | None:
        """Record ``total`` bytes delivered by ``now``; why the body must stop, or None."""
        if total != self.seen:
            self.seen = total
            self.moved_at = now
        elif now - self.moved_at >= idle:
            return f"request body stalled: no byte for {now - self.moved_at:.1f}s"
        if not min_rate:
            return None
        marks = self.marks
        marks.append((now, total))
        # Keep the newest mark at or before the window's start as the base, drop older ones.
        start = now - WINDOW
        while len(marks) > 1 and marks[1][0] <= start:
            marks.popleft()
        if now - self.t0 < GRACE:
            return None
        t, base = marks[0]
        span = now - t
        if span <= 0:
            return None
        rate = (total - base) / span
        if rate < min_rate:
            return (f"request body too slow: {rate:.0f} B/s over the last {span:.1f}s, "
                    f"below limits.min_body_rate {min_rate} B/s")
        return None

    @staticmethod
    def step(idle: float) -> float:
        return min(STEP, idle / 4)
