"""The command line, run as a user would: ``python -m l7switch ...`` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THREE = "tests/data/three_errors.yaml"


def l7(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "l7switch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("name,summary", [
    ("rules/example.yaml", "OK (4 pools, 6 rules, 2 listeners, 5 tests passed)"),
    ("rules/minimal.yaml", "OK (1 pool, 0 rules, 1 listener)"),
])
def test_check_shipped_files_ok(name: str, summary: str) -> None:
    r = l7("check", name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == f"{name}: {summary}\n"


def test_check_reports_all_three_errors() -> None:
    r = l7("check", THREE)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{THREE}:11:13: rules[0].match: unknown key 'path_prefx'; did you mean 'path_prefix'?",
        f"{THREE}:15:11: rules[1].pool: unknown pool 'apii'; defined pools: html, images",
        f"{THREE}:17:25: rules[2].match.path_regex: bad regular expression '^/docs/(v[0-9]+': "
        "missing ), unterminated subpattern at position 7",
    ]
    assert "Traceback" not in r.stderr


def test_check_several_files_and_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    r = l7("check", "rules/minimal.yaml", missing)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        "rules/minimal.yaml: OK (1 pool, 0 rules, 1 listener)",
        f"{missing}:1:1: cannot read file: No such file or directory",
    ]


def test_check_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen:\n  - address: 127.0.0.1:80\npools: {web: {servers: [a:1]}\ndefault_pool: web\n")
    r = l7("check", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout.startswith(f"{bad}:4:")
    assert "invalid YAML" in r.stdout


def test_explain_match() -> None:
    r = l7("explain", "rules/example.yaml", "http://www.example.com/images/logo.png")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "rule #1 'api' (line 77): no match" in out
    assert "host 'api.example.com' does not match 'www.example.com'" in out
    assert "rule #2 'beta-testers' (line 83): no match" in out
    assert "header 'X-Beta' ~ 'yes': header is absent" in out
    assert "rule #3 'images' (line 91): MATCH" in out
    assert "path_prefix '/images/' matches '/images/logo.png'" in out
    assert "decision: rule #3 'images' (line 91) -> pool 'images'" in out
    assert "pool 'images': scheduler chash, 2 server(s)" in out
    assert "127.0.0.1:9003 weight 1" in out
    assert "key: the path without the query -> '/images/logo.png' (hash_key: path)" in out
    assert "first pick on an idle pool: 127.0.0.1:900" in out


def test_explain_shows_the_key_for_each_kind(tmp_path: Path) -> None:
    f = tmp_path / "k.yaml"
    base = ("listen: [{address: 127.0.0.1:0}]\ndefault_pool: p\npools:\n  p:\n    scheduler: %s\n"
            "    scheduler_options: %s\n    servers: [127.0.0.1:1, 127.0.0.1:2]\n")
    cases = [
        ("rr", "{}", [], "key: none (rr does not look at the request)"),
        ("sh", "{}", [], "key: the client address -> '192.0.2.7'"),
        ("sh", "{trust_forwarded: true}", ["-H", "X-Forwarded-For: 1.1.1.1, 10.0.0.9"],
         "key: the last X-Forwarded-For address (else the client address) -> '10.0.0.9'"),
        ("dh", "{hash_key: url}", [], "key: the path with the query -> '/a/b?x=1'"),
        ("dh", "{hash_key: 'cookie:sid'}", ["-H", "Cookie: a=1; sid=abc"], "key: cookie 'sid' -> 'abc'"),
        ("dh", "{hash_key: 'header:X-User'}", [],
         "key: header 'x-user' -> absent; dh balances this request by load instead"),
    ]
    for sched, opts, extra, line in cases:
        f.write_text(base % (sched, opts))
        r = l7("explain", str(f), "/a/b?x=1", "--client", "192.0.2.7", *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        assert line in r.stdout, r.stdout


def test_explain_method_and_headers() -> None:
    r = l7("explain", "rules/example.yaml", "/anything", "-X", "POST", "-H", "Host: api.example.com",
           "-H", "x-beta: yes")
    assert r.returncode == 0, r.stderr
    assert "decision: rule #1 'api' (line 77) -> pool 'api'" in r.stdout
    assert "127.0.0.1:9005 (api1) weight 1" in r.stdout
    r = l7("explain", "rules/example.yaml", "/anything", "-H", "X-Beta: yes")
    assert "decision: rule #2 'beta-testers' (line 83) -> pool 'beta'" in r.stdout


def test_explain_default_pool() -> None:
    r = l7("explain", "rules/minimal.yaml", "/x")
    assert r.returncode == 0
    assert "decision: no rules -> default pool 'web'" in r.stdout


def test_explain_bad_config_and_bad_header() -> None:
    r = l7("explain", THREE, "/")
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 3
    r = l7("explain", "rules/minimal.yaml", "/", "-H", "no colon")
    assert r.returncode == 2 and "Name: value" in r.stderr


def test_run_with_bad_config_exits_1() -> None:
    r = l7("run", "-c", THREE)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 3


def test_version_and_usage() -> None:
    r = l7("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("l7switch 0.1.0, ")  # + the build
    r = l7()
    assert r.returncode == 2 and "usage:" in r.stderr


def test_package_surface() -> None:
    code = ("import l7switch as m; from l7switch.errors import ConfigError; "
            "assert m.ConfigError is ConfigError and callable(m.load_config) and callable(m.parse_config); "
            "print(m.__version__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.1.0"


def test_explain_shows_eligible_servers_and_why_not(tmp_path: Path) -> None:
    """explain names each server's eligibility (down at start, draining, backup) and the pool's
    health, passive, retry and slow-start settings."""
    f = tmp_path / "h.yaml"
    f.write_text(
        "listen: [{address: 127.0.0.1:0}]\ndefault_pool: p\npools:\n  p:\n"
        "    scheduler: wrr\n"
        "    health: {http: {path: /health}, interval: 2s, rise: 2, fall: 3}\n"
        "    slow_start: 30s\n    retries: 1\n    maxconn: 10\n"
        "    servers:\n"
        "      - {address: 127.0.0.1:1, name: a}\n"
        "      - {address: 127.0.0.1:2, name: b, init_state: down}\n"
        "      - {address: 127.0.0.1:3, name: c, weight: 0}\n"
        "    backup: [{address: 127.0.0.1:4, name: sorry}]\n")
    r = l7("explain", str(f), "/x")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "  a (127.0.0.1:1, weight 1, maxconn 10): eligible" in out
    assert "  b (127.0.0.1:2, weight 1, maxconn 10): down (init_state: down: up after 2 passing checks)" in out
    assert "  c (127.0.0.1:3, weight 0, maxconn 10): draining" in out
    assert "  sorry (127.0.0.1:4, weight 1, maxconn 10): backup: takes requests only while no primary" in out
    assert "health: http GET /health every 2s (timeout 1s), rise 2, fall 3" in out
    assert "passive checks: layer4, 5 consecutive errors mark a server down" in out
    assert "retries: 1 (to another server, when safe; budget 20%)" in out
    assert "slow start: 30s" in out


def test_explain_tells_the_per_client_limits_for_the_client(tmp_path: Path) -> None:
    f = tmp_path / "pc.yaml"
    f.write_text("listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:1]}}\ndefault_pool: p\n"
                 "limits: {per_client: {connections: 10, requests_per_second: 5, netmask: 24, "
                 "trusted: [10.0.0.0/8]}}\n")
    r = l7("explain", str(f), "/", "--client", "192.0.2.7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == ("per-client limits: 10 connections, 5 requests/s (burst 5) "
                                         "per 192.0.2.0/24 (netmask 24/64)")
    r = l7("explain", str(f), "/", "--client", "10.2.3.4")
    assert r.stdout.splitlines()[-1] == "per-client limits: 10.2.3.4 is in a trusted network: not limited"


def test_check_reports_a_failing_self_test_and_exits_1(tmp_path):
    """A rule edit that sends a request astray fails `check` at the test's own line."""
    text = (open("rules/example.yaml").read().replace("path_prefix: /images/", "path_prefix: /img/")
            .replace("extension: [png, .jpg, GIF, svg]", "extension: [jpg, svg]"))
    f = tmp_path / "site.yaml"
    f.write_text(text)
    r = l7("check", str(f))
    assert r.returncode == 1
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "logo.png, pool: images" in ln)
    assert f"{f}:{line}:5: test 2: GET http://www.example.com/images/logo.png went to pool html by rule '#6'" \
        in r.stdout, r.stdout


def test_version_says_which_build_runs(capsys) -> None:
    """`l7switch --version` (and the start line, `ctl show info`) say compiled or pure Python."""
    import importlib

    from l7switch.cli.main import main
    from l7switch.version import build

    compiled = not (importlib.import_module("l7switch.stats").__file__ or "").endswith(".py")
    assert build() == ("compiled (mypyc)" if compiled else "pure Python")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"l7switch 0.1.0, {build()}"
