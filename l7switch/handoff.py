"""Handing a connection's bytes to splice(2), and back: the parts of an Exchange that leave Python.

Never on a client connection that terminates TLS (``client.tls``): its socket carries ciphertext,
which must cross Python to be decrypted or encrypted, so bodies stream as usual and an Upgrade
tunnel relays in Python (``_python_tunnel``).

A known-length body above ``splice.threshold`` and an Upgrade tunnel cross by ``SpliceJob``
(splice.py). The hand-off follows uvloop-proxy.md §2.4: pause the source transport, write what
Python already holds, wait until the destination's write buffer is empty (byte order), splice,
then reset the parser whose state is stale and resume reading at the message boundary.

``SpliceHandoff`` is a mixin of ``Exchange`` (relay.py) with no state of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .flow import SPLICING, when_drained
from .splice import SpliceJob

if TYPE_CHECKING:
    from .relay import Exchange


class SpliceHandoff:
    __slots__ = ()

    def plan_request_splice(self: Exchange) -> None:
        """Called at the request head: a large known-length body crosses by splice."""
        splice = self.client.switch.config.splice
        cl = self.head.content_length
        if (splice.enabled and cl is not None and cl >= splice.threshold and not self.head.expect_continue
                and not self.client.tls):
            self.req_splice_left = cl  # reduced by what the first read already carried

    def _start_request_splice(self: Exchange) -> None:
        left = (self.head.content_length or 0) - self.req_body
        if left <= 0:
            self.req_splice_left = 0
            return
        client, up = self.client, self.up
        assert up is not None and up.transport is not None
        self.req_splice_left = left
        client.flow.pause_reading(SPLICING)
        if self.to_up:
            out, self.to_up = self.to_up, []
            up.writelines(out)
        self._splice_when_drained(client.transport, up.transport, left, self._request_spliced)

    def _request_spliced(self: Exchange, moved: int, error: BaseException | None) -> None:
        self.req_body += moved
        self.req_splice_left = 0
        if error is not None:
            self.client.abort()
            return
        self.client.reset_parser()
        self.client.flow.resume_reading(SPLICING)
        self.request_complete()

    def _start_response_splice(self: Exchange) -> None:
        up, client = self.up, self.client
        assert up is not None and up.flow is not None and client.transport is not None
        left = self.resp_splice_left
        self.resp_splice_left = 0
        up.flow.pause_reading(SPLICING)
        self._splice_when_drained(up.transport, client.transport, left, self._response_spliced)

    def _splice_when_drained(self: Exchange, src: asyncio.BaseTransport, dst: asyncio.BaseTransport,
                             nbytes: int, on_done: Callable[[int, BaseException | None], None]) -> None:
        """Splice ``nbytes`` from src to dst once dst's write buffer is empty (byte order)."""
        def done(moved: int, error: BaseException | None) -> None:
            self.jobs = [j for j in self.jobs if not j.finished]
            on_done(moved, error)

        def go() -> None:
            # Whatever ended the exchange meanwhile (client gone, server lost) has finished it.
            if self.finished or self.up is None or self.client.transport is None:
                return
            job = SpliceJob(self.client.switch.loop, src, dst, nbytes, done)
            self.jobs.append(job)
            job.start()
        when_drained(dst, go)

    def _response_spliced(self: Exchange, moved: int, error: BaseException | None) -> None:
        up = self.up
        if error is not None or up is None:
            self._abort_both()
            return
        up.reset_parser()
        assert up.flow is not None
        up.flow.resume_reading(SPLICING)
        self.resp_done = True
        self.after_upstream_feed()

    def response_upgraded(self: Exchange, leftover: bytes) -> None:
        """The server answered 101: both sockets become one spliced tunnel."""
        up, client = self.up, self.client
        if not self.upgrading or up is None or up.transport is None or client.transport is None:
            self.upstream_failed("unexpected protocol switch")
            return
        self.upgrading = False
        self.resp_started = self.resp_done = True
        if self.to_client:
            out, self.to_client = self.to_client, []
            client.writelines(out)
        if leftover:
            client.write(leftover)
        if self.tunnel_data:
            up.write(self.tunnel_data)
            self.tunnel_data = b""
        up.deadline = 0.0  # tunnels live until either side closes
        if client.tls:
            self._python_tunnel()
            return
        assert up.flow is not None
        up.flow.pause_reading(SPLICING)
        client.flow.pause_reading(SPLICING)
        client.tunnel = self
        remaining = [2]

        def one_done(moved: int, error: BaseException | None) -> None:
            remaining[0] -= 1
            if error is not None or remaining[0] == 0:
                self._abort_both(graceful=error is None)

        def go() -> None:
            if self.finished or up.transport is None or client.transport is None:
                return
            if up.transport.get_write_buffer_size() or client.transport.get_write_buffer_size():
                when_drained(up.transport if up.transport.get_write_buffer_size() else client.transport, go)
                return
            loop = client.switch.loop
            self.jobs = [SpliceJob(loop, client.transport, up.transport, None, one_done),
                         SpliceJob(loop, up.transport, client.transport, None, one_done)]
            for job in list(self.jobs):
                job.start()
        go()

    def _python_tunnel(self: Exchange) -> None:
        """An Upgrade tunnel over TLS: each side writes what it reads to the other.

        Backpressure is the exchange's usual one (a full write buffer on one side pauses reading
        on the other: pause_writing in frontend.py and upstream.py). The server closing ends the
        tunnel with a graceful close of the client, so bytes still buffered for it are sent
        (UpstreamConnection.connection_lost); the client closing closes the server connection
        (client_lost). TLS has no half-close, so the first close ends both directions.
        """
        up, client = self.up, self.client
        assert up is not None
        client.tunnel = self
        client.relay_to, up.relay_to = up, client
        client.flow.resume_reading(SPLICING)  # paused at the upgrade request (frontend.py)
