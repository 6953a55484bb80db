"""The listener checks for TLS: certificate files loaded at check time (relative to the rule file),
version floors, ALPN, passthrough listeners' SNI tables, and persistence that suits the listener.

Certificates come from trustme (a throw-away CA per module), written to a temporary directory."""

from __future__ import annotations

import pytest

from l7switch.config import load_config, parse_config
from l7switch.errors import ConfigError
from l7switch.net.tls import cert_names


# ---- the listener checks -----------------------------------------------------------------------

def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    return [str(i) for i in info.value.issues]


POOLS = "pools:\n  web: {servers: [127.0.0.1:9001]}\n  api: {servers: [127.0.0.1:9002]}\n"


def test_tls_listener_config(pki):
    d = pki[1]
    c = parse_config("listen:\n  - address: 127.0.0.1:8443\n"
                     f"    tls: {{cert: {d}/site.pem, key: {d}/site.key}}\n"
                     + POOLS + "default_pool: web\n")
    (lst,) = c.listeners
    assert (lst.mode, lst.tls.certs, lst.tls.min_version, lst.tls.alpn) == (
        "http", ((f"{d}/site.pem", f"{d}/site.key"),), "TLSv1.2", ("http/1.1",))
    assert cert_names(f"{d}/other.pem") == ("other.test", "*.wild.test")


def test_relative_cert_paths_start_at_the_rule_file(pki, tmp_path, monkeypatch):
    d = pki[1]
    (tmp_path / "certs").mkdir()
    for name in ("site.pem", "site.key"):
        (tmp_path / "certs" / name).write_bytes((d / name).read_bytes())
    rules = tmp_path / "rules.yaml"
    rules.write_text("listen:\n  - address: 127.0.0.1:8443\n"
                     "    tls: {cert: certs/site.pem, key: certs/site.key}\n"
                     + POOLS + "default_pool: web\n")
    monkeypatch.chdir("/")
    (lst,) = load_config(rules).listeners
    assert lst.tls.certs == ((str(tmp_path / "certs/site.pem"), str(tmp_path / "certs/site.key")),)


def test_passthrough_listener_config_needs_no_top_level_default_pool():
    c = parse_config("listen:\n  - address: 127.0.0.1:9443\n    mode: tls-passthrough\n"
                     "    sni: {API.example.com.: api, '*.example.com': web}\n"
                     "    default_pool: web\n" + POOLS)
    (lst,) = c.listeners
    assert lst.mode == "tls-passthrough" and lst.tls is None
    assert lst.sni == (("api.example.com", "api"), ("*.example.com", "web")) and lst.default_pool == "web"
    # one http listener beside it, and the top-level default_pool is required again
    assert errors("listen:\n  - 127.0.0.1:8080\n  - {address: 127.0.0.1:9443, mode: tls-passthrough, "
                  "default_pool: web}\n" + POOLS) == ["f.yaml:1:1: missing required key 'default_pool'"]


def test_listener_errors_in_one_pass(pki, tmp_path):
    d = pki[1]
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    text = (
        "listen:\n"
        f"  - address: 127.0.0.1:8443\n"                                            # 2
        f"    tls: {{cert: {d}/missing.pem, key: {d}/site.key}}\n"                   # 3
        f"  - address: 127.0.0.1:8444\n"                                            # 4
        f"    tls: {{cert: {d}/site.pem, key: {d}/site.key, min_version: TLSv1.4}}\n"  # 5
        f"  - address: 127.0.0.1:9443\n"                                            # 6
        f"    mode: tls-passthrough\n"                                              # 7
        f"    tls: {{cert: {d}/site.pem, key: {d}/site.key}}\n"                      # 8
        f"    sni: {{api.example.com: apii, 10.0.0.1: web}}\n"                       # 9
        f"  - address: 127.0.0.1:8081\n"                                            # 10
        f"    sni: {{a.example.com: web}}\n"                                         # 11
        f"  - address: 127.0.0.1:8082\n"                                            # 12
        f"    mode: passthrough\n"                                                  # 13
        f"  - address: 127.0.0.1:8445\n"                                            # 14
        f"    tls: {{cert: {tmp_path}/junk.pem, key: {d}/site.key, alpn: [h2]}}\n"   # 15
        f"  - address: 127.0.0.1:8446\n"                                            # 16
        f"    tls: {{cert: {d}/site.pem, key: {d}/other.key, min_version: tlsv1.1}}\n"  # 17
        + POOLS + "default_pool: web\n")
    got = errors(text)
    expect = [
        ("f.yaml:3:17: listen[0].tls.cert: cannot read", "no such file"),
        ("f.yaml:5:", "listen[1].tls.min_version: unknown version 'TLSv1.4'; did you mean 'TLSv1.3'?"),
        ("f.yaml:8:5: listen[2].tls: not allowed with mode tls-passthrough", ""),
        ("f.yaml:9:28: listen[2].sni.api.example.com: unknown pool 'apii'; did you mean 'api'?", ""),
        ("f.yaml:9:", "'10.0.0.1' is not a host name"),
        ("f.yaml:11:5: listen[3].sni: only for 'mode: tls-passthrough'", ""),
        ("f.yaml:13:11: listen[4].mode: unknown mode 'passthrough'; did you mean 'tls-passthrough'?", ""),
        ("f.yaml:15:17: listen[5].tls.cert: 'junk.pem' is not a PEM certificate", ""),
        ("f.yaml:15:", "listen[5].tls.alpn: 'h2' cannot be offered"),
        ("f.yaml:17:17: listen[6].tls.cert: the key 'other.key' does not belong to this certificate", ""),
        ("f.yaml:17:", "'tlsv1.1' is no longer allowed (TLS 1.0 and 1.1 are deprecated, RFC 8996)"),
    ]
    assert len(got) == len(expect), "\n".join(got)
    for line, (start, part) in zip(got, expect):
        assert line.startswith(start) and part in line, (line, start, part)


