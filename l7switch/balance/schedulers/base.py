"""The scheduler interface, its typed options, and helpers several algorithms share.

A scheduler is pure: it is given the pool's servers (whose live counters ``inflight``, ``total``
and ``latency`` the core keeps up to date) and, per request, a key (a path, a client address...;
None when the algorithm needs none or the request lacks it). It returns a server, or None when
none is available. It never sees the request or touches a socket. The hooks mirror HAProxy's
``lbprm`` callbacks (backend-t.h): any may be left as the no-op default.

Time comes from ``clock`` (``time.monotonic`` unless a test passes a fake one), and lookup tables
that are costly to build are rebuilt through ``defer`` so the switch can build them off the event
loop while the old table keeps answering.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from ..servers import Server
from ...http.keys import parse_hash_key
from ...units import parse_duration


# ---- options ----------------------------------------------------------------------------------

class Option:
    """One ``scheduler_options`` knob: a parser (raises ValueError with a readable message), a
    default, and a line of documentation."""

    __slots__ = ("parse", "default", "doc")

    def __init__(self, parse: Callable[[Any], Any], default: Any, doc: str) -> None:
        self.parse = parse
        self.default = default
        self.doc = doc


def integer(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, found {v!r}")
        if v < lo or (hi is not None and v > hi):
            span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"expected an integer {span}, found {v}")
        return v
    return parse


def number(above: float) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"expected a number, found {v!r}")
        if not v > above:
            raise ValueError(f"expected a number greater than {above:g}, found {v:g}")
        return float(v)
    return parse


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, found {v!r}")
    return v


def duration(v: Any) -> float:
    """Seconds, from a number or "300s"/"6m"; must be positive."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration such as '60s', found {v!r}")
    seconds = float(v) if isinstance(v, (int, float)) else parse_duration(str(v))
    if seconds <= 0:
        raise ValueError(f"expected a duration greater than 0, found {v!r}")
    return seconds


def choice(*words: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in words:
            raise ValueError(f"expected one of {', '.join(words)}, found {v!r}")
        return str(v)
    return parse


def _hash_key(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a key such as 'path' or 'header:X-User', found {v!r}")
    return parse_hash_key(v)


#: The options of every scheduler that hashes or tracks a request key.
KEY_OPTIONS: Final[dict[str, Option]] = {
    "hash_key": Option(_hash_key, "path", "what a request is keyed on: path, url, host, source, "
                       "header:NAME, cookie:NAME or param:NAME"),
    "trust_forwarded": Option(boolean, False, "with hash_key source: key on the last address in "
                              "X-Forwarded-For (the one the proxy in front of us added)"),
}


# ---- the interface ----------------------------------------------------------------------------

def run_now(build: Callable[[], Any], install: Callable[[Any], None]) -> None:
    """The default ``defer``: build the table at once (tests, the simulator, small tables)."""
    install(build())


@mypyc_attr(allow_interpreted_subclasses=True)  # tests' own schedulers, with the compiled build
class Scheduler:
    """Base class: subclasses set ``name`` (ipvsadm's where one exists) and implement ``pick``."""

    name: ClassVar[str] = ""
    #: Knobs accepted under ``scheduler_options``, checked by ``l7switch check``.
    options: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.servers = list(servers)
        self.opts = self.parse_options(options or {}, len(self.servers))
        self.clock = clock
        #: How a table rebuild runs; the switch swaps in one that builds in a worker thread.
        self.defer: Callable[[Callable[[], Any], Callable[[Any], None]], None] = run_now
        self._generation = 0

    @property
    def needs_key(self) -> bool:
        return "hash_key" in self.options

    # ---- options --------------------------------------------------------------------------------
    @classmethod
    def parse_option(cls, name: str, value: Any) -> Any:
        """The parsed value; ValueError (with the reason) for an unknown name or a bad value."""
        opt = cls.options.get(name)
        if opt is None:
            raise ValueError(f"unknown option {name!r}")
        return opt.parse(value)

    @classmethod
    def check(cls, opts: Mapping[str, Any], n_servers: int) -> list[str]:
        """Problems that involve several options or the pool size (each a sentence)."""
        if opts.get("trust_forwarded") and opts.get("hash_key") != "source":
            return ["trust_forwarded only applies with hash_key: source"]
        return []

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], n_servers: int) -> dict[str, Any]:
        opts = {name: opt.default for name, opt in cls.options.items()}
        for name, value in raw.items():
            opts[name] = cls.parse_option(name, value)
        problems = cls.check(opts, n_servers)
        if problems:
            raise ValueError("; ".join(problems))
        return opts

    # ---- picking --------------------------------------------------------------------------------
    def pick(self, key: str | None) -> Server | None:
        raise NotImplementedError

    # Hooks; the pool calls them after it has updated the server's counters or state.
    def on_start(self, server: Server) -> None:
        """A request was sent to ``server`` (its ``inflight`` already counts it)."""

    def on_end(self, server: Server) -> None:
        """A request to ``server`` finished."""

    def inherit(self, old: Scheduler, servers: dict[Server, Server]) -> None:
        """After a reload, from the scheduler this one replaces (``servers``: old Server -> new,
        for the servers kept). Stateless schedulers have nothing to carry; the locality ones
        carry their key tables."""

    def on_up(self, server: Server) -> None:
        """``server`` became available again."""

    def on_down(self, server: Server) -> None:
        """``server`` failed and is masked."""

    def shared(self, peers: int) -> None:
        """The builder says how many processes schedule this pool, each with its own counters
        and tables (``workers: N``). Schedulers whose choices depend on local state may choose
        differently when they are not alone (the locality ones, _locality.py)."""

    def on_weight(self, server: Server) -> None:
        """``server.weight`` changed (runtime admin); table-driven schedulers rebuild."""
        self.rebuild()

    # ---- tables ---------------------------------------------------------------------------------
    def table_builder(self) -> Callable[[], Any] | None:
        """A pure zero-argument function computing a new lookup table from a snapshot of the
        servers taken now, or None if this scheduler keeps no table."""
        return None

    def install_table(self, table: Any) -> None:
        """Start answering from ``table`` (the result of ``table_builder()()``)."""

    def rebuild(self) -> None:
        """Recompute the lookup table; until the new one is installed the old one answers (and
        skips unavailable servers). A rebuild started later always wins over an earlier one."""
        build = self.table_builder()
        if build is None:
            return
        self._generation += 1
        generation = self._generation

        def install(table: Any) -> None:
            if generation == self._generation:
                self.install_table(table)

        self.defer(build, install)

    def label(self) -> str:
        """The name, with what an operator needs to know of how it runs (``ctl show pools``)."""
        return self.name

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.opts)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} servers={len(self.servers)}>"


