"""The access log (issue 11): one line per request, combined or JSON, written by a thread;
SIGUSR1's reopen; a failing file never stops the serving. Lines are parsed back."""

from __future__ import annotations

import json
import logging
import os
import re

from kit import Conn, get, wait_for


# Apache/nginx combined: host ident user [time] "request" status bytes "referer" "user-agent"
COMBINED = re.compile(r'^(\S+) - - \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "([^"]*)" (\d{3}) (\d+|-) '
                      r'"([^"]*)" "([^"]*)"$')


def _config(origin_port: int, access: str, fmt: str) -> str:
    return (f"listen: [{{address: 127.0.0.1:0}}]\n"
            f"pools:\n  p: {{servers: [{{address: 127.0.0.1:{origin_port}, name: web1}}]}}\n"
            f"  dead: {{servers: [127.0.0.1:1]}}\n"
            f"rules:\n  - {{name: gone, match: {{path_prefix: /gone/}}, pool: dead}}\n"
            f"default_pool: p\nlog: {{access: '{access}', format: {fmt}}}\n")


def _lines(lt, sw, path, n: int) -> list[str]:
    """The first ``n`` lines of the log, once the switch has flushed them and the thread wrote."""
    lt.call(sw.state.access.flush)

    def enough() -> bool:
        return os.path.exists(path) and len(open(path).read().splitlines()) >= n
    assert wait_for(enough, 5), open(path).read() if os.path.exists(path) else "no file"
    return open(path).read().splitlines()