def test_passthrough_listener_needs_sni_or_default_pool():
    assert errors("listen:\n  - {address: 127.0.0.1:9443, mode: tls-passthrough}\n" + POOLS) == [
        "f.yaml:2:5: listen[0]: a tls-passthrough listener needs 'sni' (server name -> pool), "
        "'default_pool', or both"]
    assert errors("listen:\n  - {address: 127.0.0.1:9443, mode: tls-passthrough, default_pool: wbe}\n"
                  + POOLS) == ["f.yaml:2:68: listen[0].default_pool: unknown pool 'wbe'; did you mean 'web'?"]


def _persistence_parsed() -> bool:
    try:
        parse_config("listen: [127.0.0.1:0]\npools:\n  p: {servers: [127.0.0.1:1], persistence: "
                     "{source: {}}}\ndefault_pool: p\n")
    except ConfigError:
        return False
    return True


def test_persistence_must_suit_the_listener():
    if not _persistence_parsed():
        pytest.skip("pool persistence is not parsed yet")
    text = ("listen:\n  - 127.0.0.1:8080\n  - {address: 127.0.0.1:9443, mode: tls-passthrough, "
            "sni: {a.example.com: sess}, default_pool: web}\n"
            "pools:\n"
            "  web:\n    servers: [127.0.0.1:9001]\n    persistence: {cookie: {}}\n"
            "  sess:\n    servers: [127.0.0.1:9002]\n    persistence: {ssl_session: {}}\n"
            "rules:\n  - {match: {path_prefix: /s/}, pool: sess}\n"
            "default_pool: web\n")
    got = errors(text)
    assert len(got) == 2, got
    assert got[0].startswith("f.yaml:7:5: pools.web.persistence: cookie persistence cannot work behind "
                             "the tls-passthrough listener 127.0.0.1:9443 (line 3)")
    assert got[1].startswith("f.yaml:10:5: pools.sess.persistence: ssl_session persistence works only "
                             "on tls-passthrough listeners")
    assert "rule #1 (line 12)" in got[1]


def test_cli_check_and_explain_with_tls_and_passthrough_listeners(pki, tmp_path, capsys):
    from l7switch.cli.main import main
    d = pki[1]
    tls = tmp_path / "tls.yaml"
    tls.write_text("listen:\n  - address: 127.0.0.1:8443\n"
                   f"    tls: {{cert: {d}/site.pem, key: {d}/nokey.key}}\n"
                   + POOLS + "default_pool: web\n")
    assert main(["check", str(tls)]) == 1
    assert f"{tls}:3:" in capsys.readouterr().out
    only = tmp_path / "passthrough.yaml"
    only.write_text("listen:\n  - {address: 127.0.0.1:9443, mode: tls-passthrough, default_pool: web}\n"
                    + POOLS)
    assert main(["check", str(only)]) == 0
    assert "OK (2 pools, 0 rules, 1 listener)" in capsys.readouterr().out
    assert main(["explain", str(only), "http://x/"]) == 1  # no HTTP is routed: said, not a traceback
    assert "no http listener" in capsys.readouterr().err
