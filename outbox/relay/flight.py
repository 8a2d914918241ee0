"""What one relay holds: claimed deliveries handed to its workers, counted per endpoint and in
total, until each attempt's outcome is queued for recording."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from outbox.db.store import Claimed


@dataclass
class Flight:
    """Claimed and not yet finished. A delivery stays in `held` until its outcome is queued, so
    one cut off at shutdown is handed back."""

    concurrency: int  # attempts in flight at once, in total
    per_endpoint_cap: int  # attempts in flight at once to any one endpoint
    held: dict[int, Claimed] = field(default_factory=dict)
    per_endpoint: dict[str, int] = field(default_factory=dict)
    queue: deque[Claimed] = field(default_factory=deque)  # handed out, not yet picked up
    idle: deque[asyncio.Future[Claimed]] = field(default_factory=deque)  # workers waiting
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing is held

    @property
    def room(self) -> int:
        return self.concurrency - len(self.held)

    def busy_endpoints(self) -> list[str]:
        """The endpoints at their cap, which a claim skips."""
        return [ep for ep, n in self.per_endpoint.items() if n >= self.per_endpoint_cap]

    def claim_limit(self, batch: int) -> int:
        """How many to claim: no more than the fullest endpoint not at its cap can still take,
        so a claim never brings more of an endpoint's deliveries than its cap allows."""
        cap = self.per_endpoint_cap
        fullest = max((n for n in self.per_endpoint.values() if n < cap), default=0)
        return min(batch, self.room, cap - fullest)

    def dispatch(self, claimed: list[Claimed]) -> list[Claimed]:
        """Hand each claimed delivery to a waiting worker or the queue; returns those over an
        endpoint's cap (to hand back)."""
        overflow: list[Claimed] = []
        for c in claimed:
            count = self.per_endpoint.get(c.endpoint_id, 0)
            if count >= self.per_endpoint_cap:
                overflow.append(c)
                continue
            self.per_endpoint[c.endpoint_id] = count + 1
            self.held[c.delivery_id] = c
            while self.idle:
                waiter = self.idle.popleft()
                if not waiter.done():  # a worker cancelled at shutdown leaves its waiter behind
                    waiter.set_result(c)
                    break
            else:
                self.queue.append(c)
        if self.held:
            self.settled.clear()
        return overflow

    def settle(self, c: Claimed) -> bool:
        """`c` is finished; returns whether that freed a slot a claim was held back for."""
        was_full = len(self.held) >= self.concurrency
        del self.held[c.delivery_id]
        left = self.per_endpoint[c.endpoint_id] - 1
        if left:
            self.per_endpoint[c.endpoint_id] = left
        else:
            del self.per_endpoint[c.endpoint_id]
        if not self.held:
            self.settled.set()
        return was_full or left + 1 >= self.per_endpoint_cap
