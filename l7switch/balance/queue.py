"""Requests waiting for a server slot: HAProxy's per-server ``maxconn`` with its queues.

A server with ``maxconn: N`` never has more than N requests in flight. A request that finds no
server with room waits, in arrival order, in one of two FIFO queues of its pool (HAProxy's
``pendconn``, queue.c):

- the pool's queue, for a request any server may take (the scheduler found every server full);
- a server's own queue, for a request bound to that server (a sticky session, or a hashing
  scheduler's choice: sending it elsewhere would break the session or the locality).

When a request to a server ends, the server takes the oldest waiting request of the two queues
that it may serve (``next_for``), so both are served in arrival order (HAProxy's
``pendconn_process_next_strm`` compares the two heads' keys the same way).

Pure bookkeeping: a waiting request is a ``Ticket`` holding an object with ``dequeued(server)``
and ``queue_expired()``; the proxy watches the ticket's ``deadline`` on its clock and calls
``expire``; a client that leaves calls ``cancel``. Cancelled tickets are dropped lazily when they
reach the head of their queue, so leaving costs O(1); the counts stay exact.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from .servers import Server


class Waiter(Protocol):
    def dequeued(self, server: Server) -> None: ...

    def queue_expired(self) -> None: ...

    def requeue(self) -> None:
        """The server it waited for went down: choose again."""


class Ticket:
    """One request waiting in a queue (watched by the clock: ``deadline``/``on_deadline``)."""

    __slots__ = ("waiter", "seq", "server", "deadline", "queue", "live")

    def __init__(self, waiter: Waiter, seq: int, server: Server | None, deadline: float,
                 queue: RequestQueue) -> None:
        self.waiter = waiter
        self.seq = seq  # arrival order within the pool
        self.server = server  # None: any server of the pool
        self.deadline = deadline
        self.queue = queue
        self.live = True

    def on_deadline(self, now: float) -> None:
        self.queue.expire(self)

    def __repr__(self) -> str:
        where = self.server.name if self.server is not None else "pool"
        return f"<Ticket #{self.seq} {where} {'waiting' if self.live else 'gone'}>"


class RequestQueue:
    """The waiting requests of one pool: its own queue and one per server."""

    __slots__ = ("pool_name", "pending", "by_server", "count", "max", "timeout", "seq",
                 "expired", "served", "rejected")

    def __init__(self, pool_name: str, max_size: int, timeout: float) -> None:
        self.pool_name = pool_name
        self.pending: deque[Ticket] = deque()  # any server
        self.by_server: dict[Server, deque[Ticket]] = {}
        self.count = 0  # live tickets in all the queues
        self.max = max_size  # queue.max: live tickets at most, pool and servers together
        self.timeout = timeout  # queue.timeout (or timeouts.queue)
        self.seq = 0
        self.expired = 0  # counters for the monitor
        self.served = 0
        self.rejected = 0

    @property
    def is_full(self) -> bool:
        return self.count >= self.max

    def push(self, waiter: Waiter, server: Server | None, now: float) -> Ticket | None:
        """Queue ``waiter`` (for ``server``, or any server); None when the queue is full."""
        if self.count >= self.max:
            self.rejected += 1
            return None
        self.seq += 1
        ticket = Ticket(waiter, self.seq, server, now + self.timeout, self)
        if server is None:
            self.pending.append(ticket)
        else:
            self.by_server.setdefault(server, deque()).append(ticket)
            server.queued += 1
        self.count += 1
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The request left (its client went away): it stops counting at once."""
        if ticket.live:
            self._drop(ticket)

    def expire(self, ticket: Ticket) -> None:
        """``timeouts.queue`` passed: the request is answered 503."""
        if ticket.live:
            self._drop(ticket)
            self.expired += 1
            ticket.waiter.queue_expired()

    def _drop(self, ticket: Ticket) -> None:
        ticket.live = False
        ticket.deadline = 0.0
        self.count -= 1
        if ticket.server is not None:
            ticket.server.queued -= 1

    def take_for(self, server: Server) -> list[Ticket]:
        """Every live request waiting for ``server`` in particular, removed from the queue."""
        own = self.by_server.pop(server, None)
        tickets = [t for t in own or () if t.live]
        for ticket in tickets:
            self._drop(ticket)
        return tickets

    def next_for(self, server: Server, any_server: bool = True) -> Ticket | None:
        """The oldest live request ``server`` may take now: from its own queue, or from the
        pool's when ``any_server`` (the server is available for new work, not just up for its
        sessions). The ticket is removed; the caller hands the server to ``ticket.waiter``."""
        own = self.by_server.get(server)
        if own is not None:
            while own and not own[0].live:
                own.popleft()
        pending = self.pending
        if any_server:
            while pending and not pending[0].live:
                pending.popleft()
        head_own = own[0] if own else None
        head_any = pending[0] if any_server and pending else None
        if head_own is None and head_any is None:
            return None
        if head_any is None or (head_own is not None and head_own.seq < head_any.seq):
            assert own is not None
            ticket = own.popleft()
        else:
            ticket = pending.popleft()
        self._drop(ticket)
        self.served += 1
        return ticket

    def snapshot(self) -> dict[str, Any]:
        return {"queued": self.count, "max": self.max, "timeout": self.timeout,
                "pool_queue": self.count - sum(s.queued for s in self.by_server),
                "served": self.served, "expired": self.expired, "rejected": self.rejected}

    def __repr__(self) -> str:
        return f"<RequestQueue {self.pool_name} {self.count}/{self.max}>"
