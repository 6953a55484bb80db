"""maglev: Maglev hashing (Eisenbud et al., NSDI 2016, §3.4; Linux IPVS ``mh``, ip_vs_mh.c).

A lookup table of M slots (M prime) names a server in every slot; a request goes to
``table[key_hash(key) % M]``, one list index however many servers there are.

Populating: each server derives a permutation of the slots from two stable hashes of its *name*
(so the table does not depend on pool order or addresses)::

    offset = h1(name) mod M        skip = h2(name) mod (M - 1) + 1
    perm[j] = (offset + j * skip) mod M        # a full permutation because M is prime

and the servers take turns, in name order, claiming the next slot of their permutation that is
still empty until all M are taken (so the table does not depend on the pool's order either).
Weights are IPVS mh's: per round a server takes ``weight / gcd`` turns, shifted right so the
largest is below ``2^(ilog2(M) / 2)`` (ip_vs_mh_shift_weight), and at least 1.

Properties (the paper's): with M > 100·N the servers' shares differ by at most ~1% (equal
weights: by at most one slot), and when a server leaves or joins, only a little more than its
own 1/N of the slots changes owner. There is no load bound: a hot key stays on its server.

The table covers the *available* servers only (up and weight > 0), so a server going down, coming
back or changing weight triggers a rebuild (``on_up``/``on_down``/``on_weight``), which the switch
runs in a worker thread. Until the new table is installed the old one keeps answering, and a slot
naming a server that is no longer available is passed over: the lookup walks forward through
the table to the next available server (IPVS mh's fallback re-hashes the key with an offset
instead; either way each key of the missing server gets a fixed substitute, and those
substitutes are spread over the other servers because neighbouring slots have unrelated owners).

``table_size`` must be a prime > 100·N (N = servers in the pool). By default it is the smallest
of IPVS's sizes 251, 509, ..., 65521, 131071 that is > 100·N and at least 4093 (IPVS's default,
CONFIG_IP_VS_MH_TAB_INDEX=12); beyond 131071 it is the next prime above 100·N.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..servers import Server
from .base import KEY_OPTIONS, Option, Scheduler, integer, key_hash, least_loaded, register

__all__ = ["Maglev", "populate", "permutation", "default_table_size", "smallest_valid_size",
           "is_prime", "next_prime", "IPVS_SIZES"]

#: The table sizes IPVS mh offers (CONFIG_IP_VS_MH_TAB_INDEX 8..17): primes near powers of two.
IPVS_SIZES: Final = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
#: IPVS's default (index 12).
IPVS_DEFAULT_SIZE: Final = 4093
#: Envoy's ceiling for its Maglev ``table_size``; a pure-Python build of it takes seconds.
MAX_TABLE_SIZE: Final = 5_000_011


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def next_prime(n: int) -> int:
    """The smallest prime strictly greater than ``n``."""
    p = max(n + 1, 2)
    while not is_prime(p):
        p += 1
    return p


def smallest_valid_size(n_servers: int) -> int:
    """The smallest prime table size > 100·N."""
    return next_prime(100 * n_servers)


def default_table_size(n_servers: int) -> int:
    """IPVS's sizes from its default 4093 up, the first > 100·N; beyond them the next prime."""
    need = 100 * n_servers
    for p in IPVS_SIZES:
        if p >= IPVS_DEFAULT_SIZE and p > need:
            return p
    return next_prime(need)


_size_int = integer(2, MAX_TABLE_SIZE)


def _table_size(v: Any) -> int | None:
    """An integer, or null for the default; primality and size are checked by ``check``."""
    return None if v is None else _size_int(v)


def permutation(name: str, m: int) -> tuple[int, int]:
    """``(offset, skip)`` of a server's slot permutation: two independent 64-bit halves of one
    BLAKE2b digest of its name (stable across processes, unlike ``hash()``)."""
    d = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=16,
                        person=b"l7switch-maglev").digest()
    h1 = int.from_bytes(d[:8], "little")
    h2 = int.from_bytes(d[8:], "little")
    return h1 % m, h2 % (m - 1) + 1


