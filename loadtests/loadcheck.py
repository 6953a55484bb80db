"""What an answer from the demo must look like: the judgements the locustfile makes.

Plain functions of status, headers and body, with no locust in them, so tests/pure/
test_loadcheck.py can show that each one fails a wrong answer (a mis-route, a lost field, a
short download) instead of timing it as a fast success. Every function returns None when the
answer is right, else one line saying what is wrong; that line becomes the failure's name in
locust's report, so it names what was expected and what came.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from l7switch.config import load_config
from l7switch.devtools.origin import pattern_bytes
from l7switch.units import parse_size

# The rule file the switch under test serves. Pools and their servers' names are read from it,
# so adding a server to rules/demo.yaml needs no change here; L7_LOAD_RULES points elsewhere.
RULES = Path(os.environ.get("L7_LOAD_RULES") or Path(__file__).resolve().parents[1] / "rules" / "demo.yaml")

# What each kind of image must be: content type, and how its body starts (its magic number).
IMAGE_TYPES: dict[str, tuple[str, tuple[bytes, ...]]] = {
    "png": ("image/png", (b"\x89PNG\r\n\x1a\n",)),
    "gif": ("image/gif", (b"GIF87a", b"GIF89a")),
    "svg": ("image/svg+xml", (b"<svg", b"<?xml")),
    "ico": ("image/x-icon", (b"\x00\x00\x01\x00",)),
}


@functools.cache
def pool_servers(rules: Path = RULES) -> dict[str, frozenset[str]]:
    """Pool name -> the names of its servers (the X-Server values the demo origins send)."""
    config = load_config(rules)
    return {name: frozenset(s.name for s in pool.servers) for name, pool in config.pools.items()}


@dataclass(frozen=True)
class Want:
    """An answer's status, pool (whose server must name itself in X-Server) and content type;
    ``server``, when set, is the one server of the pool that must answer (a sticky session)."""
    pool: str
    ctype: str
    status: int = 200
    server: str = ""


def judge(want: Want, status: int, ctype: str, server: str,
          pools: dict[str, frozenset[str]] | None = None) -> str | None:
    """The first thing wrong with an answer's head, or None.

    The server is judged before the status: a request switched to the wrong pool (or server)
    often gets a plain answer there (a 404, a 401, or a 200 from a catch-all route), and
    "answered by html1, not pool cgi" says what went wrong where "status 404" would not.
    """
    servers = (pools if pools is not None else pool_servers()).get(want.pool, frozenset())
    if server not in servers:
        names = ", ".join(sorted(servers)) or "none"
        return f"answered by {server or 'no X-Server'}, not a server of pool {want.pool} ({names})"
    if want.server and server != want.server:
        return sticky_problem(want.server, server)
    if status != want.status:
        return f"status {status} from {server}, expected {want.status}"
    if ctype.split(";")[0].strip().lower() != want.ctype:
        return f"content type {ctype or 'none'!r} from {server}, expected {want.ctype}"
    return None


def image_want(path: str) -> Want:
    ext = path.rpartition(".")[2].lower()
    return Want("images", IMAGE_TYPES[ext][0] if ext in IMAGE_TYPES else "image/*")


def image_problem(path: str, body: bytes) -> str | None:
    """An image's body must be that kind of image (by its magic number), not merely bytes."""
    ext = path.rpartition(".")[2].lower()
    magic = IMAGE_TYPES.get(ext, ("", ()))[1]
    if not body.startswith(magic):
        return f"{path}: body is not a {ext.upper()} image ({body[:8]!r}...)"
    return None


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.srcs.append(src)


def page_images(page_url: str, text: str) -> list[str]:
    """The paths of a page's ``<img src>``, resolved against the page, once each, in order.

    Only images on the page's own host count: a browser would fetch others from elsewhere,
    not through the switch under test.
    """
    parser = _Images()
    parser.feed(text)
    parser.close()
    base = urlsplit(page_url)
    out: list[str] = []
    for src in parser.srcs:
        url = urlsplit(urljoin(page_url, src))
        if (url.scheme, url.netloc) != (base.scheme, base.netloc):
            continue
        path = url.path + (f"?{url.query}" if url.query else "")
        if path not in out:
            out.append(path)
    return out


def form_echo_problem(form: dict[str, str], server: str, text: str) -> str | None:
    """The CGI form's answer must thank the poster and repeat every field as posted."""
    lines = text.splitlines()
    expected = [f"Thank you, {form['name']}: {server} received your form."]
    expected += [f"{key}: {value}" for key, value in form.items()]
    for line in expected:
        if line not in lines:
            return f"form answer from {server} lacks {line[:60]!r}"
    return None


def account_problem(user: str, server: str, text: str) -> str | None:
    """``/app/account`` must name the logged-in user and the server that answered."""
    try:
        doc = json.loads(text)
    except ValueError:
        return f"account answer from {server} is not JSON: {text[:60]!r}"
    if not isinstance(doc, dict) or doc.get("user") != user or doc.get("server") != server:
        return f"account answer from {server} is {text[:80]!r}; expected user {user!r}"
    return None


def sticky_problem(first: str, now: str) -> str | None:
    """A logged-in user's requests must all reach the server that logged them in."""
    if now != first:
        return (f"server changed from {first} to {now}: the SRVID cookie did not keep the "
                "session on one server")
    return None


@functools.cache
def file_digest(size: str) -> tuple[int, str]:
    """Length and SHA-256 of ``/files/<size>.bin`` (the demo serves ``pattern_bytes``)."""
    n = parse_size(size)
    return n, hashlib.sha256(pattern_bytes(n)).hexdigest()


def download_problem(size: str, content_length: str, received: int, sha256: str) -> str | None:
    n, digest = file_digest(size)
    if content_length != str(n):
        return f"{size}.bin: Content-Length {content_length or 'none'}, expected {n}"
    if received != n:
        return f"{size}.bin: received {received} of {n} bytes"
    if sha256 != digest:
        return f"{size}.bin: {n} bytes arrived but not the right ones (SHA-256 differs)"
    return None
