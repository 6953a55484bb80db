"""A log destination the event loop never waits for: lines are appended to a buffer, and a
thread writes them (a full disk, a slow pipe or NFS stall that thread, never the loop).

The buffer goes to the thread when it passes ``FLUSH_AT`` bytes, when the owner calls ``flush``
(the switch does every second, as nginx's ``access_log ... flush=1s``), and on close. At most
``MAX_QUEUED`` bytes wait for the thread; beyond that lines are dropped and counted, so a stuck
disk costs bounded memory. A write error is logged once with what failed, and once more when
writing works again, with the count of bytes dropped meanwhile; requests are served either way.
``reopen`` (SIGUSR1) makes the thread close and reopen the file, after logrotate moved it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Final

log = logging.getLogger("l7switch")

FLUSH_AT: Final = 64 * 1024  # one write per 64 KiB of lines under load (nginx's access_log buffer= 64k)
MAX_QUEUED: Final = 16 * 1024 * 1024  # our bound on lines waiting for a stalled disk
STREAMS = {"stdout": 1, "stderr": 2}

_REOPEN = b"reopen"  # markers on the queue (compared by identity)
_STOP = b"stop"


class LogFile:
    __slots__ = ("target", "buf", "size", "queue", "thread", "put", "done", "dropped", "failing")

    def __init__(self, target: str) -> None:
        self.target = target  # "stdout", "stderr" or a path
        self.buf: list[bytes] = []
        self.size = 0
        self.queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.put = 0  # bytes handed to the thread (written by the loop's thread only)
        self.done = 0  # bytes the thread has finished with (written by the thread only)
        self.dropped = 0  # bytes dropped: queue full, or the file failing
        self.failing = False
        self.thread = threading.Thread(target=self._run, name="l7switch-log", daemon=True)
        self.thread.start()

    def write(self, line: bytes) -> None:
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        data = b"".join(self.buf)
        self.buf, self.size = [], 0
        if self.put - self.done + len(data) > MAX_QUEUED:
            self.dropped += len(data)
            return
        self.put += len(data)
        self.queue.put(data)

    def reopen(self) -> None:
        self.flush()
        self.queue.put(_REOPEN)

    def stop(self) -> None:
        """Flush; the thread writes what it has, then ends."""
        self.flush()
        self.queue.put(_STOP)

    def close(self, timeout: float = 5.0) -> None:
        """``stop``, and wait for the thread to be done (up to ``timeout`` s)."""
        self.stop()
        self.thread.join(timeout)

    # ---- the writer thread ----------------------------------------------------------------------
    def _open(self) -> int | None:
        fd = STREAMS.get(self.target)
        if fd is not None:
            return fd
        try:
            return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            self._failed(exc)
            return None

    def _run(self) -> None:
        fd = self._open()
        while True:
            item = self.queue.get()
            if item is _STOP:
                break
            if item is _REOPEN:
                if fd is not None and self.target not in STREAMS:
                    os.close(fd)
                fd = self._open()
                continue
            if fd is None:
                self.dropped += len(item)
            else:
                self._write(fd, item)
            self.done += len(item)
        if fd is not None and self.target not in STREAMS:
            os.close(fd)

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            self.dropped += len(view)
            self._failed(exc)
            return
        if self.failing:
            self.failing = False
            log.warning("access log %s: writing again (%d bytes of lines dropped meanwhile)",
                        self.target, self.dropped)

    def _failed(self, exc: OSError) -> None:
        if not self.failing:
            self.failing = True
            log.error("access log %s failing: %s; requests are served, their lines dropped until it "
                      "recovers", self.target, exc.strerror or exc)

    def snapshot(self) -> dict[str, object]:
        return {"target": self.target, "queued_bytes": self.put - self.done + self.size,
                "dropped_bytes": self.dropped, "failing": self.failing}

    def __repr__(self) -> str:
        return f"<LogFile {self.target} failing={self.failing} dropped={self.dropped}>"
