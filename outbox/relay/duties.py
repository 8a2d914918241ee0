"""The relay's background duties: VACUUM of outbox.deliveries while draining, a summary line of
the work done every few seconds, disabling endpoints that keep failing, and LISTEN for operators'
wake-ups."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import psycopg
import structlog

from outbox.db.store import TRANSIENT, Store, listen
from outbox.errors import first_line
from outbox.relay.attempts import Tally
from outbox.relay.fanout import FanOut
from outbox.relay.flight import Flight
from outbox.relay.recorder import Recorder

log = structlog.get_logger("outbox.relay")


async def vacuum_while_draining(
    store: Store, recorder: Recorder, draining: Callable[[], bool], every: float
) -> None:
    """VACUUM outbox.deliveries every `every` seconds while the relay drains a backlog.

    Each attempt leaves dead row versions and index entries, and every claim walks the dead
    entries at the head of each endpoint's range of the pending index that it visits. Draining a
    backlog, a relay leaves hundreds of thousands of them in the minute autovacuum takes to come
    round, and full claims walk them all. Keeping pace with a trickle, it claims a few rows at a
    time, and there a VACUUM costs more than it saves: the relay's CPU per delivery measured the
    same without it (10 minutes at 1,000 events/s), while each VACUUM reads every index of the
    table whole, so takes longer as the table grows (40 ms at 10k rows, 330 ms at 600k), and the
    deliveries that wait behind it set the tail latency. Draining: the latest claim came back
    full, or short only for skipping endpoints at their cap (a trickle's claim comes back full
    too after a stall, but the next one finds the relay caught up)."""
    allowed: bool | None = None
    while every > 0:
        await asyncio.sleep(every)
        if not recorder.since_vacuum or not draining():
            continue
        try:
            if allowed is None:
                allowed = await store.may_vacuum()
                if not allowed:
                    log.info(
                        "this role may not vacuum outbox.deliveries (the owner may, and from "
                        "PostgreSQL 17 outbox_relay); leaving it to autovacuum"
                    )
                    return
            started, since = time.monotonic(), recorder.since_vacuum
            await store.vacuum()
            recorder.since_vacuum -= since
            log.info(
                "vacuumed outbox.deliveries",
                outcomes_since_last=since,
                duration_ms=round((time.monotonic() - started) * 1000.0, 1),
            )
        except psycopg.Error as exc:
            log.warning("vacuum of outbox.deliveries failed", error=first_line(exc))


async def summarize(tally: Tally, fan_out: FanOut, flight: Flight, every: float) -> None:
    """Every `every` seconds in which attempts finished or events were fanned out, one line
    counting them."""
    seen = dataclasses.replace(tally)
    fanned = (fan_out.events, fan_out.deliveries)
    since = time.monotonic()
    while every > 0:
        await asyncio.sleep(every)
        now = time.monotonic()
        finished = tally.claimed - seen.claimed
        if finished or fan_out.events != fanned[0]:
            log.info(
                "attempts",
                fanned_out_events=fan_out.events - fanned[0],
                deliveries_written=fan_out.deliveries - fanned[1],
                delivered=tally.delivered - seen.delivered,
                retrying=tally.retrying - seen.retrying,
                failed=tally.failed - seen.failed,
                per_s=round(finished / (now - since), 1),
                window_s=round(now - since, 1),
                in_flight=len(flight.held),
            )
        seen, since = dataclasses.replace(tally), now
        fanned = (fan_out.events, fan_out.deliveries)


async def listen_for_wake_ups(url: str, wake: Callable[[], None]) -> None:
    """`wake()` at every NOTIFY on the wake-up channel, reconnecting with backoff."""
    backoff = 0.2
    while True:
        try:
            async for _ in listen(url):
                backoff = 0.2
                wake()
        except TRANSIENT as exc:
            log.warning("wake-up connection lost; reconnecting", error=str(exc))
            wake()  # notifications may have been missed meanwhile
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