def test_json_lines_carry_what_happened(lt, origin_factory, switch_factory, tmp_path):
    o = origin_factory("o1")
    path = str(tmp_path / "access.json")
    sw = switch_factory(_config(o.port, path, "json"))
    with Conn(sw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 5\r\n\r\nhello")
        r1 = c.response()
        c.send(get("/status/404"))
        assert c.response().status == 404
        c.send(get("/gone/x"))
        r3 = c.response()
        assert r3.status == 503
        local_port = c.sock.getsockname()[1]
    with Conn(sw.port) as bad:
        bad.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert bad.response().status == 400
    recs = [json.loads(line) for line in _lines(lt, sw, path, 4)]
    ok, missing, gone, refused = recs
    assert ok["method"] == "POST" and ok["target"] == "/echo" and ok["status"] == 200
    assert ok["host"] == "www.example.com" and ok["version"] == "1.1"
    assert ok["client"] == "127.0.0.1" and ok["port"] == local_port
    assert ok["listener"].startswith("127.0.0.1:")
    assert ok["pool"] == "p" and ok["server"] == "web1" and ok["rule"] == "default"
    assert ok["bytes_in"] == 5 and ok["bytes_out"] == len(r1.body) and ok["retries"] == 0
    assert ok["term"] == "-" and ok["id"]
    for key in ("t_head", "t_connect", "t_response", "t_total"):
        assert ok[key] >= 0, key
    assert ok["t_queue"] == 0 and ok["t_total"] >= ok["t_response"]
    assert missing["status"] == 404 and missing["term"] == "-"
    # The switch's own 503: who ended it, and the id its error page carries
    assert gone["status"] == 503 and gone["rule"] == "gone" and gone["pool"] == "dead"
    assert gone["term"] == "switch" and gone["t_response"] == -1
    assert gone["id"] == r3.header("x-request-id")
    assert refused["status"] == 400 and refused["method"] is None and refused["term"] == "switch"


def test_combined_lines_parse_as_apache_combined(lt, origin_factory, switch_factory, tmp_path):
    o = origin_factory("o1")
    path = str(tmp_path / "access.log")
    sw = switch_factory(_config(o.port, path, "combined"))
    with Conn(sw.port) as c:
        c.send(b'GET /bytes/123 HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/"8"\r\nReferer: http://r/\r\n\r\n')
        assert c.response().status == 200
        c.send(get("/status/204"))
        assert c.response().status == 204
    first, second = _lines(lt, sw, path, 2)
    m = COMBINED.match(first)
    assert m, first
    assert m.group(1) == "127.0.0.1" and m.group(3) == "GET /bytes/123 HTTP/1.1"
    assert (m.group(4), m.group(5)) == ("200", "123")
    assert m.group(6) == "http://r/" and m.group(7) == r"curl/\x228\x22"  # quotes escaped, as nginx
    m2 = COMBINED.match(second)
    assert m2 and (m2.group(4), m2.group(5), m2.group(7)) == ("204", "-", "-")


def test_reopen_after_the_file_was_moved(lt, origin_factory, switch_factory, tmp_path):
    """logrotate moves the file, SIGUSR1 (here: the handler it calls) reopens: later lines go
    to a new file at the configured path."""
    o = origin_factory("o1")
    path = tmp_path / "access.log"
    sw = switch_factory(_config(o.port, str(path), "combined"))
    with Conn(sw.port) as c:
        c.send(get("/bytes/1"))
        c.response()
        _lines(lt, sw, path, 1)
        os.rename(path, tmp_path / "access.log.1")
        lt.call(sw.state.access.reopen)
        c.send(get("/bytes/2"))
        c.response()
    assert len(_lines(lt, sw, path, 1)) == 1
    assert "/bytes/2" in path.read_text() and "/bytes/1" in (tmp_path / "access.log.1").read_text()


def test_failing_log_never_stops_serving(lt, origin_factory, switch_factory, caplog):
    """/dev/full: every write fails with ENOSPC. Requests are answered; one event line says so."""
    o = origin_factory("o1")
    sw = switch_factory(_config(o.port, "/dev/full", "combined"))
    with caplog.at_level(logging.ERROR, logger="l7switch"):
        with Conn(sw.port) as c:
            for _ in range(3):
                c.send(get("/bytes/10"))
                assert c.response().status == 200
                lt.call(sw.state.access.flush)
                wait_for(lambda: lt.call(lambda: sw.state.access.out.failing), 2)
        assert wait_for(lambda: lt.call(lambda: sw.state.access.out.dropped) > 0, 3)
    failing = [r for r in caplog.records if "access log /dev/full failing" in r.getMessage()]
    assert len(failing) == 1, [r.getMessage() for r in caplog.records]
    assert "No space left" in failing[0].getMessage()


def test_log_to_stdout_by_default_off(origin_factory, switch_factory):
    o = origin_factory("o1")
    sw = switch_factory(f"listen: [{{address: 127.0.0.1:0}}]\npools: {{p: {{servers: [127.0.0.1:{o.port}]}}}}\n"
                        "default_pool: p\n")
    assert sw.state.access is None
    assert sw.snapshot()["access_log"] is None


def test_request_id_reaches_the_server_unless_it_has_one(lt, origin_factory, switch_factory, tmp_path):
    """The id of the access line and error pages goes to the server as X-Request-ID (nginx's
    $request_id); a request that carries one keeps its own; ``request_id_header: off`` sends none."""
    o = origin_factory("o1")
    path = str(tmp_path / "a.json")
    sw = switch_factory(_config(o.port, path, "json"))
    with Conn(sw.port) as c:
        c.send(get("/echo"))
        sent = [v for n, v in c.response().json()["headers"] if n.lower() == "x-request-id"]
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Request-ID: from-the-client\r\n\r\n")
        theirs = [v for n, v in c.response().json()["headers"] if n.lower() == "x-request-id"]
    first = json.loads(_lines(lt, sw, path, 1)[0])
    assert sent == [first["id"]] and theirs == ["from-the-client"]
    off = switch_factory(_config(o.port, str(tmp_path / "b.json"), "json").replace(
        "format: json}", "format: json, request_id_header: off}"))
    with Conn(off.port) as c:
        c.send(get("/echo"))
        assert not [n for n, _ in c.response().json()["headers"] if n.lower() == "x-request-id"]
