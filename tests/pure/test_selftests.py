"""The rule file's ``tests:`` section (issue 11): each request must reach its pool (and rule);
a failing one is reported at its own line, with where it went and by which rule."""

from __future__ import annotations

import pytest

from l7switch.config import parse_config
from l7switch.errors import ConfigError

FILE = """listen: [127.0.0.1:0]
pools:
  html: {servers: [127.0.0.1:1]}
  images: {servers: [127.0.0.1:2]}
  cgi: {servers: [127.0.0.1:3]}
rules:
  - name: static
    match: {path_prefix: /cgi-bin/, method: GET}
    pool: html
  - name: cgi
    match: {path_prefix: /cgi-bin/}
    pool: cgi
  - {match: {extension: [png, jpg]}, pool: images}
default_pool: html
tests:
"""  # tests start at line 16


def issues(tests: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(FILE + tests, "f.yaml")
    return [str(i) for i in exc.value.issues]


def test_passing_tests_are_kept_on_the_config() -> None:
    cfg = parse_config(FILE + "  - {url: http://www.example.com/images/logo.png, pool: images}\n"
                       "  - {url: /cgi-bin/form, method: POST, headers: {Cookie: 'lang=de'}, rule: cgi, pool: cgi}\n"
                       "  - {url: /cgi-bin/form, rule: static, pool: html}\n"
                       "  - {url: /about, pool: html}\n", "f.yaml")
    assert len(cfg.tests) == 4 and cfg.tests[1].method == "POST" and cfg.tests[1].headers == (("Cookie", "lang=de"),)


def test_a_failing_test_at_its_own_line() -> None:
    found = issues("  - {url: /images/a.png, pool: images}\n"
                   "  - {url: /cgi-bin/form, pool: cgi}\n"
                   "  - {url: /cgi-bin/form, method: POST, rule: static, pool: cgi}\n"
                   "  - {url: /x.html, pool: images}\n")
    assert found == [
        "f.yaml:17:5: test 2: GET /cgi-bin/form went to pool html by rule 'static' (line 7); expected pool cgi",
        "f.yaml:18:5: test 3: POST /cgi-bin/form went to pool cgi by rule 'cgi' (line 10); expected pool cgi "
        "by rule 'static'",
        "f.yaml:19:5: test 4: GET /x.html went to pool html by default_pool (no rule matched); expected pool images",
    ]


def test_unknown_pool_or_rule_in_a_test() -> None:
    found = "\n".join(issues("  - {url: /a, pool: imgaes}\n"
                             "  - {url: /a, pool: html, rule: statik}\n"))
    assert "f.yaml:16:5: test 1: GET /a: expects unknown pool 'imgaes'; did you mean 'images'?" in found
    assert "f.yaml:17:5: test 2: GET /a: expects unknown rule 'statik'; did you mean 'static'?" in found


def test_mistakes_in_tests() -> None:
    found = "\n".join(issues("  - {pool: html}\n"
                             "  - {url: /a, pol: html}\n"
                             "  - {url: /a, pool: html, headers: [a]}\n"))
    assert "tests[1]: missing required key 'url'" in found
    assert "did you mean 'pool'" in found
    assert "tests[3].headers: expected a mapping" in found


def test_tests_run_only_on_an_otherwise_sound_file() -> None:
    """A broken rule is reported once, not also as every test it makes fail."""
    with pytest.raises(ConfigError) as exc:
        parse_config(FILE.replace("pool: cgi\n  - {match", "pool: cgii\n  - {match") +
                     "  - {url: /cgi-bin/x, method: POST, pool: cgi}\n", "f.yaml")
    text = [str(i) for i in exc.value.issues]
    assert len(text) == 1 and "unknown pool 'cgii'" in text[0]
