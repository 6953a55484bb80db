"""Reading ``pools.NAME.persistence`` and servers' ``cookie:`` values into a PersistenceSpec.

One method per pool, written as a one-key mapping so that its options sit under it::

    persistence: {cookie: {name: SRVID, mode: insert, secure: false, httponly: true,
                           max_age: 3600s, domain: example.com, redispatch: true}}
    persistence: {source: {timeout: 300s, netmask: 24, netmask6: 64, max_entries: 100000}}
    persistence: {ssl_session: {timeout: 300s, max_entries: 100000}}

Like config.py, every problem is recorded with its position and nothing raises; the caller
builds no pool when anything was wrong.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from yaml.nodes import Node

from ..balance.persistence import COOKIE_MODES, DELIM, cookie_ids
from ..spec import PersistenceSpec, PoolSpec, ServerSpec
from .yamlnodes import (Issues, boolean, did_you_mean, duration, integer, is_null, mapping, nonempty_text,
                        read_fields, text)

METHODS = ("cookie", "source", "ssl_session")
# RFC 6265 §4.1.1: cookie-name is an RFC 2616 token, the same set as RFC 9110 §5.6.2's.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A Domain attribute (RFC 6265 §4.1.2.3): host name labels, an optional leading dot.
_DOMAIN = re.compile(r"\.?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")

Reader = Callable[[Node, str, Issues], Any]


def _cookie_name(node: Node, path: str, issues: Issues) -> str | None:
    value = nonempty_text(node, path, issues, "a cookie name")
    if value is not None and not _TOKEN.fullmatch(value):
        issues.add(node, f"{path}: {value!r} is not a valid cookie name (RFC 6265: letters, digits "
                   "and !#$%&'*+-.^_`|~, no spaces, '=', ';' or ',')")
        return None
    return value


def _mode(node: Node, path: str, issues: Issues) -> str | None:
    value = nonempty_text(node, path, issues, "a cookie mode")
    if value is not None and value not in COOKIE_MODES:
        issues.add(node, f"{path}: unknown mode {value!r}{did_you_mean(value, COOKIE_MODES)}")
        return None
    return value


def _max_age(node: Node, path: str, issues: Issues) -> int | None:
    seconds = duration(node, path, issues)
    if seconds is None:
        return None
    if seconds < 1 or seconds != int(seconds):
        issues.add(node, f"{path}: Max-Age is whole seconds; expected at least 1s, found {node.value!r}")
        return None
    return int(seconds)


def _domain(node: Node, path: str, issues: Issues) -> str | None:
    value = nonempty_text(node, path, issues, "a domain")
    if value is not None and not _DOMAIN.fullmatch(value):
        issues.add(node, f"{path}: expected a domain such as 'example.com', found {value!r}")
        return None
    return value


def netmask_reader(bits: int) -> Reader:
    """A prefix length 0..bits; for IPv4 also a dotted mask ("255.255.255.0"), as ipvsadm -M."""
    def read(node: Node, path: str, issues: Issues) -> int | None:
        value = text(node, path, issues, "a prefix length")
        if value is None:
            return None
        s = value.strip()
        if bits == 32 and "." in s:
            try:
                return ipaddress.IPv4Network(f"0.0.0.0/{s}").prefixlen
            except ValueError:
                issues.add(node, f"{path}: {value!r} is not a netmask; expected a prefix length "
                           "0-32 such as 24, or a mask such as 255.255.255.0")
                return None
        if not s.isdigit() or int(s) > bits:
            issues.add(node, f"{path}: expected a prefix length from 0 to {bits}, found {value!r}")
            return None
        return int(s)
    return read


_COMMON: dict[str, Reader] = {"redispatch": boolean}
_TABLE: dict[str, Reader] = {"timeout": duration,
                             "max_entries": lambda n, p, i: integer(n, p, i, minimum=1)}
READERS: dict[str, dict[str, Reader]] = {
    "cookie": {"name": _cookie_name, "mode": _mode, "secure": boolean, "httponly": boolean,
               "max_age": _max_age, "domain": _domain, **_COMMON},
    "source": {**_TABLE, "netmask": netmask_reader(32), "netmask6": netmask_reader(128), **_COMMON},
    "ssl_session": {**_TABLE, **_COMMON},
}
# Spec field for each option where the names differ.
_FIELDS = {("cookie", "name"): "cookie_name", ("cookie", "mode"): "cookie_mode"}


def parse_persistence(node: Node, path: str, pool: str, servers: Sequence[ServerSpec],
                      issues: Issues) -> PersistenceSpec | None:
    """The pool's PersistenceSpec, or None (none written, or errors, which are recorded)."""
    if is_null(node):
        return None
    m = mapping(node, path, issues, METHODS)
    if m is None:
        return None
    if not m:
        if not node.value:  # else only unknown methods were written, and they are reported
            issues.add(node, f"{path}: expected one method: {', '.join(METHODS)}")
        return None
    if len(m) > 1:
        second = list(m.values())[1][0]
        issues.add(second, f"{path}: one method per pool, found {', '.join(m)}")
        return None
    method, (key, opts) = next(iter(m.items()))
    values: dict[str, Any] = {"method": method}
    if not is_null(opts):
        readers = READERS[method]
        entries = mapping(opts, f"{path}.{method}", issues, readers)
        if entries is None:
            return None
        read = read_fields(entries, readers, f"{path}.{method}", issues)
        if read is None:
            return None
        values.update((_FIELDS.get((method, name), name), v) for name, v in read.items())
    spec = PersistenceSpec(**values)
    if method == "cookie" and not _unique_ids(spec, key, path, pool, servers, issues):
        return None
    return spec


