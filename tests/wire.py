"""Raw HTTP/1.1 on a blocking socket with its own buffer, so pipelined responses, interim
responses and closes can be checked byte for byte (helpers.read_response re-buffers per call).
"""

from __future__ import annotations

import json
import socket
import time

from helpers import connect


class Response:
    def __init__(self, status: int, reason: bytes, headers: list[tuple[str, str]], body: bytes,
                 raw_head: bytes, chunked: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw_head = raw_head
        self.chunked = chunked

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def json(self) -> dict:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:80]!r}>"


class Conn:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = connect(port, timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.eof:
            raise ConnectionError("peer closed")
        self.sock.settimeout(self.timeout)
        data = self.sock.recv(1 << 20)
        if not data:
            self.eof = True
            raise ConnectionError("peer closed")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> tuple[int, bytes, list[tuple[str, str]], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.split(b"\r\n")
        version, status, *reason = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        return int(status), reason[0] if reason else b"", headers, raw + b"\r\n\r\n"

    def response(self, head: bool = False, keep_interim: bool = False) -> Response:
        """One final response (1xx interim responses are skipped unless keep_interim)."""
        while True:
            status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and status != 101 and not keep_interim:
                continue
            break
        resp = Response(status, reason, headers, b"", raw, False)
        if head or status in (204, 304) or 100 <= status < 200:
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if te:
            assert te == "chunked", te
            resp.chunked = True
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exact(size))
                assert self._exact(2) == b"\r\n"
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._exact(int(cl))
        else:
            resp.body = self.read_to_close()
        return resp

    def read_to_close(self, limit: float | None = None) -> bytes:
        """Everything up to EOF (or reset). Raises TimeoutError if the peer keeps it open."""
        self.sock.settimeout(limit or self.timeout)
        chunks = [self.buf]
        self.buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        self.eof = True
        return b"".join(chunks)

    def is_closed(self, wait: float = 2.0) -> bool:
        """True if the peer closes (EOF or reset) within ``wait`` s with nothing more sent."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except (TimeoutError, socket.timeout):
            return False
        if data:
            self.buf += data
            return False
        return True

    def is_open(self, wait: float = 0.1) -> bool:
        """Nothing arrives and no close within ``wait`` s."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1)
        except (TimeoutError, socket.timeout):
            return True
        except ConnectionResetError:
            return False
        if data:
            self.buf += data
        return bool(data)


def get(path: str, host: str = "x", extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def exchange(port: int, raw: bytes, head: bool = False) -> Response:
    with Conn(port) as c:
        c.send(raw)
        return c.response(head=head)


def wait_for(pred, timeout: float = 3.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