def _turns(weights: Sequence[int], m: int) -> list[int]:
    """Slots per round for each server: ``weight / gcd`` shifted as ip_vs_mh_shift_weight does,
    so a large weight ratio cannot make one round longer than ~sqrt(M)."""
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    mw = max(weights) // g
    shift = max(0, mw.bit_length() - (m.bit_length() - 1) // 2)
    return [max(1, (w // g) >> shift) for w in weights]


def populate(entries: Sequence[tuple[str, int]], m: int) -> list[int]:
    """The Maglev table for ``entries`` = ``[(name, weight > 0), ...]``: for each of the ``m``
    slots, the index of its owner in ``entries``. Empty if there are no entries. Pure."""
    n = len(entries)
    if n == 0:
        return []
    pos: list[int] = []
    skip: list[int] = []
    for name, _ in entries:
        o, s = permutation(name, m)
        pos.append(o)
        skip.append(s)
    turns = _turns([w for _, w in entries], m)
    table = [-1] * m
    left = m
    order = range(n)
    while True:
        for i in order:
            c = pos[i]
            s = skip[i]
            for _ in range(turns[i]):
                while table[c] >= 0:  # the next preferred slot that is still empty
                    c += s
                    if c >= m:
                        c -= m
                table[c] = i
                left -= 1
                if left == 0:
                    return table
            pos[i] = c


class Maglev(Scheduler):
    name = "maglev"
    options = {
        **KEY_OPTIONS,
        "table_size": Option(
            _table_size, None,
            "lookup table slots: a prime > 100 x servers; default the smallest of IPVS's sizes "
            "(4093, 8191, ... 131071) above 100 x servers"),
    }

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(servers, options, clock)
        size = self.opts["table_size"]
        #: M, resolved from the option or the pool size.
        self.table_size: int = size if size is not None else default_table_size(len(self.servers))
        #: The installed table: one Server per slot (empty when nothing was available), and
        #: the distinct servers in it.
        self._slots: list[Server] = []
        self._members: tuple[Server, ...] = ()
        self.rebuild()

    @classmethod
    def check(cls, opts: Mapping[str, Any], n_servers: int) -> list[str]:
        problems = super().check(opts, n_servers)
        m = opts.get("table_size")
        if m is None:
            return problems
        smallest = smallest_valid_size(n_servers)
        servers = f"{n_servers} server{'s' if n_servers != 1 else ''}"
        if not is_prime(m):
            problems.append(f"table_size {m} is not a prime (Maglev's slot permutations need a "
                            f"prime); the smallest valid size for {servers} is {smallest}")
        elif m <= 100 * n_servers:
            problems.append(f"table_size {m} is too small for {servers}: it must be a prime "
                            f"> 100 x {n_servers} = {100 * n_servers} to keep the servers' shares "
                            f"within 1%; the smallest valid size is {smallest}")
        return problems

    # ---- the table ------------------------------------------------------------------------------
    def table_builder(self) -> Callable[[], tuple[list[Server], tuple[Server, ...]]]:
        m = self.table_size
        # In name order: the turn order decides contested slots, and the table should not
        # depend on the order the servers are listed in (two switches, one table).
        members = tuple(sorted((s for s in self.servers if s.available), key=lambda s: s.name))
        entries = [(s.name, s.weight) for s in members]

        def build() -> tuple[list[Server], tuple[Server, ...]]:
            idx = populate(entries, m)
            return [members[i] for i in idx], members

        return build

    def install_table(self, table: tuple[list[Server], tuple[Server, ...]]) -> None:
        self._slots, self._members = table

    def on_up(self, server: Server) -> None:
        self.rebuild()

    def on_down(self, server: Server) -> None:
        self.rebuild()

    # ---- picking --------------------------------------------------------------------------------
    def pick(self, key: str | None) -> Server | None:
        if key is None:
            return least_loaded(self.servers)
        slots = self._slots
        if not slots:
            # Nothing was available at the last build (None), or a rebuild is pending.
            return least_loaded(self.servers)
        i = key_hash(key) % len(slots)
        s = slots[i]
        if s.up and s.weight > 0:
            return s
        return self._fallback(slots, i)

    def _fallback(self, slots: list[Server], i: int) -> Server | None:
        """The old table names an unavailable server (a rebuild is on its way): the next
        available server forward in the table, or by load if none of its servers is."""
        if not any(s.available for s in self._members):
            return least_loaded(self.servers)
        m = len(slots)
        while True:
            i += 1
            if i == m:
                i = 0
            s = slots[i]
            if s.up and s.weight > 0:
                return s

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["table_size"] = self.table_size
        return snap


register(Maglev)
