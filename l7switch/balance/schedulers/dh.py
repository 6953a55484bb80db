"""dh: destination hashing (ip_vs_dh.c) on the request key instead of the destination address.

IPVS dh keeps a static table of 256 buckets (``IP_VS_DH_TAB_SIZE``, ``1 << 8``) filled round
robin with the real servers in list order, weights ignored, and sends a packet to the server in
the bucket its destination address hashes to. Here the key is ``hash_key`` (the path by default),
so every request for one object lands on one server and its cache, with no per-key state.

The table is built from the pool order alone, never from which servers are up: a server going
down or coming back moves only its own keys. IPVS dh simply fails a connection whose bucket holds
an unavailable server; with ``fallback`` (the default) the key is rehashed instead, as
``hash_key(key NUL offset)`` for offset 1, 2, ..., until a bucket holding an available server
turns up. That is ip_vs_sh.c's ``sh-fallback`` idea, but rehashing the key rather than walking
the table from the bucket: a down server's keys then spread over all the others (a walk would
move a whole bucket at once, and since buckets are dealt round robin, the next bucket always
belongs to the same neighbour), and each moved key is still sticky while the set of down servers
stays the same. With ``fallback: false`` the request gets no server (the switch answers 503), as
in IPVS. A request without a key is balanced by load (wlc), as are keys no rehash could place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

from ..servers import Server
from .base import KEY_OPTIONS, Option, Scheduler, boolean, key_hash, least_loaded, register

#: IPVS's ``IP_VS_DH_TAB_SIZE`` and ``IP_VS_SH_TAB_SIZE``: ``1 << CONFIG_IP_VS_*_TAB_BITS`` (8).
TABLE_SIZE: Final = 256
#: Rehashes tried before giving up on the table; ip_vs_sh_get_fallback tries the table size.
FALLBACK_TRIES: Final = TABLE_SIZE

Table = tuple["Server | None", ...]


def round_robin_table(servers: Sequence[Server]) -> Table:
    """``ip_vs_dh_reassign``: bucket i holds server i mod n (all None for an empty pool)."""
    if not servers:
        return (None,) * TABLE_SIZE
    return tuple(servers[i % len(servers)] for i in range(TABLE_SIZE))


class DestinationHash(Scheduler):
    name = "dh"
    options: ClassVar[Mapping[str, Option]] = {
        **KEY_OPTIONS,
        "fallback": Option(boolean, True, "when a key's server is unavailable, rehash the key onto "
                           "the other servers (false: no server, 503, as IPVS dh)"),
    }

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(servers, options, clock)
        self._table: Table = ()
        build = self.table_builder()
        assert build is not None
        self.install_table(build())

    def table_builder(self) -> Callable[[], Table] | None:
        servers = tuple(self.servers)  # the snapshot: dh looks at the order only
        return lambda: round_robin_table(servers)

    def install_table(self, table: Any) -> None:
        self._table = table

    def pick(self, key: str | None) -> Server | None:
        if key is None:
            return least_loaded(self.servers)
        s = self._table[key_hash(key) % TABLE_SIZE]
        if s is not None and s.available:
            return s
        if not self.opts["fallback"]:
            return None
        return self._rehash(key)

    def _rehash(self, key: str) -> Server | None:
        """Another available server for ``key``, the same one every time while the set of
        unavailable servers stays the same."""
        servers = self.servers
        table = self._table
        # With nobody available every rehash would miss; skip the 256 hashes.
        if any(s.available for s in servers):
            for offset in range(1, FALLBACK_TRIES + 1):
                s = table[key_hash(f"{key}\x00{offset}") % TABLE_SIZE]
                if s is not None and s.available:
                    return s
        # Only servers holding no bucket are left (a deferred rebuild is pending), or none.
        return least_loaded(servers)

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "table_size": TABLE_SIZE}


register(DestinationHash)
