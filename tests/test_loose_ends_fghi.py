"""Regression tests for loose ends (f)-(i):

(f) connection objects freed without the cyclic GC (no protocol <-> parser cycles left behind);
(g) ``Upgrade: h2c`` (curl --http2) and other non-websocket upgrades fall back to plain HTTP/1.1;
(h) error pages carry a request id, not internal addresses; the detail goes to the log;
(i) ``l7switch run`` reports an unusable listen address in one line (no traceback), and accepts
    the rule file as a positional argument.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import read_head
from wire import Conn, get, wait_for

ROOT = Path(__file__).resolve().parents[1]


def header_names(doc: dict) -> list[str]:
    return [n.lower() for n, _ in doc["headers"]]


# ---- (f) reference cycles ---------------------------------------------------------------------

CYCLE_TYPES = frozenset({"ClientConnection", "UpstreamConnection", "Exchange",
                         "HttpRequestParser", "HttpResponseParser"})


def _is_origin_parser(obj: object) -> bool:
    """The test origin (l7switch/origin.py) has its own protocol <-> parser cycle; not ours.
    (A parser refers to its protocol through the bound callback methods it holds.)"""
    return any(type(r).__name__ == "_OriginProtocol"
               or type(getattr(r, "__self__", None)).__name__ == "_OriginProtocol"
               for r in gc.get_referents(obj))


def test_closed_connections_need_no_cyclic_gc(lt, proxy):
    """(f) Client and upstream connections must be freed by reference counting once closed.

    Old code: ClientConnection <-> HttpRequestParser and UpstreamConnection <-> HttpResponseParser
    (and the Exchanges they hold) stay in reference cycles that only the cyclic GC frees, so with
    the GC disabled they show up as unreachable garbage under DEBUG_SAVEALL.
    """
    was_enabled = gc.isenabled()
    old_flags = gc.get_debug()
    gc.collect()
    # Objects of these types alive before the test are not ours: keep them reachable.
    preexisting = [o for o in gc.get_objects() if type(o).__name__ in CYCLE_TYPES]
    gc.disable()
    try:
        sw, o = proxy("upstream: {idle_timeout: 0.2s}\n")
        for i in range(3):
            with Conn(sw.port) as c:
                for j in range(3):
                    c.send(get(f"/echo?c={i}&r={j}"))
                    assert c.response().status == 200
                c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
                assert c.response().status == 200
        with Conn(sw.port) as c:
            c.send(get("/bytes/100", extra="Connection: close\r\n"))
            assert c.response().status == 200
            assert c.is_closed()

        def quiet() -> bool:
            snap = lt.call(sw.snapshot)
            idle = sum(p["idle"] for p in snap["connection_pools"].values())
            return snap["clients"] == 0 and idle == 0
        assert wait_for(quiet, timeout=3.0), lt.call(sw.snapshot)
        time.sleep(0.3)  # let connection_lost callbacks run on the loop thread

        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [g for g in gc.garbage if type(g).__name__ in CYCLE_TYPES
                  and not (type(g).__name__ == "HttpRequestParser" and _is_origin_parser(g))]
        counts = Counter(type(g).__name__ for g in leaked)
        del leaked
        assert not counts, f"objects only the cyclic GC can free: {dict(counts)}"
    finally:
        gc.set_debug(old_flags)
        gc.garbage.clear()
        del preexisting
        if was_enabled:
            gc.enable()
        gc.collect()


# ---- (g) h2c and other non-websocket upgrades --------------------------------------------------

H2C = ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")


def test_h2c_upgrade_get_falls_back_to_http11(proxy):
    """(g) curl --http2's GET (Upgrade: h2c + HTTP2-Settings) is forwarded as plain HTTP/1.1.

    Old code: any Upgrade other than websocket is refused with 400 "unsupported Upgrade".
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo", extra=H2C))
        r = c.response()
        assert r.status == 200, r
        names = header_names(r.json())
        assert "upgrade" not in names
        assert "http2-settings" not in names


