"""frontend.http_version: the request's version without asking llhttp for a formatted string
when should_keep_alive already says it. Checked against the parser itself for every version
llhttp accepts, with and without Connection fields, so a newer llhttp that accepts another
version (or keeps alive differently) fails here, not in production."""

from __future__ import annotations

import httptools
import pytest

from l7switch.proxy.frontend import http_version


class _Head:
    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


@pytest.mark.parametrize("connection", [b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n",
                                        b"Connection: Upgrade, foo\r\n", b"connection: x\r\n",
                                        b"Proxy-Connection: keep-alive\r\n"])
def test_deduced_version_is_the_parsers(connection: bytes) -> None:
    accepted = []
    for major in range(10):
        for minor in range(10):
            head = _Head()
            parser = httptools.HttpRequestParser(head)
            try:
                parser.feed_data(b"GET / HTTP/%d.%d\r\nHost: a\r\n%s\r\n" % (major, minor, connection))
            except httptools.HttpParserError:
                continue
            assert head.done
            accepted.append(parser.get_http_version())
            assert http_version(parser, parser.should_keep_alive(), bool(connection)) == \
                parser.get_http_version()
    assert "1.1" in accepted and "1.0" in accepted
