"""Reading a composed YAML node tree, with positions, into checked values.

Why nodes and not ``yaml.safe_load``: YAML 1.1 turns ``yes``/``on``/``off`` into booleans and
``010`` into 8, but a rule file means the text the webmaster wrote (``header: {X-Beta: yes}``
matches the text "yes"). Nodes also keep ``start_mark``, so every problem can be reported at its
line and column, and duplicate keys (which safe_load silently lets the last one win) are caught.

Every helper records problems in an ``Issues`` collector and returns None instead of raising, so
one pass over the file finds everything that is wrong.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ConfigIssue
from ..units import parse_duration, parse_size

NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"


class Issues:
    """Collects located problems for one file."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.items: list[ConfigIssue] = []

    def add(self, node: Node | Any, message: str) -> None:
        """Record ``message`` at ``node`` (a Node or a yaml Mark)."""
        mark: Any = getattr(node, "start_mark", node)
        self.at(mark.line + 1, mark.column + 1, message)

    def at(self, line: int, column: int, message: str) -> None:
        self.items.append(ConfigIssue(self.filename, line, column, message))

    def sorted(self) -> list[ConfigIssue]:
        return sorted(self.items, key=lambda i: (i.line, i.column))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


def compose(text: str, issues: Issues) -> Node | None:
    """The document's root node, or None (empty document, or a syntax error recorded)."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context == "while scanning a simple key" and e.context_mark is not None:
            # "could not find expected ':'" is noticed only at the token after the key, on the
            # next line (past the end when the key is the last line): the key is the mistake.
            mark = e.context_mark
        what = e.problem or e.context or "syntax error"
        context = f" ({e.context})" if e.problem and e.context else ""
        if mark is None:
            issues.at(1, 1, f"invalid YAML: {what}{context}")
        else:
            issues.at(*_within(text, mark.line, mark.column), f"invalid YAML: {what}{context}")
    except yaml.reader.ReaderError as e:  # a control character or bad encoding
        before = text[: e.position]
        line = before.count("\n") + 1
        issues.at(line, e.position - (before.rfind("\n") + 1) + 1, f"invalid YAML: {e.reason} "
                  f"(character {e.character!r})")
    except yaml.YAMLError as e:
        issues.at(1, 1, f"invalid YAML: {e}")
    return None


_LINE_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")  # what YAML 1.1 counts as one (§5.4)


def _within(text: str, line: int, column: int) -> tuple[int, int]:
    """1-based (line, column) for a 0-based mark, moved back to just after the last non-blank
    line when it points past it: an error found at the end of input belongs to what came last,
    not to a line the editor shows as empty or does not show at all."""
    lines = _LINE_BREAK.split(text)
    last = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].strip()), 0)
    if line > last:
        return last + 1, len(lines[last].rstrip()) + 1
    return line + 1, column + 1


def kind(node: Node) -> str:
    """How a node reads in an error message: 'a mapping', 'a list', 'nothing', "'text'"."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_null(node):
        return "nothing"
    return repr(node.value)


#: Words that turn a feature off where a section or a value may be written as ``off``.
OFF_WORDS = ("off", "none", "false", "no")


def is_off(node: Node) -> bool:
    """A scalar ``off`` (or none, false, no), any case."""
    return isinstance(node, ScalarNode) and node.value.strip().lower() in OFF_WORDS


def is_null(node: Node) -> bool:
    """``key:`` with no value (or ``~``/``null`` written plainly)."""
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG and node.style is None