def test_h2c_upgrade_keeps_client_connection_usable(proxy):
    """(g) After an h2c-upgrade GET, the same connection serves the next (pipelined) request.

    Old code: the h2c request gets 400 and the connection is closed.
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo/one", extra=H2C) + get("/echo/two"))
        r1 = c.response()
        assert r1.status == 200, r1
        assert r1.json()["path"] == "/echo/one"
        r2 = c.response()
        assert r2.status == 200, r2
        assert r2.json()["path"] == "/echo/two"
        c.send(get("/echo/three"))
        r3 = c.response()
        assert r3.status == 200 and r3.json()["path"] == "/echo/three"


def test_h2c_upgrade_post_body_intact(proxy):
    """(g) A POST with a body and h2c upgrade headers reaches the origin with its body, and the
    connection keeps working.

    Old code: 400 "unsupported Upgrade", body never forwarded, connection closed.
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + H2C.encode()
               + b"Content-Length: 5\r\n\r\nhello")
        r = c.response()
        assert r.status == 200, r
        doc = r.json()
        assert doc["method"] == "POST"
        assert doc["body_len"] == 5
        import hashlib
        assert doc["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
        names = header_names(doc)
        assert "upgrade" not in names and "http2-settings" not in names
        c.send(get("/echo/after"))
        r2 = c.response()
        assert r2.status == 200, r2
        assert r2.json()["path"] == "/echo/after"


def test_unknown_upgrade_forwarded_as_plain_http(proxy):
    """(g) ``Upgrade: foo`` with ``Connection: upgrade`` is forwarded as plain HTTP/1.1 (200).

    Old code: 400 "unsupported Upgrade".
    """
    sw, _ = proxy()
    with Conn(sw.port) as c:
        c.send(get("/echo", extra="Connection: upgrade\r\nUpgrade: foo\r\n"))
        r = c.response()
        assert r.status == 200, r
        assert "upgrade" not in header_names(r.json())
        c.send(get("/echo/next"))
        assert c.response().status == 200


# ---- (h) error pages without internal detail ---------------------------------------------------

ID_RE = re.compile(r"request id:? ([0-9a-f]{8,})", re.IGNORECASE)


def _check_error_page(caplog, port: int, status: int, r) -> None:
    assert r.status == status, r
    body = r.body.decode("utf-8", "replace")
    m = ID_RE.search(body)
    assert m, f"no request id in the error page: {body!r}"
    rid = m.group(1)
    xid = r.header("x-request-id")
    if xid is not None:
        assert xid == rid
    scrubbed = body.replace(rid, "")
    for leak in ("127.0.0.1", str(port), "refused", "connect"):
        assert leak not in scrubbed.lower(), f"error page leaks {leak!r}: {body!r}"
    addr = f"127.0.0.1:{port}"

    def logged() -> bool:
        return any(rid in rec.getMessage() and addr in rec.getMessage() for rec in caplog.records)
    assert wait_for(logged, timeout=2.0), \
        f"no log record with id {rid} and {addr}: {[rec.getMessage() for rec in caplog.records]}"


def test_503_error_page_hides_address_and_logs_detail(caplog, switch_factory, free_port):
    """(h) A refused connect: the client gets 503 with a request id and no address/errno; the log
    has the same id with the server address.

    Old code: the body reads "503 Service Unavailable: connect to 127.0.0.1:PORT failed:
    Connection refused" and carries no request id.
    """
    caplog.set_level(logging.INFO, logger="l7switch")
    sw = switch_factory(f"listen: [{{address: 127.0.0.1:0}}]\npools:\n"
                        f"  p: {{servers: [127.0.0.1:{free_port}]}}\ndefault_pool: p\n")
    with Conn(sw.port) as c:
        c.send(get("/x"))
        r = c.response()
    _check_error_page(caplog, free_port, 503, r)


def test_502_error_page_hides_address_and_logs_detail(caplog, raw_origin, switch_factory):
    """(h) A server that closes without answering: 502 with a request id and no address; the log
    has the same id with the server address.

    Old code: the body names the server's internal address and carries no request id.
    """
    caplog.set_level(logging.INFO, logger="l7switch")

    async def hang_up(reader, writer):
        await read_head(reader)

    ro = raw_origin(hang_up)
    sw = switch_factory(f"listen: [{{address: 127.0.0.1:0}}]\npools:\n"
                        f"  p: {{servers: [127.0.0.1:{ro.port}]}}\ndefault_pool: p\n")
    with Conn(sw.port) as c:
        c.send(get("/x"))
        r = c.response()
    _check_error_page(caplog, ro.port, 502, r)


# ---- (i) l7switch run: unusable address, positional FILE -------------------------------------

def _rule_file(tmp_path: Path, listen: str) -> Path:
    f = tmp_path / "rules.yaml"
    f.write_text(f"listen:\n  - address: {listen}\npools:\n  web:\n    servers:\n"
                 f"      - 127.0.0.1:9\ndefault_pool: web\n")
    return f


def _spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-m", "l7switch", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 5.0) -> tuple[int | None, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=5)
        return None, out + err
    return p.returncode, out + err


def test_run_port_in_use_one_line_exit_1(tmp_path):
    """(i) ``run -c FILE`` on a port already in use: one line "cannot listen on ...: address
    already in use", exit 1, no traceback.

    Old code: an OSError traceback ("[Errno 98] ... address already in use") from uvloop.run.
    """
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    p = _spawn("run", "-c", str(_rule_file(tmp_path, f"127.0.0.1:{port}")))
    try:
        code, text = _finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        holder.close()
    assert code == 1, (code, text)
    assert "Traceback" not in text, text
    assert f"cannot listen on 127.0.0.1:{port}" in text, text
    assert "address already in use" in text.lower(), text


def test_run_address_not_on_host_one_line_exit_1(tmp_path):
    """(i) ``run -c FILE`` with a listen address not on this host (192.0.2.1, TEST-NET): one line
    "cannot listen on 192.0.2.1:8080: ...", exit 1, no traceback.

    Old code: an OSError traceback ("[Errno 99] ... cannot assign requested address").
    """
    p = _spawn("run", "-c", str(_rule_file(tmp_path, "192.0.2.1:8080")))
    try:
        code, text = _finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert code == 1, (code, text)
    assert "Traceback" not in text, text
    assert "cannot listen on 192.0.2.1:8080" in text, text


def test_run_accepts_positional_file(tmp_path, free_port):
    """(i) ``l7switch run FILE`` (no -c) serves; SIGTERM stops it with exit 0.

    Old code: argparse rejects it (exit 2, "the following arguments are required: -c/--config").
    """
    p = _spawn("run", str(_rule_file(tmp_path, f"127.0.0.1:{free_port}")))
    try:
        def serving() -> bool:
            if p.poll() is not None:
                return True  # exited: stop polling, the assert below reports it
            try:
                socket.create_connection(("127.0.0.1", free_port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_for(serving, timeout=5.0, step=0.05)
        assert p.poll() is None, _finish(p)
        p.send_signal(signal.SIGTERM)
        code, text = _finish(p)
        assert code == 0, (code, text)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
