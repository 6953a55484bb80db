"""What a request is keyed on for hashing and locality schedulers (``hash_key``).

The key is the L7 counterpart of IPVS's destination address (dh, lblc, lblcr) or source address
(sh): by default the normalised path without the query, so ``/a.png?v=2`` and ``/a.png`` share a
cache slot, which is what an origin cache keyed on the file wants. Pure: a key function takes the
``RequestView`` rules already see plus the client's address and returns text, or None when the
request lacks the part asked for (then the scheduler balances that request by load, as HAProxy's
``balance hdr()`` falls back to round robin when the header is missing).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Final

from .rules import RequestView

KeyFunction = Callable[[RequestView, str], "str | None"]

#: Kinds taken alone, and kinds that name a header, cookie or query parameter after a colon.
PLAIN_KINDS: Final = ("path", "url", "host", "source")
NAMED_KINDS: Final = ("header", "cookie", "param")


def parse_hash_key(text: str) -> str:
    """The canonical spelling of a ``hash_key`` value ("header:x-user"); ValueError if bad."""
    s = text.strip()
    kind, colon, name = s.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if not colon and kind in PLAIN_KINDS:
        return kind
    if colon and kind in NAMED_KINDS:
        if not name or any(c in name for c in " \t;,="):
            raise ValueError(f"hash_key {text!r}: expected a name after '{kind}:', e.g. '{kind}:X-User'")
        # Header names are case-insensitive (RFC 9110 §5.1); cookie and parameter names are not.
        return f"{kind}:{name.lower() if kind == 'header' else name}"
    if colon and kind in PLAIN_KINDS:
        raise ValueError(f"hash_key {text!r}: '{kind}' takes no name after a colon")
    if not colon and kind in NAMED_KINDS:
        raise ValueError(f"hash_key {text!r}: '{kind}' needs a name, e.g. '{kind}:X-User'")
    known = list(PLAIN_KINDS) + [f"{k}:NAME" for k in NAMED_KINDS]
    close = difflib.get_close_matches(kind, list(PLAIN_KINDS + NAMED_KINDS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"hash_key {text!r} is not one of {', '.join(known)}{hint}")


def key_function(hash_key: str, trust_forwarded: bool = False) -> KeyFunction:
    """The function computing ``hash_key`` (canonical, from ``parse_hash_key``) per request."""
    kind, _, name = hash_key.partition(":")
    if kind == "path":
        return lambda view, client: view.path
    if kind == "url":
        return lambda view, client: view.path + "?" + view.query if view.query else view.path
    if kind == "host":
        return lambda view, client: view.host or None
    if kind == "header":
        return lambda view, client: view.header(name)
    if kind == "cookie":
        return lambda view, client: view.cookie(name)
    if kind == "param":
        return lambda view, client: view.param(name)
    if kind == "source":
        if not trust_forwarded:
            return lambda view, client: client
        return _forwarded_source
    raise ValueError(f"unknown hash_key {hash_key!r}")


def _forwarded_source(view: RequestView, client: str) -> str:
    """The last X-Forwarded-For entry: the address the proxy in front of us saw (earlier entries
    were written by the client or its proxies and can be forged, so they are not trusted)."""
    xff = view.header("x-forwarded-for")
    if xff:
        last = xff.rpartition(",")[2].strip()
        if last:
            return last
    return client


def describe(hash_key: str, trust_forwarded: bool = False) -> str:
    """Words for ``explain``: what the key is made of."""
    kind, _, name = hash_key.partition(":")
    return {
        "path": "the path without the query",
        "url": "the path with the query",
        "host": "the Host header",
        "header": f"header {name!r}",
        "cookie": f"cookie {name!r}",
        "param": f"query parameter {name!r}",
        "source": ("the last X-Forwarded-For address (else the client address)" if trust_forwarded
                   else "the client address"),
    }[kind]
