"""Which pool a tls-passthrough connection goes to, by the server name in its ClientHello.

Pure: a listener's ``sni`` table and a name in, a pool name out. Exact names first, then the
``*.domain`` entries in file order (any depth of subdomain but not the apex, like the rules'
host match), then the listener's ``default_pool`` (which may be None: no pool).
"""

from __future__ import annotations

import functools

from ..spec import ListenerSpec


@functools.lru_cache(maxsize=64)
def sni_router(listener: ListenerSpec) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """Exact names as a dict; the ``*.domain`` entries as (".domain", pool) in file order.
    Built once per listener (ListenerSpec is frozen, hence hashable), not per connection."""
    exact: dict[str, str] = {}
    for name, pool in listener.sni:
        if not name.startswith("*."):
            exact.setdefault(name.lower(), pool)  # the first entry for a name wins
    wild = tuple((n[1:].lower(), p) for n, p in listener.sni if n.startswith("*."))
    return exact, wild


def route_sni(listener: ListenerSpec, sni: str | None) -> str | None:
    """The pool for a host name: exact match, then the first matching ``*.domain`` (any depth
    of subdomain but not the apex, like http/rules.py's host match), then the default (may be None)."""
    if sni is not None:
        exact, wild = sni_router(listener)
        pool = exact.get(sni)
        if pool is not None:
            return pool
        for suffix, pool in wild:
            if sni.endswith(suffix):
                return pool
    return listener.default_pool
