"""Log lines that could come thousands of times a second, at most once per interval.

When the process runs out of descriptors (EMFILE: the per-process limit; ENFILE: the system's),
every connect and every pipe fails alike; a line per failure would bury the log and cost the
very time a loaded switch lacks. ``RateLimited`` writes the first line, counts the ones it holds
back, and says how many on the next line it writes (HAProxy and the kernel's printk_ratelimit
do the same: one line, "N messages suppressed").
"""

from __future__ import annotations

import errno
import logging
import time

#: errnos that mean "this process (or host) is out of descriptors", not "the peer failed".
FD_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE))


def fd_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FD_EXHAUSTED


class RateLimited:
    __slots__ = ("logger", "interval", "last", "held")

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self.logger = logger
        self.interval = interval
        self.last = -interval  # (monotonic time of the last line written)
        self.held = 0  # lines held back since

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Write the line unless one went out less than ``interval`` ago; True if written."""
        now = time.monotonic()
        if now - self.last < self.interval:
            self.held += 1
            return False
        self.last = now
        if self.held:
            msg += " (%d more like it suppressed)"
            args = (*args, self.held)
            self.held = 0
        self.logger.log(level, msg, *args)
        return True

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)


#: One limiter for every "out of descriptors" line of the process: the cause is the same,
#: whichever connect or pipe hit it first.
fd_log = RateLimited(logging.getLogger("l7switch"))
