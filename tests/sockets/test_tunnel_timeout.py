"""``timeouts.tunnel``: an Upgrade tunnel (or a tls-passthrough one) idle that long is closed;
one that keeps moving bytes is not, whether the bytes cross through Python or by splice."""

from __future__ import annotations

import time

import pytest
from kit import Conn, simple_config, wait_for
from test_splice import UPGRADE, ws_echo_origin


@pytest.mark.parametrize("splice", ["true", "false"])
def test_idle_websocket_tunnel_is_closed_after_timeouts_tunnel(lt, raw_origin, switch_factory, splice):
    events: list = []
    ro = ws_echo_origin(raw_origin, events)
    sw = switch_factory(simple_config(ro.port, extra=f"timeouts: {{tunnel: 0.4s}}\nsplice: {{enabled: {splice}}}\n"))
    c = Conn(sw.port)
    c.send(UPGRADE)
    assert c.read_head()[0] == 101
    # Busy for longer than the idle limit: bytes every 0.1 s keep it open.
    for _ in range(8):
        c.send(b"ping")
        assert c.sock.recv(10) == b"ping"
        time.sleep(0.1)
    # Then silent: it ends within the limit plus the clock's tick.
    t0 = time.monotonic()
    assert c.read_to_close(limit=5) == b""
    assert 0.3 < time.monotonic() - t0 < 3
    assert wait_for(lambda: ("eof", None) in events, 3)  # the server side was closed too
    assert wait_for(lambda: lt.call(sw.snapshot)["clients"] == 0, 3)
    c.close()


def test_tunnel_timeout_default_keeps_a_quiet_tunnel(raw_origin, switch_factory):
    events: list = []
    ro = ws_echo_origin(raw_origin, events)
    sw = switch_factory(simple_config(ro.port))  # timeouts.tunnel: 1h
    c = Conn(sw.port)
    c.send(UPGRADE)
    assert c.read_head()[0] == 101
    time.sleep(0.6)
    c.send(b"still-there")
    assert c.sock.recv(20) == b"still-there"
    c.close()
