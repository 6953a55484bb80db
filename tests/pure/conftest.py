"""Pure tests: values in, values out. Opening a socket here is a mistake (a socket test in the
wrong folder, or code that does I/O where it should only decide), so it fails the test."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


def _refuse(self: socket.socket, *args: object, **kwargs: object) -> None:
    raise RuntimeError("a pure test opened a socket; socket tests belong in tests/sockets/")


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "__init__", _refuse)
    yield