# ---- helpers ----------------------------------------------------------------------------------

def least_loaded(servers: Sequence[Server], exclude: Server | None = None,
                 start: int = 0, room: bool = False) -> Server | None:
    """IPVS wlc at Layer 7: the available server with the least ``inflight / weight``.

    Compared by cross-multiplying (``a.inflight * b.weight < b.inflight * a.weight``) as
    ip_vs_wlc.c does, so no division. Ties go to the first server scanned, from index ``start``
    on: locality schedulers pass the key's hash there, so that under light load (every server
    idle) new keys spread over the pool instead of all landing on the first server. A server in
    slow start counts with its weight scaled by its ramp, so it is handed new work (and, in the
    locality schedulers, new keys) in proportion. ``room``: skip servers at their maxconn.
    """
    if start:
        start %= len(servers)
        servers = [*servers[start:], *servers[:start]]
    best: Server | None = None
    best_w = 0.0
    for s in servers:
        if s is exclude or not s.available or (room and s.full):
            continue
        w = s.weight if s.ramp >= 1.0 else s.weight * s.ramp
        if best is None or s.inflight * best_w < best.inflight * w:
            best, best_w = s, w
    return best


def key_hash(key: str) -> int:
    """A stable 32-bit hash of a request key: the same in every process and every run (Python's
    ``hash()`` is salted per process, which would split one key across workers).

    CRC-32 (0.16 µs here) followed by MurmurHash3's fmix32 finaliser, which gives CRC's linear
    output full avalanche so near-identical paths land far apart on a ring or table.
    """
    return fmix32(zlib.crc32(key.encode("utf-8", "surrogateescape")))


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with p ~ 1/2."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


# ---- the registry -----------------------------------------------------------------------------

#: Scheduler classes by name; each module of this package registers its own (``@register``).
SCHEDULERS: Final[dict[str, type[Scheduler]]] = {}


def register(cls: type[Scheduler]) -> type[Scheduler]:
    if not cls.name or cls.name in SCHEDULERS:
        raise ValueError(f"scheduler name missing or taken: {cls.name!r}")
    SCHEDULERS[cls.name] = cls
    return cls


def create(name: str, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
           clock: Callable[[], float] = time.monotonic) -> Scheduler:
    """A scheduler by name; ValueError for an unknown name or bad options."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(sorted(SCHEDULERS))}") from None
    return cls(servers, options, clock)
