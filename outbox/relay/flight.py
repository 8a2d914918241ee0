"""What one relay holds: claimed deliveries handed to its workers, counted per endpoint, in total
and in bytes, until each attempt's outcome is queued for recording."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from outbox.db.store import Claimed

# The event data a relay holds at once, rendered bodies aside (those are cached within their own
# bound). A thousand 1 KB events take a megabyte; at the 1 MiB payload cap this is 16 deliveries
# in flight, and the relay's memory stays well inside 200 MB however large the events are.
HELD_BYTES: Final = 16 * 1_048_576


def held_size(c: Claimed) -> int:
    """What a claimed delivery's event takes in memory, near enough (its JSON texts' lengths)."""
    return len(c.data_json) + (len(c.previous_json) if c.previous_json is not None else 0)


@dataclass
class Flight:
    """Claimed and not yet finished. A delivery stays in `held` until its outcome is queued, so
    one cut off at shutdown is handed back."""

    concurrency: int  # attempts in flight at once, in total
    per_endpoint_cap: int  # attempts in flight at once to any one endpoint
    held_bytes_cap: int = HELD_BYTES  # event data held at once, in bytes (one delivery at least)
    held: dict[int, Claimed] = field(default_factory=dict)
    held_bytes: int = 0
    # The expected size of the next claim's deliveries: the mean of the last claim. Before the
    # first, the largest event the payload cap admits is assumed, so a relay started on a backlog
    # of large events does not take a whole batch of them at once.
    per_delivery: float = 1_048_576.0
    per_endpoint: dict[str, int] = field(default_factory=dict)
    queue: deque[Claimed] = field(default_factory=deque)  # handed out, not yet picked up
    idle: deque[asyncio.Future[Claimed]] = field(default_factory=deque)  # workers waiting
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing is held

    @property
    def room(self) -> int:
        """How many more deliveries may be claimed: none while another of the last claim's
        mean size would not fit under `held_bytes_cap` (one, at least, when nothing is held)."""
        if self.held and self.held_bytes + self.per_delivery > self.held_bytes_cap:
            return 0
        return self.concurrency - len(self.held)

    def busy_endpoints(self) -> list[str]:
        """The endpoints at their cap, which a claim skips."""
        return [ep for ep, n in self.per_endpoint.items() if n >= self.per_endpoint_cap]

    def claim_limit(self, batch: int) -> int:
        """How many to claim: no more than the fullest endpoint not at its cap can still take,
        so a claim never brings more of an endpoint's deliveries than its cap allows, and no more
        than the bytes left under `held_bytes_cap` hold at the last claim's mean size."""
        cap = self.per_endpoint_cap
        fullest = max((n for n in self.per_endpoint.values() if n < cap), default=0)
        fits = int((self.held_bytes_cap - self.held_bytes) / max(self.per_delivery, 1.0))
        return min(batch, self.room, cap - fullest, max(fits, 1))

    def observe(self, claimed: list[Claimed]) -> None:
        """Take the mean size of a claim's deliveries as the next claim's expectation."""
        if claimed:
            self.per_delivery = sum(held_size(c) for c in claimed) / len(claimed)

    def dispatch(self, claimed: list[Claimed]) -> list[Claimed]:
        """Hand each claimed delivery to a waiting worker or the queue; returns those over an
        endpoint's cap (to hand back)."""
        overflow: list[Claimed] = []
        self.observe(claimed)
        for c in claimed:
            count = self.per_endpoint.get(c.endpoint_id, 0)
            if count >= self.per_endpoint_cap:
                overflow.append(c)
                continue
            self.per_endpoint[c.endpoint_id] = count + 1
            self.held[c.delivery_id] = c
            self.held_bytes += held_size(c)
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
        was_full = self.room <= 0
        del self.held[c.delivery_id]
        self.held_bytes -= held_size(c)
        left = self.per_endpoint[c.endpoint_id] - 1
        if left:
            self.per_endpoint[c.endpoint_id] = left
        else:
            del self.per_endpoint[c.endpoint_id]
        if not self.held:
            self.settled.set()
        return was_full or left + 1 >= self.per_endpoint_cap