def did_you_mean(word: str, choices: Iterable[str], known: str = "expected one of") -> str:
    """"; did you mean 'x'?" for a near miss (case-insensitively), else a list of the choices."""
    choices = sorted(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {lowered[close[0]]!r}?"
    if not choices:
        return ""
    return f"; {known}: {', '.join(choices)}"


def expect(node: Node, cls: type[Node], path: str, issues: Issues) -> bool:
    if isinstance(node, cls):
        return True
    wanted = {MappingNode: "a mapping", SequenceNode: "a list", ScalarNode: "a single value"}[cls]
    issues.add(node, f"{path}: expected {wanted}, found {kind(node)}")
    return False


def mapping(node: Node, path: str, issues: Issues, allowed: Iterable[str] | None = None,
            required: Iterable[str] = ()) -> dict[str, tuple[Node, Node]] | None:
    """A mapping's entries as {key text: (key node, value node)}, in file order.

    Reports: not a mapping, non-scalar keys, duplicate keys, keys outside ``allowed`` (with a
    did-you-mean), and ``required`` keys that are missing. Merge keys (``<<: *anchor``) are
    expanded; explicit keys override merged ones, as YAML's merge spec says.
    """
    if not expect(node, MappingNode, path, issues):
        return None
    out: dict[str, tuple[Node, Node]] = {}
    merged: dict[str, tuple[Node, Node]] = {}
    allowed_set = None if allowed is None else list(allowed)
    for key, value in node.value:
        if key.tag == MERGE_TAG:
            sources = value.value if isinstance(value, SequenceNode) else [value]
            for src in sources:
                if not isinstance(src, MappingNode):
                    issues.add(src, f"{path}: '<<' expects a mapping (or list of them), found {kind(src)}")
                    continue
                sub = mapping(src, path, Issues(issues.filename)) or {}
                for k, kv in sub.items():
                    merged.setdefault(k, kv)
            continue
        if not isinstance(key, ScalarNode):
            issues.add(key, f"{path}: keys must be plain strings, found {kind(key)}")
            continue
        name = key.value
        if name in out:
            first = out[name][0].start_mark.line + 1
            where = f"{path}: duplicate" if path else "duplicate top-level"
            issues.add(key, f"{where} key {name!r} (first defined at line {first})")
            continue
        out[name] = (key, value)
    for name, kv in merged.items():
        out.setdefault(name, kv)
    if allowed_set is not None:
        for name, (key, _) in list(out.items()):
            if name not in allowed_set:
                where = f"{path}: unknown key" if path else "unknown top-level key"
                issues.add(key, f"{where} {name!r}{did_you_mean(name, allowed_set)}")
                del out[name]
    for name in required:
        if name not in out:
            where = f"{path}: missing" if path else "missing"
            issues.add(node, f"{where} required key {name!r}")
    return out


def text(node: Node, path: str, issues: Issues, what: str = "a string") -> str | None:
    """The scalar's text exactly as written (no YAML 1.1 bool/int/float conversion)."""
    if not isinstance(node, ScalarNode) or is_null(node):
        issues.add(node, f"{path}: expected {what}, found {kind(node)}")
        return None
    return node.value


def nonempty_text(node: Node, path: str, issues: Issues, what: str = "a string") -> str | None:
    value = text(node, path, issues, what)
    if value is not None and not value.strip():
        issues.add(node, f"{path}: expected {what}, found an empty string")
        return None
    return value


def text_list(node: Node, path: str, issues: Issues,
              what: str = "a string") -> list[tuple[str, Node]] | None:
    """A string or a non-empty list of strings, as [(text, node)]."""
    if isinstance(node, SequenceNode):
        if not node.value:
            issues.add(node, f"{path}: expected {what} or a list of them, found an empty list")
            return None
        out = []
        for i, item in enumerate(node.value):
            value = nonempty_text(item, f"{path}[{i}]", issues, what)
            if value is not None:
                out.append((value, item))
        return out if len(out) == len(node.value) else None
    value = nonempty_text(node, path, issues, f"{what} or a list of them")
    return None if value is None else [(value, node)]


_INT_RE = re.compile(r"[+]?[0-9][0-9_]*")


def integer(node: Node, path: str, issues: Issues, minimum: int = 0) -> int | None:
    value = text(node, path, issues, "an integer")
    if value is None:
        return None
    if not _INT_RE.fullmatch(value.strip()):
        issues.add(node, f"{path}: expected an integer >= {minimum}, found {value!r}")
        return None
    n = int(value.strip().replace("_", ""))
    if n < minimum:
        issues.add(node, f"{path}: expected an integer >= {minimum}, found {value!r}")
        return None
    return n


_TRUE = {"true", "yes", "on", "y"}
_FALSE = {"false", "no", "off", "n"}


def boolean(node: Node, path: str, issues: Issues) -> bool | None:
    """YAML 1.1's spellings, since here a boolean is really wanted."""
    value = text(node, path, issues, "true or false")
    if value is None:
        return None
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    issues.add(node, f"{path}: expected true or false (or yes/no, on/off), found {value!r}")
    return None


def record(node: Node, issues: Issues, name: str, cls: type,
           readers: dict[str, Callable[[Node, str, Issues], Any]]) -> Any:
    """A flat section read into dataclass ``cls``: one reader per field, missing keys keep defaults.

    On any error the defaults come back (the error is recorded; the Config will not be built)."""
    m = mapping(node, name, issues, readers)
    values = read_fields(m, readers, name, issues) if m is not None else None
    return cls() if values is None else cls(**values)


def read_fields(m: dict[str, tuple[Node, Node]], readers: dict[str, Callable[[Node, str, Issues], Any]],
                path: str, issues: Issues) -> dict[str, Any] | None:
    """Each key of mapping ``m`` (as ``mapping()`` returns it) read by its reader: the values by
    key, or None if any reader failed (every failure is recorded: all are read)."""
    values: dict[str, Any] = {}
    failed = False
    for key, (_, value) in m.items():
        v = readers[key](value, f"{path}.{key}", issues)
        failed = failed or v is None
        values[key] = v
    return None if failed else values


def plain_value(node: Node, path: str, issues: Issues) -> Any:
    """Ordinary YAML construction, for free-form values (scheduler options)."""
    try:
        return yaml.constructor.SafeConstructor().construct_document(node)
    except yaml.YAMLError as e:
        issues.add(node, f"{path}: cannot read value: {e}")
        return None


# ---- values written as text: durations, sizes, addresses, regexes -------------------------------

def parse_address(value: str) -> tuple[str, int]:
    """(host, port) from "host:port" or "[v6]:port"; the host comes back without brackets."""
    s = value.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or not s[end + 1:].startswith(":"):
            raise ValueError(f"expected '[IPv6]:port', found {value!r}")
        host, port_text = s[1:end], s[end + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address (in {value!r})") from None
    else:
        host, colon, port_text = s.rpartition(":")
        if not colon or not host:
            raise ValueError(f"expected host:port, found {value!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, e.g. '[::1]:80', found {value!r}")
        if re.search(r"[\s/@\[\]]", host):
            raise ValueError(f"bad host {host!r} in {value!r}")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError(f"port must be a number 0-65535, found {port_text!r} in {value!r}")
    return host, int(port_text)


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 literal (no brackets), as opposed to a host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def address(node: Node, path: str, issues: Issues) -> tuple[str, int] | None:
    value = nonempty_text(node, path, issues, "an address host:port")
    if value is None:
        return None
    try:
        return parse_address(value)
    except ValueError as e:
        issues.add(node, f"{path}: {e}")
        return None


def regex(node: Node, path: str, issues: Issues) -> re.Pattern[str] | None:
    value = text(node, path, issues, "a regular expression")
    if value is None:
        return None
    try:
        return re.compile(value)
    except re.error as e:
        issues.add(node, f"{path}: bad regular expression {value!r}: {e}")
        return None


def duration(node: Node, path: str, issues: Issues, allow_zero: bool = False) -> float | None:
    value = text(node, path, issues, "a duration")
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        issues.add(node, f"{path}: {e}")
        return None
    if seconds < 0 or (seconds == 0 and not allow_zero):
        issues.add(node, f"{path}: expected a duration greater than 0, found {value!r}")
        return None
    return seconds


def size(node: Node, path: str, issues: Issues, minimum: int = 1) -> int | None:
    value = text(node, path, issues, "a size")
    if value is None:
        return None
    try:
        n = parse_size(value)
    except ValueError as e:
        issues.add(node, f"{path}: {e}")
        return None
    if n < minimum:
        issues.add(node, f"{path}: expected a size of at least {minimum}, found {value!r}")
        return None
    return n