def _unique_ids(spec: PersistenceSpec, where: Node, path: str, pool: str,
                servers: Sequence[ServerSpec], issues: Issues) -> bool:
    """An explicit value equal to another server's derived id would make two servers one.
    (Duplicate explicit values are reported at the server, by server_cookie.)"""
    seen: dict[str, ServerSpec] = {}
    ok = True
    for s, ident in zip(servers, cookie_ids(pool, servers)):
        other = seen.setdefault(ident, s)
        # Either order: the explicit value may come before the server whose derived id it takes.
        if other is not s and (s.cookie is None) != (other.cookie is None):
            explicit, derived = (s, other) if s.cookie is not None else (other, s)
            issues.add(where, f"{path}: server {explicit.name!r} has cookie {ident!r}, the id derived "
                       f"for server {derived.name!r}; choose another value")
            ok = False
    return ok


def check_cookie_names(pools: Mapping[str, PoolSpec], entries: Mapping[str, tuple[Node, Node]],
                       issues: Issues) -> None:
    """Two pools inserting the same cookie name (with Path=/) overwrite each other's cookie in a
    client that visits both, so neither stays sticky. Allowed only when their servers carry the
    same ids (explicit, equal ``cookie:`` values: one session cookie meant for both pools)."""
    first: dict[str, tuple[str, frozenset[str]]] = {}
    for name, spec in pools.items():
        p = spec.persistence
        if p is None or p.method != "cookie":
            continue
        ids = frozenset(cookie_ids(name, spec.servers + spec.backup))
        other = first.setdefault(p.cookie_name, (name, ids))
        if other[0] != name and other[1] != ids:
            where = next((v for k, v in entries[name][1].value if k.value == "persistence"), entries[name][0])
            issues.add(where, f"pools.{name}.persistence: cookie {p.cookie_name!r} is also used by pool "
                       f"{other[0]!r}, whose servers have other ids; a client of both would have it "
                       "overwritten by each. Give each pool its own cookie name (or the same servers "
                       "the same explicit cookie values)")


def server_cookie(node: Node, path: str, issues: Issues, seen: dict[str, int]) -> str | None:
    """A server's explicit ``cookie:`` value (HAProxy ``server ... cookie X``). ``seen`` maps the
    values met so far in this pool to their line, for the duplicate check."""
    value = nonempty_text(node, path, issues, "a cookie value")
    if value is None:
        return None
    if not _TOKEN.fullmatch(value) or DELIM.decode() in value:
        issues.add(node, f"{path}: cookie value {value!r} must be a token (letters, digits and "
                   "!#$%&'*+-.^_`|) without '~', which separates the id in prefix mode")
        return None
    if value in seen:
        issues.add(node, f"{path}: duplicate cookie value {value!r} in this pool (first at line "
                   f"{seen[value]}); each server needs its own")
        return None
    seen[value] = node.start_mark.line + 1
    return value
