"""The rule file's own tests — a webmaster's safety net::

    tests:
      - {url: http://www.example.com/images/logo.png, pool: images}
      - {url: /cgi-bin/form, method: POST, headers: {Cookie: "lang=de"}, rule: cgi, pool: cgi}

Each names a request and the pool (and optionally the rule) it must reach. They run when the
file is read — by ``l7switch check``, at start and on every reload — on the same router the
switch serves with, so a rule edit that sends traffic astray is refused like a syntax error: a
failing test is reported at its own line, e.g. ``FILE:14:5: test 2: POST /cgi-bin/form went to
pool html by rule 'static' (line 9); expected pool cgi``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from yaml.nodes import MappingNode, Node, SequenceNode

from ..http.rules import RequestView, Router
from ..spec import RouteTest, RuleSpec
from .yamlnodes import Issues, did_you_mean, mapping, nonempty_text, read_fields, text

KEYS = ("url", "method", "headers", "pool", "rule")


def _headers(node: Node, path: str, issues: Issues) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(node, MappingNode):
        issues.add(node, f"{path}: expected a mapping of header names to values, e.g. {{Cookie: \"a=1\"}}")
        return None
    out = []
    for knode, vnode in node.value:
        name = text(knode, path, issues, "a header name")
        value = text(vnode, f"{path}.{name}", issues, "a header value")
        if name is None or value is None:
            return None
        out.append((name, value))
    return tuple(out)


READERS: dict[str, Callable[[Node, str, Issues], Any]] = {
    "url": lambda n, p, i: nonempty_text(n, p, i, "a URL such as /images/a.png or http://host/path"),
    "method": lambda n, p, i: nonempty_text(n, p, i, "a method such as GET"),
    "headers": _headers,
    "pool": lambda n, p, i: nonempty_text(n, p, i, "a pool name"),
    "rule": lambda n, p, i: nonempty_text(n, p, i, "a rule name"),
}


def parse_tests(node: Node, issues: Issues) -> tuple[RouteTest, ...]:
    if not isinstance(node, SequenceNode):
        issues.add(node, "tests: expected a list of {url: ..., pool: ...}")
        return ()
    tests = []
    for i, item in enumerate(node.value):
        path = f"tests[{i + 1}]"
        m = mapping(item, path, issues, READERS, required=("url", "pool"))
        if m is None:
            continue
        values = read_fields(m, READERS, path, issues)
        if values is None or "url" not in values or "pool" not in values:
            continue
        tests.append(RouteTest(i + 1, item.start_mark.line + 1, item.start_mark.column + 1, values["url"],
                               values.get("method", "GET").upper(), values.get("headers", ()),
                               values["pool"], values.get("rule")))
    return tuple(tests)


def run_tests(tests: Sequence[RouteTest], rules: Sequence[RuleSpec], default_pool: str,
              pools: Sequence[str], issues: Issues) -> None:
    """Route each test's request with the file's rules; a mismatch is an issue at its line."""
    if not tests:
        return
    router = Router.from_specs(rules, default_pool)
    labels = [r.name if r.name is not None else f"#{r.index + 1}" for r in rules]
    for t in tests:
        where = f"test {t.number}: {t.method} {t.url}"
        if t.pool not in pools:
            issues.at(t.line, t.column, f"{where}: expects unknown pool {t.pool!r}"
                      f"{did_you_mean(t.pool, pools, 'defined pools')}")
            continue
        if t.rule is not None and t.rule not in labels:
            issues.at(t.line, t.column, f"{where}: expects unknown rule {t.rule!r}"
                      f"{did_you_mean(t.rule, labels, 'rule names')}")
            continue
        rule, pool = router.route(RequestView.from_url(t.method, t.url, list(t.headers)))
        got_rule = rule.label if rule is not None else None
        if pool == t.pool and (t.rule is None or got_rule == t.rule):
            continue
        by = f"by rule {got_rule!r} (line {rule.line})" if rule is not None else "by default_pool (no rule matched)"
        expected = f"pool {t.pool}" + (f" by rule {t.rule!r}" if t.rule is not None else "")
        issues.at(t.line, t.column, f"{where} went to pool {pool} {by}; expected {expected}")
