"""Pure tests: values in, values out. Opening a socket here is a mistake (a socket test in the
wrong folder, or code that does I/O where it should only decide), so it fails the test.

Name lookups are I/O too (a DNS query for a name /etc/hosts lacks), so the checker's resolver is
replaced by a fake: every name resolves except those under ``.invalid``, which RFC 6761 §6.4
reserves as never resolving. A test that wants the real resolver puts it back itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import l7switch.config.load


def _refuse(self: socket.socket, *args: object, **kwargs: object) -> None:
    raise RuntimeError("a pure test opened a socket; socket tests belong in tests/sockets/")


def fake_resolve(host: str, port: int) -> None:
    if host.lower().rstrip(".").endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "__init__", _refuse)
    monkeypatch.setattr(l7switch.config.load, "resolve_host", fake_resolve)
    yield
