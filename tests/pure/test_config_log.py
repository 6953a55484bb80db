"""The log section: access destination and format, mistakes at their line."""

from __future__ import annotations

import pytest

from l7switch.config import parse_config
from l7switch.errors import ConfigError


@pytest.mark.parametrize("text,expected", [
    ("log: {format: jsn}\n", "f.yaml:4:15: log.format: unknown format 'jsn'"),
    ("log: {acess: stdout}\n", "did you mean 'access'"),
    ("log: {access: /nonexistent-dir/a.log}\n", "log.access: directory '/nonexistent-dir' does not exist"),
])
def test_log_section_mistakes(text: str, expected: str) -> None:
    head = "listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:1]}}\ndefault_pool: p\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(head + text, "f.yaml")
    assert expected in "\n".join(str(i) for i in exc.value.issues)


def test_access_path_relative_to_the_rule_file(tmp_path) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text("listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:1]}}\ndefault_pool: p\n"
                     "log: {access: access.log}\n")
    cfg = parse_config(rules.read_text(), str(rules))
    assert cfg.log.access == str(tmp_path / "access.log") and cfg.log.format == "combined"


def test_hard_stop_after_and_request_id_header() -> None:
    head = "listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:1]}}\ndefault_pool: p\n"
    cfg = parse_config(head + "hard_stop_after: 10s\nlog: {request_id_header: X-Trace-Id}\n")
    assert cfg.hard_stop_after == 10.0 and cfg.log.request_id_header == "X-Trace-Id"
    assert parse_config(head).hard_stop_after == 30.0 and parse_config(head).log.request_id_header == "X-Request-ID"
    assert parse_config(head + "log: {request_id_header: off}\n").log.request_id_header == ""
    with pytest.raises(ConfigError) as exc:
        parse_config(head + "hard_stop_after: soon\nlog: {request_id_header: 'X Id'}\n", "f.yaml")
    text = "\n".join(str(i) for i in exc.value.issues)
    assert "f.yaml:4:18: hard_stop_after:" in text and "'X Id' is not a header name" in text


def test_workers_keys() -> None:
    head = "listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:1]}}\ndefault_pool: p\n"
    assert parse_config(head).workers == 1 and parse_config(head).worker_steering == "address"
    cfg = parse_config(head + "workers: auto\nworker_steering: connection\n")
    assert cfg.workers == 0 and cfg.worker_steering == "connection"
    with pytest.raises(ConfigError) as exc:
        parse_config(head + "workers: 0\nworker_steering: adress\n", "f.yaml")
    text = "\n".join(str(i) for i in exc.value.issues)
    assert "f.yaml:4:10: workers: expected an integer >= 1" in text
    assert "worker_steering: expected address or connection, found 'adress'; did you mean 'address'?" in text


def test_admin_section() -> None:
    head = "listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:1]}}\ndefault_pool: p\n"
    assert parse_config(head).admin.socket is None  # run's default path
    assert parse_config(head + "admin: off\n").admin.socket == ""
    cfg = parse_config(head + "admin: {socket: /tmp/x.sock, mode: '0660'}\n")
    assert cfg.admin.socket == "/tmp/x.sock" and cfg.admin.mode == 0o660
    for text, expected in (("admin: {socket: /nonexistent-dir/a.sock}\n",
                            "f.yaml:4:17: admin.socket: directory '/nonexistent-dir' does not exist"),
                           ("admin: {mode: '999'}\n", "f.yaml:4:15: admin.mode: expected a file mode in octal")):
        with pytest.raises(ConfigError) as exc:
            parse_config(head + text, "f.yaml")
        assert expected in "\n".join(str(i) for i in exc.value.issues)
