"""Writes attempt outcomes to the database in batches, retrying through outages, says which
endpoints' circuit breakers they opened or closed, and disables the endpoints that answered 410
Gone once their outcomes are written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from outbox.config import Breaker
from outbox.db.store import DEFAULT_BREAKER, TRANSIENT, Result, Store, Transition
from outbox.errors import first_line
from outbox.relay.breaker import verdicts

log = structlog.get_logger("outbox.relay")


# While outcomes trickle in (fewer than FEW queued when a write could start), the write waits
# GATHER seconds for more: at 500 deliveries/s each outcome was a transaction of its own, a
# durable commit and a round trip or more of the relay's CPU. A backlog's outcomes queue by the
# hundred while the previous batch is written, and are written at once.
GATHER = 0.005
FEW = 16


class Recorder:
    """Outcomes queue here as attempts finish; `run()` writes whatever has queued, a batch at a
    time, while the attempts go on."""

    def __init__(
        self,
        store: Store,
        take_gone: Callable[[], list[str]],
        breaker: Breaker = DEFAULT_BREAKER,
        gather: float = GATHER,
    ) -> None:
        self.store = store
        self.take_gone = take_gone
        self.breaker = breaker
        self.gather = gather
        self.since_vacuum = 0  # outcomes recorded since the last VACUUM
        self._queued: list[Result] = []
        self._writing: list[Result] = []  # the batch being written right now
        self._ready = asyncio.Event()

    def add(self, result: Result) -> None:
        self._queued.append(result)
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            if len(self._queued) < FEW and self.gather > 0:
                await asyncio.sleep(self.gather)
            self._ready.clear()
            batch, self._queued = self._queued, []
            if batch:
                self._writing = batch
                await self.record(batch)
                self._writing = []

    async def flush(self, deadline: float) -> None:
        """At shutdown, after `run()` was cancelled: write what is queued, and the batch whose
        write the cancel may have cut off (an outcome written twice is harmless: its lease token
        no longer matches the second time)."""
        batch, self._queued = self._writing + self._queued, []
        if batch:
            await self.record(batch, deadline=deadline)

    async def record(self, results: list[Result], *, deadline: float | None = None) -> None:
        """Write outcomes, retrying through database outages (until `deadline`, if given)."""
        backoff = 0.2
        while True:
            try:
                changed = await self.store.complete(results, verdicts(results), self.breaker)
                self.since_vacuum += len(results)
                _report(changed)
                gone = self.take_gone()
                if gone:
                    await self.store.disable_endpoints(gone)
                    log.warning("endpoints disabled after 410 Gone", endpoint_ids=gone)
            except TRANSIENT as exc:
                if deadline is not None and time.monotonic() + backoff > deadline:
                    log.error(
                        "outcomes not recorded; their deliveries will be sent again",
                        count=len(results),
                        error=first_line(exc),
                    )
                    return
                log.warning("database unavailable while recording; retrying", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                return


def _report(changed: list[Transition]) -> None:
    opened = [t.endpoint_id for t in changed if t.open]
    closed = [t.endpoint_id for t in changed if not t.open]
    if opened:
        log.warning(
            "circuit breaker opened: deliveries wait, one probe at a time", endpoint_ids=opened
        )
    if closed:
        log.info("circuit breaker closed: the endpoint answered again", endpoint_ids=closed)
