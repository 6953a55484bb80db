"""Where a request goes, and where it may go after a failure: written once for HTTP requests
(proxy/exchange.py) and tls-passthrough connections (passthrough/connection.py).

Pure: a pool, the request's key and what its persistence found go in; a server, a ``Wait``
(queue it) or the reason there is none comes out. The caller connects, and comes back here only
after a failure that is safe to retry (the caller decides that: nothing reached the server, or an
idempotent request whose whole body is still held; RFC 9110 §9.2.2).

- The session's server (``named``) serves while it is up, quiesced (weight 0) too: it keeps the
  sessions it holds, as IPVS and HAProxy's drain do. Down: the scheduler picks, or nothing when
  the pool's persistence says ``redispatch: false`` (``Persistence.verdict``).
- A server at its ``maxconn`` takes no more: a request *bound* to it (its session's server, or a
  hashing scheduler's choice, whose point is locality) waits in that server's queue; any other
  goes to the least loaded server with room, or waits in the pool's queue (HAProxy's
  ``assign_server_and_queue``). A full queue lets a bound request go elsewhere when redispatch
  allows (HAProxy: "a full maxqueue breaks persistence"), else 503.
- A failed request is tried again, on another server chosen by load (``ServerPool.pick(exclude=)``),
  up to the pool's ``retries``, unless the session is pinned to the failing server.
- Whatever server takes the request is recorded in the persistence table (``after_pick``), so a
  session that moved stays where it moved to.
"""

from __future__ import annotations

from .persistence import REFUSE, STICK, Persistence
from .pool import ServerPool
from .servers import Server


class Wait:
    """The request must wait for a slot: on ``server`` (bound to it) or on any server (None)."""

    __slots__ = ("server",)

    def __init__(self, server: Server | None) -> None:
        self.server = server

    def __repr__(self) -> str:
        return f"<Wait {self.server.name if self.server is not None else 'any server'}>"


def unavailable(pool: ServerPool) -> str:
    return f"no server available in pool '{pool.name}'"


def choose(pool: ServerPool, key: str | None, persist: Persistence | None, named: Server | None,
           table_key: str | None, queue: bool = True) -> Server | Wait | str:
    """The server for a new request (its persistence already consulted: ``named`` and
    ``table_key``), a ``Wait`` when every candidate is full (only with ``queue``), or why there
    is none."""
    bound = False
    if persist is not None:
        verdict = persist.verdict(named)
        if verdict == REFUSE:
            assert named is not None
            return (f"server '{named.name}' holding this session in pool '{pool.name}' is down and "
                    "redispatch is off")
        if verdict == STICK:
            server: Server | None = named
            bound = True
        else:
            server = pool.pick(key)
    else:
        server = pool.pick(key)
    if server is None:
        return unavailable(pool)
    if queue and server.full:
        return room_for(pool, server, key, persist, bound, table_key)
    if persist is not None:
        persist.after_pick(server, table_key)
    return server


def room_for(pool: ServerPool, server: Server, key: str | None, persist: Persistence | None,
             bound: bool, table_key: str | None) -> Server | Wait:
    """``server`` was chosen and is at its maxconn: wait for it, take another, or wait for any."""
    if bound or (key is not None and pool.keyfn is not None):
        if not pool.queue.is_full or (persist is not None and not persist.redispatch):
            return Wait(server)
    other = pool.with_room()
    if other is None:
        return Wait(None)
    if persist is not None:
        persist.after_pick(other, table_key)
    return other


def choose_again(pool: ServerPool, key: str | None, persist: Persistence | None, named: Server | None,
                 table_key: str | None, failed: Server, attempts: int) -> Server | str:
    """After the request failed on ``failed`` (``attempts`` made so far): another server, or
    why the request must fail."""
    if persist is not None and not persist.may_leave(named, failed):
        return (f"server '{failed.name}' holding this session refused the connection or failed, and redispatch is off")
    if attempts > pool.spec.retries:
        return f"{attempts} attempts made (retries: {pool.spec.retries})"
    other = pool.pick(key, exclude=failed)  # never the failing server again
    if other is None or other is failed:
        return f"no other server available in '{pool.name}'"
    if persist is not None:
        # The session moves: the table names the new server, and an HTTP response re-sets the
        # cookie because the request named another one.
        persist.after_pick(other, table_key)
    return other
