"""Fan-out: turns committed events into deliveries, one `outbox.fan_out()` step at a time.

Writers record each event once; deliveries are written here, after commit and off the writer's
path. The database keeps it exactly once and gap-free (a cursor snapshot, one stepping relay at
a time: sql/migrations/0007_fan_out.sql), so any number of relays may run this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from outbox.db.store import TRANSIENT, FanOutStep, Store
from outbox.errors import first_line

log = structlog.get_logger("outbox.fanout")


@dataclass(frozen=True)
class Pace:
    """How much one step takes, and how often a relay with nothing to do looks for new events."""

    max_events: int = 5_000  # events per step, roughly: one transaction's events are never split
    idle: float = 0.05  # seconds between looks while the relay is idle


class FanOut:
    """One relay's side of fan-out, with running totals of what its steps wrote.

    The relay makes one step before each claim, so an event is fanned out and claimed in the same
    turn of its loop. A step that leaves committed events behind (a backlog, or a large
    transaction) hands the rest to `catch_up()` in a task of its own, so claims go on meanwhile.
    """

    def __init__(self, store: Store, pace: Pace | None = None) -> None:
        self.store = store
        self.pace = pace or Pace()
        self.events = 0
        self.deliveries = 0
        self._catching_up: asyncio.Task[None] | None = None

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

    async def before_claim(self, wrote: Callable[[], None]) -> FanOutStep:
        """The relay's step: one fan-out step, unless a catch-up is running; a step that leaves
        events behind starts one, which calls `wrote()` after each step that wrote deliveries."""
        if self._catching_up is not None and not self._catching_up.done():
            return FanOutStep()
        step = await self.step()
        if step.more:
            self._catching_up = asyncio.create_task(self._catch_up(wrote))
        return step

    async def _catch_up(self, wrote: Callable[[], None]) -> None:
        while True:
            try:
                step = await self.step()
            except TRANSIENT as exc:
                # The relay's next step starts a new catch-up if one is still needed.
                log.warning("fan-out: database unavailable", error=first_line(exc))
                return
            if step.deliveries:
                wrote()
            if not step.more:
                return

    async def close(self) -> None:
        if self._catching_up is not None:
            self._catching_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._catching_up
