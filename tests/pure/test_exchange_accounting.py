"""In-flight accounting when a client leaves during a connect that later fails.

The race (client gone between connect() start and its failure) cannot be timed reliably with
real sockets, so the exchange gets a bare ClientPort (the base class of client connections);
the state, pool and server are real.
"""

from __future__ import annotations

from l7switch.config import parse_config
from l7switch.errors import ServiceUnavailable
from l7switch.http.message import check_request
from l7switch.stats import Traffic
from l7switch.proxy.exchange import DONE, Exchange
from l7switch.proxy.ports import ClientPort
from l7switch.proxy.state import SwitchState


def test_connect_failure_after_client_left_does_not_double_count() -> None:
    config = parse_config("listen: [127.0.0.1:0]\npools: {p: {servers: [127.0.0.1:9]}}\ndefault_pool: p\n")
    state = SwitchState(config)
    pool = state.current.pools["p"]
    client = ClientPort(traffic=Traffic())
    client.peer_ip = "127.0.0.1"
    head = check_request(b"GET", b"/", [(b"host", b"h")], "1.1", True, False)
    ex = Exchange(client, state.current, state, head, pool, "default")
    server = pool.servers[0]
    ex.server = server
    ex.cpool = state.current.cpools[server]
    pool.begin(server)  # what _use() does before the connect Task starts
    assert server.inflight == 1
    ex.client_lost()  # the client disconnects while connecting
    assert server.inflight == 0 and ex.phase == DONE
    ex._connect_failed(ServiceUnavailable("refused"), refused=True)
    assert server.inflight == 0 and server.failures == 1
