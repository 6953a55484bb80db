"""sh: source hashing (ip_vs_sh.c): dh's table, keyed on the client address and dealt by weight.

Everything but the table and the default key is dh's (dh.py), fallback included. By default the
key is the client address (``hash_key: source``; with ``trust_forwarded`` the address the proxy
in front of us put last in X-Forwarded-For), so a client keeps talking to one server; any other
``hash_key`` works too.

The table is ``ip_vs_sh_reassign``'s: walking the servers in pool order, each server with weight
w > 0 takes w consecutive buckets, cycling until the 256 are filled, so weights 1 and 3 hold 64 and
192 buckets. Weight-0 servers hold none. IPVS gives a weight-0 server one bucket anyway (its
``++d_count >= weight`` test passes at once); here a quiesced server takes no new keys at all.
Before dealing, the weights are divided by their greatest common divisor, so weights written as
10 and 30 share the table 1:3 like 1 and 3 do; IPVS deals raw weights, where the first server of
weight 256 or more would take every bucket. Weights whose reduced sum exceeds 256 still cannot be
honoured in full: the table fills before the last servers' turns.

A weight change rebuilds the table and, as in IPVS, moves most keys; a server going down or
coming back moves only its own keys, through the fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import reduce
from math import gcd
from typing import ClassVar, Final

from ..servers import Server
from .base import KEY_OPTIONS, Option, register
from .dh import TABLE_SIZE, DestinationHash, Table

_HASH_KEY: Final = KEY_OPTIONS["hash_key"]


def weighted_table(servers: Sequence[tuple[Server, int]]) -> Table:
    """``ip_vs_sh_reassign`` over (server, weight) pairs, weights reduced by their gcd."""
    dealt = [(s, w) for s, w in servers if w > 0]
    if not dealt:
        return (None,) * TABLE_SIZE
    g = reduce(gcd, (w for _, w in dealt))
    table: list[Server | None] = []
    while len(table) < TABLE_SIZE:
        for s, w in dealt:
            table.extend([s] * (w // g))
    return tuple(table[:TABLE_SIZE])


class SourceHash(DestinationHash):
    name = "sh"
    options: ClassVar[Mapping[str, Option]] = {
        **DestinationHash.options,
        "hash_key": Option(_HASH_KEY.parse, "source", _HASH_KEY.doc),
    }

    def table_builder(self) -> Callable[[], Table] | None:
        servers = tuple((s, s.weight) for s in self.servers)  # the weights as of now
        return lambda: weighted_table(servers)


register(SourceHash)
