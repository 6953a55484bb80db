"""Compiled request matchers and the router: which pool a request goes to.

Pure code, no I/O. The config loader checks each rule's ``match`` mapping into a ``MatchSpec``
tree (spec.py); ``Router.from_specs`` compiles those into ``Condition`` objects once; every condition carries a ready-made ``test`` closure
(regexes already compiled, names already lower-cased), so ``Router.route`` is a loop of plain
function calls. It runs once per proxied request, so nothing here allocates on the hot path
except what a rule explicitly asks for (cookies and query parameters are parsed lazily, once).

``explain`` is the slow twin of ``test``: it evaluates every condition (no short-circuit) and
says in words why each one held or not, for ``l7switch explain`` and for debugging.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..spec import MatchSpec, RuleSpec
from .message import normalize_path


class RequestView:
    """The parts of a request rules look at, built by the frontend for each request.

    The frontend passes the head's fields as bytes (``raw``) and they are decoded only if a rule
    looks at them; tests and ``explain`` pass text. One class, with ``headers`` a property over
    both: a subclass that turned a slot into a property would be read past by code compiled
    with mypyc (which reads a native class's slots directly), so the laziness lives here.
    """

    __slots__ = ("method", "path", "query", "host", "_headers", "_raw", "_cookies", "_params")

    def __init__(self, method: str, path: str, query: str, host: str,
                 headers: list[tuple[str, str]] | None = None,
                 raw: list[tuple[bytes, bytes]] | None = None) -> None:
        self.method = method
        self.path = path  # normalized by the frontend, without the query
        self.query = query  # text after '?', '' if none
        self.host = host  # lower-case, port stripped
        self._headers = headers  # (lower-case name, value) as received, in order
        self._raw = raw  # the same as bytes, decoded on first use
        # Parsed on first use only: most rule sets never look at cookies or the query.
        self._cookies: dict[str, str] | None = None
        self._params: dict[str, str] | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        h = self._headers
        if h is None:
            raw = self._raw or []
            h = self._headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        return h

    def header(self, name: str) -> str | None:
        """All values of header ``name`` joined with ", " (RFC 9110 §5.3); None if absent."""
        name = name.lower()
        value: str | None = None
        for n, v in self.headers:
            if n == name:
                value = v if value is None else value + ", " + v
        return value

    def cookie(self, name: str) -> str | None:
        """Cookie ``name`` from all Cookie headers (RFC 6265 §5.4 "; "-separated pairs)."""
        cookies = self._cookies
        if cookies is None:
            cookies = {}
            for n, v in self.headers:
                if n != "cookie":
                    continue
                for pair in v.split(";"):
                    k, eq, val = pair.strip().partition("=")
                    # The first occurrence wins: browsers send the most specific cookie first
                    # (RFC 6265 §5.4 step 2), and that is the one servers conventionally use.
                    if eq and k and k not in cookies:
                        cookies[k] = val
            self._cookies = cookies
        return cookies.get(name)

    def param(self, name: str) -> str | None:
        """First value of query parameter ``name`` ('' for ``?a`` or ``?a=``); None if absent."""
        params = self._params
        if params is None:
            params = {}
            if self.query:
                for k, v in parse_qsl(self.query, keep_blank_values=True):
                    params.setdefault(k, v)
            self._params = params
        return params.get(name)

    @classmethod
    def from_url(cls, method: str, url: str, headers: list[tuple[str, str]]) -> RequestView:
        """A view for ``explain``: ``url`` is absolute (http://host/p?q) or origin-form (/p?q).

        As in RFC 9112 §3.2.2, the authority of an absolute URL wins over a Host header; with an
        origin-form URL the Host header (if any) gives the host.
        """
        hdrs = [(n.lower(), v) for n, v in headers]
        if not url.startswith("/") and "://" not in url:
            url = "http://" + url  # "www.example.com/x" typed on a command line
        parts = urlsplit(url)
        authority = parts.netloc if parts.scheme else ""
        if authority:
            hdrs = [(n, v) for n, v in hdrs if n != "host"] + [("host", authority)]
        else:
            authority = next((v for n, v in hdrs if n == "host"), "")
        path = parts.path if parts.scheme else url.split("?", 1)[0].split("#", 1)[0]
        # Route on exactly what the proxy would route on (dot segments, %-encoded unreserved).
        return cls(method, normalize_path(path or "/"), parts.query, host_of(authority), hdrs)

    def __repr__(self) -> str:
        q = "?" + self.query if self.query else ""
        return f"<RequestView {self.method} {self.host}{self.path}{q}>"


def host_of(authority: str) -> str:
    """Host part of an authority, lower-cased, without userinfo or port ("[::1]" keeps brackets)."""
    host = authority.rpartition("@")[2].strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.partition(":")[0]


def _q(text: str) -> str:
    """A regex quoted as written (repr would double every backslash)."""
    return "'" + text + "'"


def _verb(ok: bool) -> str:
    return "matches" if ok else "does not match"


# ---- conditions ----------------------------------------------------------------------------------

class Condition:
    """One compiled test: ``test`` on the hot path, ``explain`` the human version.

    ``test`` is a method each kind overrides, not a closure: compiled, a method call is a C
    call through the class's table, a closure a Python call (~1,000 instructions a rule)."""

    __slots__ = ()

    def test(self, view: RequestView) -> bool:
        raise NotImplementedError

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        raise NotImplementedError


class Always(Condition):
    """A rule without ``match`` (or with an empty one) takes every request."""

    __slots__ = ()

    def test(self, view: RequestView) -> bool:
        return True

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        return True, ["no conditions: matches every request"]


class PathPrefix(Condition):
    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def test(self, view: RequestView) -> bool:
        return view.path.startswith(self.prefix)

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        ok = self.test(view)
        return ok, [f"path_prefix {self.prefix!r} {_verb(ok)} {view.path!r}"]


class PathRegex(Condition):
    __slots__ = ("pattern", "search")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.search = pattern.search  # bound once: a call per request, no method lookup

    def test(self, view: RequestView) -> bool:
        return self.search(view.path) is not None

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        ok = self.test(view)
        return ok, [f"path_regex {_q(self.pattern.pattern)} {_verb(ok)} {view.path!r}"]


class Extension(Condition):
    """Suffix of the path's last segment, case-insensitive; ``tar.gz`` works too."""

    __slots__ = ("extensions", "suffixes")

    def __init__(self, extensions: Sequence[str]) -> None:
        # Stored lower-case without the dot; tested as ".ext" suffixes in one endswith() call.
        self.extensions = tuple(e.lower().lstrip(".") for e in extensions)
        self.suffixes = tuple("." + e for e in self.extensions)

    def test(self, view: RequestView) -> bool:
        p = view.path
        return p[p.rfind("/") + 1:].lower().endswith(self.suffixes)

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        ok = self.test(view)
        exts = ", ".join(self.extensions)
        return ok, [f"extension [{exts}] {_verb(ok)} {view.path!r}"]


class Host(Condition):
    """Exact host names, or ``*.example.com`` for any subdomain (but not the apex)."""

    __slots__ = ("patterns", "exact", "suffixes")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(p.lower() for p in patterns)
        self.exact = frozenset(p for p in self.patterns if not p.startswith("*."))
        # "*.example.com" -> ".example.com": a suffix test that the apex cannot pass.
        self.suffixes = tuple(p[1:] for p in self.patterns if p.startswith("*."))

    def test(self, view: RequestView) -> bool:
        host = view.host
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        ok = self.test(view)
        pats = self.patterns[0] if len(self.patterns) == 1 else "[" + ", ".join(self.patterns) + "]"
        return ok, [f"host {pats!r} {_verb(ok)} {view.host!r}"]


class Method(Condition):
    __slots__ = ("methods", "allowed")

    def __init__(self, methods: Sequence[str]) -> None:
        self.methods = tuple(methods)
        self.allowed = frozenset(methods)  # case-sensitive, as RFC 9110 §9.1 says

    def test(self, view: RequestView) -> bool:
        return view.method in self.allowed

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        ok = self.test(view)
        return ok, [f"method [{', '.join(self.methods)}] {_verb(ok)} {view.method!r}"]


class _Field(Condition):
    """A named request field (header/cookie/param) tested with a regex; absent never matches."""

    __slots__ = ("name", "key", "pattern")
    kind = ""

    def __init__(self, name: str, pattern: re.Pattern[str]) -> None:
        self.name = name  # as written, for explain
        self.key = self._normalize(name)  # as looked up
        self.pattern = pattern

    @staticmethod
    def _normalize(name: str) -> str:
        return name

    def get(self, view: RequestView) -> str | None:
        raise NotImplementedError

    def test(self, view: RequestView) -> bool:
        value = self.get(view)
        return value is not None and self.pattern.search(value) is not None

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        value = self.get(view)
        what = f"{self.kind} {self.name!r} ~ {_q(self.pattern.pattern)}"
        if value is None:
            return False, [f"{what}: {self.kind} is absent"]
        ok = self.pattern.search(value) is not None
        return ok, [f"{what} {_verb(ok)} {value!r}"]


class Header(_Field):
    __slots__ = ()
    kind = "header"

    @staticmethod
    def _normalize(name: str) -> str:
        return name.lower()  # field names are case-insensitive (RFC 9110 §5.1)

    def get(self, view: RequestView) -> str | None:
        return view.header(self.key)


class Cookie(_Field):
    __slots__ = ()
    kind = "cookie"

    def get(self, view: RequestView) -> str | None:
        return view.cookie(self.key)


class Query(_Field):
    __slots__ = ()
    kind = "query"

    def get(self, view: RequestView) -> str | None:
        return view.param(self.key)


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


class AllOf(Condition):
    """Every condition holds. ``implicit`` is the several keys of one match mapping."""

    __slots__ = ("conditions", "implicit")

    def __init__(self, conditions: Sequence[Condition], implicit: bool = False) -> None:
        self.conditions = tuple(conditions)
        self.implicit = implicit

    def test(self, view: RequestView) -> bool:
        for c in self.conditions:
            if not c.test(view):
                return False
        return True

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        ok, lines = True, []
        for c in self.conditions:
            c_ok, c_lines = c.explain(view)
            ok = ok and c_ok
            lines += c_lines
        if self.implicit:
            return ok, lines
        held = "all hold" if ok else "not all hold"
        return ok, [f"all of {len(self.conditions)}: {held}"] + _indent(lines)


class AnyOf(Condition):
    __slots__ = ("conditions",)

    def __init__(self, conditions: Sequence[Condition]) -> None:
        self.conditions = tuple(conditions)

    def test(self, view: RequestView) -> bool:
        for c in self.conditions:
            if c.test(view):
                return True
        return False

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        ok, lines = False, []
        for i, c in enumerate(self.conditions, 1):
            c_ok, c_lines = c.explain(view)
            ok = ok or c_ok
            lines.append(f"alternative {i}: {'match' if c_ok else 'no match'}")
            lines += _indent(c_lines)
        held = "one holds" if ok else "none holds"
        return ok, [f"any of {len(self.conditions)}: {held}"] + _indent(lines)


class Not(Condition):
    __slots__ = ("condition",)

    def __init__(self, condition: Condition) -> None:
        self.condition = condition

    def test(self, view: RequestView) -> bool:
        return not self.condition.test(view)

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        inner_ok, lines = self.condition.explain(view)
        verdict = "holds (inner did not match)" if not inner_ok else "fails (inner matched)"
        return not inner_ok, [f"not: {verdict}"] + _indent(lines)


# ---- rules and the router ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rule:
    name: str | None
    index: int  # 0-based position in the rule list
    pool: str
    line: int  # 1-based line of the rule in its file (0 if built in code)
    condition: Condition = field(default_factory=Always, compare=False, repr=False)

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"#{self.index + 1}"

    def matches(self, view: RequestView) -> bool:
        return self.condition.test(view)

    def explain(self, view: RequestView) -> tuple[bool, list[str]]:
        return self.condition.explain(view)


def compile_match(spec: MatchSpec) -> Condition:
    """The condition a checked ``MatchSpec`` (config/matches.py) stands for."""
    kind = spec.kind
    if kind == "always":
        return Always()
    if kind == "path_prefix":
        return PathPrefix(spec.values[0])
    if kind == "extension":
        return Extension(spec.values)
    if kind == "host":
        return Host(spec.values)
    if kind == "method":
        return Method(spec.values)
    if kind in ("all", "any", "not"):
        children = [compile_match(c) for c in spec.children]
        if kind == "all":
            return AllOf(children, implicit=spec.implicit)
        return AnyOf(children) if kind == "any" else Not(children[0])
    assert spec.pattern is not None, spec
    if kind == "path_regex":
        return PathRegex(spec.pattern)
    field_cls = {"header": Header, "cookie": Cookie, "query": Query}[kind]
    return field_cls(spec.name, spec.pattern)


def compile_rules(specs: Sequence[RuleSpec]) -> tuple[Rule, ...]:
    return tuple(Rule(s.name, s.index, s.pool, s.line, compile_match(s.match)) for s in specs)


def _describe(rule: Rule) -> str:
    """"rule #2 'images' (line 14)" -- the number, the name if any, and where to find it."""
    name = f" {rule.name!r}" if rule.name is not None else ""
    where = f" (line {rule.line})" if rule.line else ""
    return f"rule #{rule.index + 1}{name}{where}"


class Router:
    """First matching rule wins; no match means the default pool."""

    __slots__ = ("rules", "default_pool", "_table")

    def __init__(self, rules: Sequence[Rule], default_pool: str) -> None:
        self.rules = tuple(rules)
        self.default_pool = default_pool
        # Flat (condition, rule, pool) rows so route() does no attribute lookups beyond the tuple.
        self._table = tuple((r.condition, r, r.pool) for r in self.rules)

    @classmethod
    def from_specs(cls, rules: Sequence[RuleSpec], default_pool: str) -> Router:
        """The router for a loaded rule file (``Config.rules`` and ``Config.default_pool``)."""
        return cls(compile_rules(rules), default_pool)

    def route(self, view: RequestView) -> tuple[Rule | None, str]:
        for condition, rule, pool in self._table:
            if condition.test(view):
                return rule, pool
        return None, self.default_pool

    def explain(self, view: RequestView, pools: Mapping[str, Any] | None = None) -> str:
        """A multi-line report: each rule tried, why it matched or not, and the decision.

        ``pools`` (name -> PoolSpec) adds the chosen pool's scheduler and servers.
        """
        q = "?" + view.query if view.query else ""
        out = [f"request: {view.method} {view.path}{q}  (host {view.host!r})"]
        chosen: Rule | None = None
        for rule in self.rules:
            ok, lines = rule.explain(view)
            out.append(f"{_describe(rule)}: {'MATCH' if ok else 'no match'}")
            out += ["    " + line for line in lines]
            if ok:
                chosen = rule
                break
        if chosen is not None:
            rest = len(self.rules) - chosen.index - 1
            if rest:
                out.append(f"({rest} later rule{'s' if rest != 1 else ''} not tried)")
            out.append(f"decision: {_describe(chosen)} -> pool {chosen.pool!r}")
            pool_name = chosen.pool
        else:
            why = "no rule matched" if self.rules else "no rules"
            out.append(f"decision: {why} -> default pool {self.default_pool!r}")
            pool_name = self.default_pool
        spec = pools.get(pool_name) if pools is not None else None
        if spec is not None:
            out.append(f"pool {pool_name!r}: scheduler {spec.scheduler}, {len(spec.servers)} server(s)")
            for s in spec.servers:
                addr = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
                named = f" ({s.name})" if s.name != addr else ""
                out.append(f"    {addr}{named} weight {s.weight}")
        return "\n".join(out)

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return f"<Router {len(self.rules)} rules, default {self.default_pool!r}>"
