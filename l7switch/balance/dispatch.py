"""Where a request goes, and where it may go after a refusal: written once for HTTP requests
(proxy/exchange.py) and tls-passthrough connections (passthrough/connection.py).

Pure: a pool, the request's key and what its persistence found go in; a server or the reason
there is none comes out. The caller connects, and comes back here only if that connection was
refused (nothing reached the server, so it is safe to try another: HAProxy's ``option
redispatch``; RFC 9110 §9.2.2's caution about retrying concerns requests that were sent).

- The session's server (``named``) serves while it is up, quiesced (weight 0) too: it keeps the
  sessions it holds, as IPVS and HAProxy's drain do. Down: the scheduler picks, or nothing when
  the pool's persistence says ``redispatch: false`` (``Persistence.verdict``).
- A refused connection is tried once more, on another server chosen by load
  (``ServerPool.pick(exclude=)``), unless the session is pinned to the refusing server.
- Whatever server takes the request is recorded in the persistence table (``after_pick``), so a
  session that moved stays where it moved to.
"""

from __future__ import annotations

from .persistence import REFUSE, STICK, Persistence
from .pool import ServerPool
from .servers import Server

#: Connection attempts per request: the first and one redispatch (HAProxy's ``retries`` is 3, but
#: each of its retries may go to the same server; ours always goes to another).
MAX_ATTEMPTS = 2


def unavailable(pool: ServerPool) -> str:
    return f"no server available in pool '{pool.name}'"


def choose(pool: ServerPool, key: str | None, persist: Persistence | None, named: Server | None,
           table_key: str | None) -> Server | str:
    """The server for a new request (its persistence already consulted: ``named`` and
    ``table_key``), or why there is none."""
    if persist is not None:
        verdict = persist.verdict(named)
        if verdict == REFUSE:
            assert named is not None
            return (f"server '{named.name}' holding this session in pool '{pool.name}' is down and "
                    "redispatch is off")
        server = named if verdict == STICK else pool.pick(key)
    else:
        server = pool.pick(key)
    if server is None:
        return unavailable(pool)
    if persist is not None:
        persist.after_pick(server, table_key)
    return server


def choose_again(pool: ServerPool, key: str | None, persist: Persistence | None, named: Server | None,
                 table_key: str | None, refused: Server, attempts: int) -> Server | str:
    """After ``refused`` refused the connection (``attempts`` made so far): another server, or
    why the request must fail."""
    if persist is not None and not persist.may_leave(named, refused):
        return (f"server '{refused.name}' holding this session refused the connection and "
                "redispatch is off")
    if attempts >= MAX_ATTEMPTS:
        return f"connection refused by '{refused.name}' and {attempts} attempts made"
    other = pool.pick(key, exclude=refused)  # never the refusing server again
    if other is None:
        return f"connection refused by '{refused.name}' and no other server available in '{pool.name}'"
    if persist is not None:
        # The session moves: the table names the new server, and an HTTP response re-sets the
        # cookie because the request named another one.
        persist.after_pick(other, table_key)
    return other
