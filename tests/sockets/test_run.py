"""``l7switch run`` as an operator starts it: a rule file as an argument or with -c, one line
and exit 1 when a listener cannot be opened, exit 0 after SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from kit import PACKAGE_ROOT, wait_for

KiB = 1024
MiB = 1024 * KiB
ROOT = PACKAGE_ROOT  # subprocesses run the build under test (kit.py)


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


def test_sighup_reloads_and_a_broken_file_keeps_serving(tmp_path, free_port, origin_factory):
    """``kill -HUP``: the file is read again and applied (old code: the process died, exit 129);
    a broken file is refused with its error at FILE:LINE:COL and the switch keeps serving."""
    o1, o2 = origin_factory("o1"), origin_factory("o2")
    rules = tmp_path / "rules.yaml"

    def write(port: int, default: str = "web") -> None:
        rules.write_text(f"listen:\n  - address: 127.0.0.1:{free_port}\npools:\n  web:\n    servers:\n"
                         f"      - 127.0.0.1:{port}\ndefault_pool: {default}\n")

    def server_name() -> str:
        with socket.create_connection(("127.0.0.1", free_port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return next(line.split(b":", 1)[1].strip().decode() for line in data.split(b"\r\n")
                    if line.lower().startswith(b"x-server:"))

    write(o1.port)
    p = _spawn("run", str(rules))
    try:
        def serving() -> bool:
            try:
                socket.create_connection(("127.0.0.1", free_port), timeout=0.5).close()
                return True
            except OSError:
                return p.poll() is not None
        wait_for(serving, timeout=5.0, step=0.05)
        assert server_name() == "o1"
        write(o2.port)
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: server_name() == "o2", 5.0, step=0.05)
        write(o1.port, default="wbe")  # broken: unknown pool
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: False, 0.5)
        assert p.poll() is None and server_name() == "o2"
        p.send_signal(signal.SIGTERM)
        code, text = _finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert code == 0, text
    assert f"reload refused: {rules}:7:15: default_pool: unknown pool 'wbe'" in text, text
    assert "reloaded" in text and "Traceback" not in text
