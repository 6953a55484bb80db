"""Persistence tables behind one small interface: get / set / touch / delete / expire.

Every sticky decision that needs memory (client address -> server, SSL session ID -> server)
lives in a ``Store``. Keys and values are text (a masked address, a hex session ID; a server's
name), so that a later store can keep them in Redis and share them between workers and hosts
without changing callers. ``MemoryStore`` is the default: an LRU dict with per-entry expiry,
bounded in size, with expiry done lazily on lookup plus an ``expire()`` sweep the switch's clock
can call. No I/O here.

``Tables`` names the stores of one process. A reload of the rule file builds new pools but hands
the same ``Tables`` over, so sticky sessions survive it (HAProxy loses stick tables on reload
unless a ``peers`` section replicates them: HAProxy configuration manual, section 3.5).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

#: HAProxy's stick-table examples use "size 30k"; IPVS's LBLC caps at 16384. Client-address and
#: session tables grow with clients, so the default is larger.
DEFAULT_MAX_ENTRIES: Final = 100_000


class Store(Protocol):
    def get(self, key: str) -> str | None:
        """The live value for ``key`` (None if absent or expired); does not extend its life."""

    def set(self, key: str, value: str, ttl: float) -> None:
        """Remember ``value`` for ``ttl`` seconds from now (replacing any entry)."""

    def touch(self, key: str, ttl: float) -> bool:
        """Extend a live entry to ``ttl`` seconds from now; False if there is none."""

    def delete(self, key: str) -> None: ...

    def expire(self) -> int:
        """Drop expired entries now; returns how many."""

    def resize(self, max_entries: int) -> int:
        """Hold at most ``max_entries`` from now on, dropping the least recently used entries
        beyond it; returns how many were dropped."""

    def __len__(self) -> int: ...


class MemoryStore:
    """An in-process ``Store``: LRU order, expiry per entry, at most ``max_entries`` entries."""

    __slots__ = ("_d", "max_entries", "clock", "evicted")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._d: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.max_entries = max_entries
        self.clock = clock
        self.evicted = 0  # entries dropped because the table was full (not expired)

    def get(self, key: str) -> str | None:
        entry = self._d.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._d[key]
            return None
        return entry[0]

    def set(self, key: str, value: str, ttl: float) -> None:
        d = self._d
        d[key] = (value, self.clock() + ttl)
        d.move_to_end(key)
        self._trim()

    def _trim(self) -> int:
        d = self._d
        n = 0
        while len(d) > self.max_entries:
            d.popitem(last=False)
            n += 1
        self.evicted += n
        return n

    def resize(self, max_entries: int) -> int:
        self.max_entries = max_entries
        return self._trim()

    def touch(self, key: str, ttl: float) -> bool:
        d = self._d
        entry = d.get(key)
        now = self.clock()
        if entry is None or entry[1] <= now:
            if entry is not None:
                del d[key]
            return False
        d[key] = (entry[0], now + ttl)
        d.move_to_end(key)
        return True

    def delete(self, key: str) -> None:
        self._d.pop(key, None)

    def expire(self) -> int:
        """Entries are in last-set/touch order; with one ttl per table that is expiry order, so
        the sweep stops at the first live entry. (A table mixing ttls is still correct: a
        stale entry further in is dropped when looked up.)"""
        d = self._d
        now = self.clock()
        n = 0
        while d:
            key, (_, expires) = next(iter(d.items()))
            if expires > now:
                break
            del d[key]
            n += 1
        return n

    def items(self) -> list[tuple[str, str, float]]:
        """(key, value, seconds left) of the live entries, for snapshots and the admin CLI."""
        now = self.clock()
        return [(k, v, exp - now) for k, (v, exp) in self._d.items() if exp > now]

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._d)}/{self.max_entries}>"


class Tables:
    """The named stores of one switch process, handed from the old config to the new on reload."""

    __slots__ = ("stores", "bounds", "factory")

    def __init__(self, factory: Callable[[int], Store] | None = None) -> None:
        self.stores: dict[str, Store] = {}
        self.bounds: dict[str, int] = {}  # the max_entries each store was last given
        self.factory: Callable[[int], Store] = factory or (lambda n: MemoryStore(n))

    def table(self, name: str, max_entries: int | None = None) -> Store:
        """The store called ``name`` (e.g. "source:app"), created on first use with
        ``max_entries`` (default DEFAULT_MAX_ENTRIES). A store that exists takes a new bound when
        one is given: a reload that shrinks ``max_entries`` gets the smaller table it asked for,
        its least recently used entries dropped, instead of the old bound kept silently."""
        store = self.stores.get(name)
        if store is None:
            bound = DEFAULT_MAX_ENTRIES if max_entries is None else max_entries
            store = self.stores[name] = self.factory(bound)
            self.bounds[name] = bound
        elif max_entries is not None and max_entries != self.bounds[name]:
            store.resize(max_entries)
            self.bounds[name] = max_entries
        return store

    def expire(self) -> int:
        return sum(s.expire() for s in self.stores.values())

    def snapshot(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.stores.items()}
