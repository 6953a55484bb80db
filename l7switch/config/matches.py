"""The ``rules:`` section: each rule's ``match`` mapping read into a ``MatchSpec`` tree.

Like the rest of config/, every problem is recorded at its line and nothing raises; a rule with
an error is left out (and no Config is built). Regexes are compiled here, once, so a bad one is
a check-time error; http/rules.py turns the checked tree into the tests the router runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from yaml.nodes import Node, SequenceNode

from ..spec import ALWAYS, MatchSpec, RuleSpec
from .yamlnodes import Issues, did_you_mean, expect, is_null, mapping, nonempty_text, regex, text_list

RULE_KEYS = ("name", "match", "pool")
MATCH_KEYS = ("path_prefix", "path_regex", "extension", "host", "method", "header", "cookie",
              "query", "any", "all", "not")
MAX_MATCH_DEPTH = 32  # deeper nesting is a mistake (or a recursive YAML alias)

Reader = Callable[[Node, str, Issues, int], "MatchSpec | None"]


def parse_rules(node: Node, issues: Issues, pool_names: list[str]) -> tuple[RuleSpec, ...]:
    # Rules with errors are left out; any error stops the Config being built anyway.
    if not expect(node, SequenceNode, "rules", issues):
        return ()
    out: list[RuleSpec] = []
    names: dict[str, int] = {}
    for i, item in enumerate(node.value):
        path = f"rules[{i}]"
        m = mapping(item, path, issues, RULE_KEYS, required=("pool",))
        if m is None:
            continue
        name = None
        if "name" in m:
            name_node = m["name"][1]
            name = nonempty_text(name_node, f"{path}.name", issues, "a rule name")
            if name is not None and name in names:
                issues.add(name_node, f"{path}.name: duplicate rule name {name!r} "
                           f"(first at line {names[name]})")
            elif name is not None:
                names[name] = name_node.start_mark.line + 1
        pool = None
        if "pool" in m:
            pool = nonempty_text(m["pool"][1], f"{path}.pool", issues, "a pool name")
            if pool and pool_names and pool not in pool_names:
                issues.add(m["pool"][1], f"{path}.pool: unknown pool {pool!r}"
                           f"{did_you_mean(pool, pool_names, 'defined pools')}")
        match = _match(m["match"][1], f"{path}.match", issues, 0) if "match" in m else ALWAYS
        if pool and match is not None:
            out.append(RuleSpec(name, i, pool, item.start_mark.line + 1, match))
    return tuple(out)


def _match(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
    if depth > MAX_MATCH_DEPTH:
        issues.add(node, f"{path}: match nested deeper than {MAX_MATCH_DEPTH} levels "
                   "(a recursive YAML alias?)")
        return None
    if is_null(node):
        return ALWAYS
    m = mapping(node, path, issues, MATCH_KEYS)
    if m is None:
        return None
    n_before = len(issues)
    specs: list[MatchSpec] = []
    for key, (_, value) in m.items():
        spec = _READERS[key](value, f"{path}.{key}", issues, depth)
        if spec is not None:
            specs.append(spec)
    if len(issues) != n_before:
        return None
    if not specs:
        return ALWAYS
    return specs[0] if len(specs) == 1 else MatchSpec("all", children=tuple(specs), implicit=True)


def _path_prefix(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
    value = nonempty_text(node, path, issues, "a path prefix")
    if value is None:
        return None
    if not value.startswith("/"):
        issues.add(node, f"{path}: expected a path starting with '/', found {value!r}")
        return None
    return MatchSpec("path_prefix", (value,))


def _path_regex(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
    pattern = regex(node, path, issues)
    return None if pattern is None else MatchSpec("path_regex", pattern=pattern)


def _extension(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
    items = text_list(node, path, issues, "an extension")
    if items is None:
        return None
    exts = []
    for value, item in items:  # every bad entry is reported, not just the first
        ext = value.strip()
        if "*" in ext or "?" in ext:
            # A shell glob: "*.png" would otherwise look for files ending in ".*.png".
            bare = ext.lstrip("*").lstrip(".")
            hint = f"; write {bare!r}" if bare and not any(c in bare for c in "*?/") else ""
            issues.add(item, f"{path}: {value!r} is a glob; an extension is written without '*' "
                       f"(a leading dot is optional){hint}")
            continue
        ext = ext[1:] if ext.startswith(".") else ext
        if not ext or "/" in ext or ext.startswith("."):
            issues.add(item, f"{path}: expected a file extension such as 'png', found {value!r}")
            continue
        exts.append(ext.lower())
    if len(exts) != len(items):
        return None
    return MatchSpec("extension", tuple(exts))


_HOST_RE = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")


def _host(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
    items = text_list(node, path, issues, "a host name")
    if items is None:
        return None
    hosts = []
    for value, item in items:
        host = value.strip().lower()
        if not _HOST_RE.fullmatch(host):
            hint = " (no port: rules see the host without it)" if re.search(r":\d+$", host) else ""
            issues.add(item, f"{path}: expected a host name such as 'www.example.com' or "
                       f"'*.example.com', found {value!r}{hint}")
            return None
        hosts.append(host)
    return MatchSpec("host", tuple(hosts))


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token


def _method(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
    items = text_list(node, path, issues, "a method")
    if items is None:
        return None
    methods = []
    for value, item in items:
        if not _TOKEN_RE.fullmatch(value):
            issues.add(item, f"{path}: expected an HTTP method such as 'GET', found {value!r}")
            return None
        if value != value.upper():
            issues.add(item, f"{path}: methods are case-sensitive; did you mean {value.upper()!r}?")
            return None
        methods.append(value)
    return MatchSpec("method", tuple(methods))


def _fields(kind: str) -> Reader:
    """header / cookie / query: a mapping of field name to regex; several fields all hold."""
    def build(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
        entries = mapping(node, path, issues)
        if entries is None:
            return None
        if not entries:
            issues.add(node, f"{path}: expected a mapping of {kind} name to regex, found an empty one")
            return None
        specs = []
        for name, (key, value) in entries.items():
            if not name or (kind == "header" and not _TOKEN_RE.fullmatch(name)):
                issues.add(key, f"{path}: bad {kind} name {name!r}")
                continue
            pattern = regex(value, f"{path}.{name}", issues)
            if pattern is not None:
                specs.append(MatchSpec(kind, name=name, pattern=pattern))
        if len(specs) != len(entries):
            return None
        return specs[0] if len(specs) == 1 else MatchSpec("all", children=tuple(specs), implicit=True)
    return build


def _list_of_matches(kind: str) -> Reader:
    def build(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
        if not expect(node, SequenceNode, path, issues):
            return None
        if not node.value:
            issues.add(node, f"{path}: expected a list of at least one match, found an empty list")
            return None
        specs = [_match(item, f"{path}[{i}]", issues, depth + 1) for i, item in enumerate(node.value)]
        children = tuple(s for s in specs if s is not None)
        if len(children) != len(specs):
            return None
        return MatchSpec(kind, children=children)
    return build


def _not(node: Node, path: str, issues: Issues, depth: int) -> MatchSpec | None:
    inner = _match(node, path, issues, depth + 1)
    return None if inner is None else MatchSpec("not", children=(inner,))


_READERS: dict[str, Reader] = {
    "path_prefix": _path_prefix, "path_regex": _path_regex, "extension": _extension,
    "host": _host, "method": _method, "header": _fields("header"), "cookie": _fields("cookie"),
    "query": _fields("query"), "any": _list_of_matches("any"), "all": _list_of_matches("all"),
    "not": _not,
}
