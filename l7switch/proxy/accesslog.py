"""The access log: one line per request (``log.access``, ``log.format``), written through
net/logfile.LogFile so the loop never waits for the disk.

``combined`` is Apache's and nginx's combined format, so existing log tools read it::

    127.0.0.1 - - [26/Nov/2026:10:15:24 +0000] "GET /index.html HTTP/1.1" 200 2326 "-" "curl/8.5"

``json`` is one object a line with what an operator asks of a request: time, client address and
port, listener, method, target, version, host, status, body bytes in and out, rule, pool, server,
retries, timings in milliseconds — HAProxy's Tq/Tw/Tc/Tr/Tt: the head received (``t_head``),
queue wait (``t_queue``), connect (``t_connect``), the server's response head after the request
went up (``t_response``) and the total from the head's first byte (``t_total``); -1 where a
step did not happen — who ended it (``term``: ``-`` a normal end, ``client`` gone before the
end, ``server`` failed or cut the response, ``timeout``, ``switch`` answered itself: 503, 429,
413...), and the request id that error pages and event lines carry.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Final

from ..http.message import RequestHead, flag_table
from ..net.logfile import LogFile
from ..spec import LogSpec
from .ports import ClientPort

#: An error the switch answered, by status: who ended the request (the json ``term`` field).
ERROR_TERM: Final = {408: "timeout", 504: "timeout", 502: "server"}

# nginx escapes '"', '\' and bytes outside printable ASCII in its log variables as \xHH.
_UNSAFE: Final = re.compile(rb'["\\\x00-\x1f\x7f-\xff]')


#: The bytes _UNSAFE matches, flagged (message.flag_table): the common case costs one C loop and
#: no regex (the regex search costs ~1,000 instructions).
_FLAG_UNSAFE: Final = flag_table(bytes([*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100)]))


def _escape(value: bytes) -> bytes:
    if value.translate(_FLAG_UNSAFE) is value:
        return value
    return _UNSAFE.sub(lambda m: b"\\x%02X" % m.group()[0], value)


#: ``time.time`` in a final name (compiled: no module attribute lookup per line).
_wall: Final = time.time


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000 if start and end else -1


# JSON strings: most values need no escaping; json.dumps only for those that do (a line is
# built with one % format: json.dumps of a dict costs ~10 µs, this ~2.5).
_JSON_UNSAFE: Final = re.compile(r'["\\\x00-\x1f\x7f-\U0010ffff]')


def _js(value: str) -> str:
    return f'"{value}"' if _JSON_UNSAFE.search(value) is None else json.dumps(value)


_JSON_LINE: Final = ('{"time":%.3f,"client":"%s","port":%d,"listener":"%s","method":%s,"target":%s,'
              '"version":"%s","host":%s,"status":%d,"bytes_in":%d,"bytes_out":%d,"rule":%s,'
              '"pool":%s,"server":%s,"retries":%d,"t_head":%.3f,"t_queue":%.3f,"t_connect":%.3f,'
              '"t_response":%.3f,"t_total":%.3f,"term":"%s","id":"%s"}\n')


class AccessLog:
    __slots__ = ("out", "json", "_second", "_stamp")

    def __init__(self, spec: LogSpec) -> None:
        assert spec.access is not None
        self.out = LogFile(spec.access)
        self.json = spec.format == "json"
        self._second = -1
        self._stamp = b""

    def exchange(self, ex: Any, client: ClientPort, head: RequestHead, sent: int, status: int,
                 term: str) -> None:
        """``ex`` (proxy/exchange.Exchange, which imports this module: hence ``Any``) has ended
        with ``status`` (0: no response), having sent ``sent`` body bytes; its ``client`` and
        ``head`` come typed (compiled: struct fields, not lookups by name)."""
        wall = _wall()
        if self.json:
            end = time.monotonic()
            server = ex.server
            body = ex.body
            self.out.write((_JSON_LINE % (
                wall, client.peer_ip, client.peer_port, client.listener,
                _js(head.method.decode("latin-1")), _js(head.target.decode("latin-1")), head.version,
                _js(head.host.decode("latin-1")), status, body.received if body is not None else 0,
                sent, _js(ex.route), _js(ex.pool.name),
                _js(server.name) if server is not None else "null", max(0, ex.attempts - 1),
                _ms(ex.t_head, ex.t0), ex.waited * 1000, _ms(ex.t_connect, ex.t_sent),
                _ms(ex.t_sent, ex.t_resp), _ms(ex.t_head or ex.t0, end), term, ex.request_id,
            )).encode("utf-8", "surrogateescape"))
            return
        stamp = self._stamp_at(wall)
        referer = user_agent = b"-"
        for name, value in head.headers:
            if name == b"referer":
                referer = _escape(value)
            elif name == b"user-agent":
                user_agent = _escape(value)
        version = head.version
        self.out.write(b'%s - - [%s] "%s %s HTTP/%s" %d %s "%s" "%s"\n' % (
            client.peer_ip.encode(), stamp, head.method, _escape(head.target),
            b"1.1" if version == "1.1" else version.encode(), status, b"%d" % sent if sent else b"-",
            referer, user_agent))

    def refused(self, peer_ip: str, peer_port: int, listener: str, status: int, request_id: str) -> None:
        """A request the switch answered before it was parsed whole (400, 408, 431...)."""
        wall = time.time()
        if self.json:
            rec = {"time": wall, "client": peer_ip, "port": peer_port, "listener": listener,
                   "method": None, "target": None, "status": status, "term": ERROR_TERM.get(status, "switch"),
                   "id": request_id}
            self.out.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
            return
        self.out.write(b'%s - - [%s] "-" %d - "-" "-"\n' % (peer_ip.encode(), self._stamp_at(wall), status))

    def _stamp_at(self, wall: float) -> bytes:
        """Combined's [time], formatted once a second."""
        second = int(wall)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(wall)).encode()
        return self._stamp

    def flush(self) -> None:
        self.out.flush()

    def reopen(self) -> None:
        self.out.reopen()

    def close(self) -> None:
        self.out.close()

    def close_soon(self) -> None:
        """Replaced by a reload: the thread writes what it has, then ends (nothing waits)."""
        self.out.stop()

    def snapshot(self) -> dict[str, object]:
        return {"format": "json" if self.json else "combined", **self.out.snapshot()}
