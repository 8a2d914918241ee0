"""Fan-out: turns committed events into deliveries, one `outbox.fan_out()` step at a time.

Writers record each event once; deliveries are written here, after commit and off the writer's
path. The database keeps it exactly once and gap-free (a cursor snapshot, one stepping relay at
a time: sql/migrations/0007_fan_out.sql), so any number of relays may run this loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from outbox.db.store import TRANSIENT, FanOutStep, Store
from outbox.errors import first_line

log = structlog.get_logger("outbox.fanout")


@dataclass(frozen=True)
class Pace:
    """How often the loop steps: at once while a step leaves events behind, every `active`
    seconds while events keep coming, backing off to every `idle` seconds when they stop."""

    max_events: int = 5_000  # events per step, roughly: one transaction's events are never split
    active: float = 0.002
    idle: float = 0.05


class FanOut:
    """One relay's side of fan-out, with running totals of what its steps wrote."""

    def __init__(self, store: Store, pace: Pace | None = None) -> None:
        self.store = store
        self.pace = pace or Pace()
        self.events = 0
        self.deliveries = 0

    async def step(self) -> FanOutStep:
        step = await self.store.fan_out(self.pace.max_events)
        self.events += step.events
        self.deliveries += step.deliveries
        return step

    async def catch_up(self) -> FanOutStep:
        """Step until every event committed before the call is fanned out (or another relay is
        stepping); returns the totals."""
        events = deliveries = 0
        while True:
            step = await self.step()
            events += step.events
            deliveries += step.deliveries
            if not step.more:
                return FanOutStep(events, deliveries, False)

    async def run(self, wrote: Callable[[], None]) -> None:
        """Step for the relay's life; `wrote()` after every step that wrote deliveries."""
        pace = self.pace
        interval = pace.active
        backoff = 0.2
        while True:
            try:
                step = await self.step()
            except TRANSIENT as exc:
                log.warning("fan-out: database unavailable; retrying", error=first_line(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.2
            if step.deliveries:
                wrote()
            if step.more:
                await asyncio.sleep(0)
                continue
            interval = pace.active if step.events else min(interval * 2, pace.idle)
            await asyncio.sleep(interval)
