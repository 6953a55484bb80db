"""What lblc, lblcr and lard share: the key table and the two locality algorithms.

A locality scheduler remembers, per request key (a path by default), the server (lblc, basic
LARD) or the small set of servers (lblcr, LARD/R) that served it last, so that a key keeps
hitting the same back-end cache. Load is a server's ``inflight`` requests: at Layer 7 that is
what IPVS's active connections stood for. The schedulers differ only in when the remembered
server counts as overloaded (``overloaded``) and in their defaults, so the algorithms live here
once: ``pick_single`` is IPVS LBLC / basic LARD and ``pick_set`` is IPVS LBLCR / LARD/R.

The table is a bounded LRU with lazy expiry and no timers:

* ``max_entries`` (default 16384 = IPVS's ``16 * 2^LBLC_TAB_BITS``): when a new key would make the
  table larger, the least recently used key is dropped. IPVS instead lets the table overflow
  and trims entries idle for 6 minutes from a timer every 60 s; LRU eviction is the same idea,
  done at once and exactly.
* ``expiration`` (default 24 h = the ``lblc_expiration`` / ``lblcr_expiration`` sysctls): an
  entry idle for longer is treated as absent when next looked up, and inserting new keys also
  discards a few expired entries from the cold end of the LRU, so idle keys do not linger.

Placement: which server a new key goes to (and where a key moves when its server is down or
overloaded). IPVS and LARD give it to the least loaded server; that choice depends on the
in-flight counts one process sees, so with ``workers: N`` each worker, having its own table and
its own counts, sends the same key to a different server and every cache holds every hot
object (the locality benchmark lost 17% of its hit rate with 2 workers). ``placement: hash``
gives a new key to its weighted rendezvous-hash server (Thaler & Ravishankar 1998; HRW with
``-w / ln(u)`` scores) among the available servers, unless that one is overloaded, then to the
least loaded: every worker computes the same server from the key alone, with no shared state and
no IPC, and a server going down moves only its own keys. ``auto`` (the default) is ``hash``
when the switch runs several workers and ``load`` otherwise.

Load thresholds with workers: each worker counts only its own requests in flight, about 1/N of
a server's real load when connections spread over N workers, so the thresholds (lblc's
``capacity``, LARD's ``t_low``/``t_high``) are divided by N in each worker: "overloaded" keeps
meaning the server's load, as configured. (With ``worker_steering: address`` and very few client
addresses one worker may carry most of the load and move keys a little early.)

Neither algorithm queues requests. LARD's front-end additionally caps the requests handed to
the back-ends at ``S = (n-1)*T_high + T_low - 1`` and holds the rest; the switch has no request
queue, so that admission control is not done.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..servers import Server
from .base import Option, Scheduler, choice, duration, fmix32, integer, key_hash, least_loaded

__all__ = ["KeyTable", "ServerSet", "LocalityScheduler", "TABLE_OPTIONS", "CAPACITY_OPTION",
           "half_load_overloaded", "most_loaded", "rendezvous"]

#: IPVS LBLC/LBLCR's table limit: ``1 << CONFIG_IP_VS_LBLC_TAB_BITS`` (1024) buckets times 16.
DEFAULT_MAX_ENTRIES: Final = 16 * 1024
#: IPVS's ``lblc_expiration`` and ``lblcr_expiration`` sysctls default to a day.
DEFAULT_EXPIRATION: Final = 24 * 60 * 60.0
#: Expired entries dropped from the cold end per insertion; bounds the work on one request.
_SWEEP_PER_INSERT: Final = 8

TABLE_OPTIONS: Final[dict[str, Option]] = {
    "max_entries": Option(integer(1), DEFAULT_MAX_ENTRIES,
                          "keys remembered at most; beyond that the least recently used is "
                          "forgotten (IPVS LBLC/LBLCR: 16384)"),
    "expiration": Option(duration, DEFAULT_EXPIRATION,
                         "a key unused for this long is forgotten (IPVS lblc_expiration: 24h)"),
    "placement": Option(choice("auto", "load", "hash"), "auto",
                        "where a new key goes: load = the least loaded server (IPVS, LARD); "
                        "hash = the key's rendezvous-hash server unless it is overloaded, so "
                        "that workers agree without sharing tables; auto = hash with workers > 1"),
}


# ---- the overload test of lblc and lblcr ----------------------------------------------------

#: LARD's T_high (Pai et al. 1998): in-flight requests per unit of weight before "overloaded".
DEFAULT_CAPACITY: Final = 65

CAPACITY_OPTION: Final = Option(integer(1), DEFAULT_CAPACITY,
                         "in-flight requests per unit of weight above which a key's server is "
                         "overloaded (when another server is under half that)")


def half_load_overloaded(n: Server, servers: Sequence[Server], capacity: float) -> bool:
    """IPVS ``is_overloaded`` with the weight scaled by ``capacity``."""
    if n.inflight <= n.weight * capacity:
        return False
    for m in servers:
        if m.available and m.inflight * 2 < m.weight * capacity:
            return True
    return False


# ---- placement by hash ------------------------------------------------------------------------

_TWO32: Final = float(1 << 32)


def rendezvous(servers: Sequence[Server], seeds: Sequence[int], h: int) -> Server | None:
    """The available server with the highest weighted rendezvous score for key hash ``h``:
    ``weight / -ln(u)`` with ``u`` uniform in (0, 1) from the key's and the server's hashes
    (``seeds``, one per server, from its name), which gives each server a share of keys in
    proportion to its weight and moves only a leaving server's keys. Servers at weight 0 (or
    unavailable) are skipped. One ``fmix32`` and one ``log`` per server, paid only when a key is
    new or has to move (bench/placement_cost.py)."""
    best: Server | None = None
    best_score = 0.0
    for s, seed in zip(servers, seeds):
        if not s.available or s.weight <= 0:
            continue
        score = s.weight / -math.log((fmix32(h ^ seed) + 0.5) / _TWO32)
        if score > best_score:
            best, best_score = s, score
    return best


# ---- the key table ----------------------------------------------------------------------------

class KeyTable:
    """A bounded LRU mapping key -> ``[value, last_use]`` with lazy expiry.

    The OrderedDict is kept in last-use order (a hit moves its key to the end), so the least
    recently used and the expired keys are all at the front.
    """

    __slots__ = ("_d", "max_entries", "expiration")

    def __init__(self, max_entries: int, expiration: float) -> None:
        self._d: OrderedDict[str, list[Any]] = OrderedDict()
        self.max_entries = max_entries
        self.expiration = expiration

    def get(self, key: str, now: float) -> list[Any] | None:
        """The live entry ``[value, last_use]`` for ``key``, marked used now; None if absent or
        idle longer than ``expiration`` (such an entry is dropped)."""
        d = self._d
        entry = d.get(key)
        if entry is None:
            return None
        if now - entry[1] > self.expiration:
            del d[key]
            return None
        entry[1] = now
        d.move_to_end(key)
        return entry

    def add(self, key: str, value: Any, now: float) -> list[Any]:
        """Remember ``value`` for ``key`` (replacing any entry); evicts the least recently used
        key when over ``max_entries`` and sweeps a few expired ones."""
        d = self._d
        entry = [value, now]
        d[key] = entry
        d.move_to_end(key)
        limit = now - self.expiration
        for _ in range(_SWEEP_PER_INSERT):
            oldest = next(iter(d.values()))
            if oldest[1] >= limit or oldest is entry:
                break
            d.popitem(last=False)
        while len(d) > self.max_entries:
            d.popitem(last=False)
        return entry

    def carry(self, old: KeyTable, servers: dict[Any, Any]) -> int:
        """After a reload: ``old``'s entries, their servers translated by ``servers`` (old Server
        -> new); a key whose servers are all gone is dropped. Returns the keys kept."""
        for key, (value, used) in old._d.items():
            if isinstance(value, ServerSet):
                members = [servers[m] for m in value.members if m in servers]
                if not members:
                    continue
                kept = ServerSet(members[0], value.lastmod)
                kept.members = members
                self._d[key] = [kept, used]
            elif value in servers:
                self._d[key] = [servers[value], used]
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)
        return len(self._d)

    def live(self, now: float) -> list[Any]:
        """The values of the entries not yet expired (for snapshots; walks the table)."""
        limit = now - self.expiration
        return [v for v, used in self._d.values() if used >= limit]

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d


class ServerSet:
    """LBLCR's / LARD/R's per-key server set and the time it last changed."""

    __slots__ = ("members", "lastmod")

    def __init__(self, first: Server, now: float) -> None:
        self.members = [first]
        self.lastmod = now

    def __repr__(self) -> str:
        return f"<ServerSet {[s.name for s in self.members]} lastmod={self.lastmod}>"


# ---- set helpers ------------------------------------------------------------------------------

def most_loaded(servers: Sequence[Server]) -> Server | None:
    """The member with the most ``inflight / weight`` (IPVS ``ip_vs_dest_set_max``), skipping
    weight-0 members as IPVS does; up or down does not matter. Ties go to the *last* member, the
    most recently added, so a set whose members are equally loaded keeps its oldest server."""
    most: Server | None = None
    for s in servers:
        if s.weight <= 0:
            continue
        if most is None or s.inflight * most.weight >= most.inflight * s.weight:
            most = s
    return most


# ---- the algorithms ---------------------------------------------------------------------------

class LocalityScheduler(Scheduler):
    """A key table plus IPVS LBLC (``pick_single``) and LBLCR (``pick_set``); subclasses define
    ``overloaded`` and choose which of the two their ``pick`` is."""

    #: True when entries are ServerSets (affects the snapshot only).
    uses_sets = False

    def __init__(self, servers: Sequence[Server], options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(servers, options, clock)
        self.table = KeyTable(self.opts["max_entries"], self.opts["expiration"])
        # A server's seed comes from its name, which is the same in every worker (and across a
        # reload that keeps it), not from its position or address.
        self._seeds = [key_hash(s.name) for s in self.servers]
        self.hashed = self.opts["placement"] == "hash"
        self.peers = 1
        self.scale_thresholds()

    def shared(self, peers: int) -> None:
        self.peers = peers
        if self.opts["placement"] == "auto":
            self.hashed = peers > 1
        self.scale_thresholds()

    def scale_thresholds(self) -> None:
        """Set the load thresholds from the options for this process's share, 1/``peers``."""

    def inherit(self, old: Scheduler, servers: dict[Server, Server]) -> None:
        """A reload kept this pool: which server each key was sent to stays (the caches those
        servers hold are still warm), for the servers kept."""
        if type(old) is type(self):
            assert isinstance(old, LocalityScheduler)
            self.table.carry(old.table, servers)

    def overloaded(self, n: Server) -> bool:
        """Whether the remembered (available) server ``n`` should give the key up."""
        raise NotImplementedError

    def least_loaded_for(self, key: str) -> Server | None:
        """The server to take ``key`` (new, or moving): the least loaded, ties broken by the
        key's hash (base.py); with hash placement the key's rendezvous server first, unless it
        is overloaded."""
        h = key_hash(key)
        if self.hashed:
            n = rendezvous(self.servers, self._seeds, h)
            if n is not None and not self.overloaded(n):
                return n
        return least_loaded(self.servers, None, h)

    def pick_single(self, key: str | None) -> Server | None:
        """LBLC / basic LARD: keep the key's server unless it is unavailable or overloaded, in
        which case the least loaded server takes the key over."""
        if key is None:
            return least_loaded(self.servers)
        now = self.clock()
        entry = self.table.get(key, now)
        if entry is not None:
            n = entry[0]
            if n.available and not self.overloaded(n):
                return n
            n = self.least_loaded_for(key)
            if n is not None:
                entry[0] = n
            return n
        n = self.least_loaded_for(key)
        if n is not None:
            self.table.add(key, n, now)
        return n

    def pick_set(self, key: str | None, set_expiry: float) -> Server | None:
        """LBLCR / LARD/R::

            n <- least loaded available member of set[key]
            if n is None or overloaded(n): n <- least loaded server; add n to set[key]
            if |set[key]| > 1 and now - lastmod > set_expiry: drop the most loaded member
            if set[key] changed: lastmod <- now

        The member to drop is chosen before the addition (as LARD/R and IPVS's code do), so a
        server just added is never dropped. If the member to drop is the one about to be
        returned (possible only when the available members are equally loaded), the request
        goes to the least loaded of the others instead; if no other member is available the set
        is left alone this time. So the server returned is always a member of the set.
        """
        if key is None:
            return least_loaded(self.servers)
        now = self.clock()
        entry = self.table.get(key, now)
        if entry is None:
            n = self.least_loaded_for(key)
            if n is not None:
                self.table.add(key, ServerSet(n, now), now)
            return n
        sset: ServerSet = entry[0]
        members = sset.members
        n = least_loaded(members)
        drop = (most_loaded(members)
                if len(members) > 1 and now - sset.lastmod > set_expiry else None)
        changed = False
        if n is None or self.overloaded(n):
            p = self.least_loaded_for(key)
            if p is not None:
                n = p
                if p not in members:
                    members.append(p)
                    changed = True
        if drop is not None:
            if drop is n:
                other = least_loaded(members, drop)
                if other is not None:
                    members.remove(drop)
                    n = other
                    changed = True
            else:
                members.remove(drop)
                changed = True
        if changed:
            sset.lastmod = now
        return n

    def label(self) -> str:
        return f"{self.name} ({'hash' if self.hashed else 'load'} placement)"

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        live = self.table.live(self.clock())
        snap["entries"] = len(live)
        snap["placement"] = "hash" if self.hashed else "load"  # in force (auto resolved)
        # Keys per server (a key of a set counts for each member): the monitor's locality view.
        owners: dict[str, int] = {}
        for v in live:
            for s in (v.members if isinstance(v, ServerSet) else (v,)):
                owners[s.name] = owners.get(s.name, 0) + 1
        snap["keys"] = owners
        if self.uses_sets:
            snap["mean_set_size"] = (
                round(sum(len(s.members) for s in live) / len(live), 3) if live else 0.0)
        return snap
