"""The scheduler interface and the registry of schedulers, keyed by ipvsadm's names.

A scheduler is pure: it is given the pool's servers (whose live counters the core keeps up to
date) and, per request, a key (a path, a client address...; None when the algorithm needs none).
It returns a server, or None when none is available. It never sees the request or touches a
socket. The optional hooks mirror HAProxy's ``lbprm`` callbacks (backend-t.h): any may be left
as the no-op default.

Adding an algorithm: one module in this package with a ``Scheduler`` subclass decorated by
``@register``, and an import line at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..backends import Server

SCHEDULERS: dict[str, type[Scheduler]] = {}


class Scheduler:
    """Base class: subclasses set ``name`` and implement ``pick``."""

    name: ClassVar[str] = ""
    #: What the scheduler hashes on, if anything; the frontend computes only the keys needed.
    needs_key: ClassVar[bool] = False
    #: Option names accepted under ``scheduler_options`` (validated by the config checker).
    options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None) -> None:
        self.servers = list(servers)
        self.opts = dict(options or {})

    def pick(self, key: str | None) -> Server | None:
        raise NotImplementedError

    # Hooks; the pool calls them after it has updated the server's counters or state.
    def on_start(self, server: Server) -> None:
        """A request was sent to ``server`` (its ``inflight`` already counts it)."""

    def on_end(self, server: Server) -> None:
        """A request to ``server`` finished."""

    def on_up(self, server: Server) -> None:
        """``server`` became available again."""

    def on_down(self, server: Server) -> None:
        """``server`` failed and is masked."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} servers={len(self.servers)}>"


def register(cls: type[Scheduler]) -> type[Scheduler]:
    if not cls.name or cls.name in SCHEDULERS:
        raise ValueError(f"scheduler name missing or taken: {cls.name!r}")
    SCHEDULERS[cls.name] = cls
    return cls


def create(name: str, servers: Sequence[Server], options: Mapping[str, Any] | None = None) -> Scheduler:
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(sorted(SCHEDULERS))}") from None
    return cls(servers, options)


from . import rr, wlc  # noqa: E402,F401  (registration side effect)
