"""In-flight accounting when a client leaves during a connect that later fails.

The race (client gone between connect() start and its failure) cannot be timed reliably with
real sockets, so the exchange gets stub client/switch objects; the pool and server are real.
"""

from __future__ import annotations

import types

from l7switch.backends import ServerPool
from l7switch.config import PoolSpec, ServerSpec
from l7switch.errors import ServiceUnavailable
from l7switch.message import check_request
from l7switch.relay import Exchange


def test_connect_failure_after_client_left_does_not_double_count() -> None:
    spec = PoolSpec("p", "rr", (ServerSpec("s", "127.0.0.1", 9),), types.MappingProxyType({}))
    pool = ServerPool(spec)
    client = types.SimpleNamespace(switch=None)
    head = check_request(b"GET", b"/", [(b"host", b"h")], "1.1", True, False)
    ex = Exchange(client, head, pool, "default")  # type: ignore[arg-type]
    server = pool.servers[0]
    ex.server = server
    pool.begin(server)  # what _use() does before the connect Task starts
    assert server.inflight == 1
    ex.client_lost()  # the client disconnects while connecting
    assert server.inflight == 0
    ex._connect_failed(ServiceUnavailable("refused"), refused=True)
    assert server.inflight == 0 and server.failures == 1
