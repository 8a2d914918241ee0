"""The relay's memory is bounded in bytes, not only in count: events of about 1 MB each are
claimed no more than HELD_BYTES at a time, and a relay with nothing to do holds no event."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import psycopg

from outbox.db.store import Claimed, Result
from outbox.relay.flight import HELD_BYTES

from . import add_endpoint, receiving, running_relay, until

Conn = psycopg.Connection[Any]
EVENTS = 48
EVENT_BYTES = 900_000  # within the default payload cap of 1 MiB once wrapped


def add_large_events(conn: Conn, count: int) -> None:
    conn.execute(
        "select outbox.emit('contact.created', jsonb_build_object('id', g, 'note',"
        " repeat(md5(g::text), %s / 32)))"
        " from generate_series(1, %s) g",
        [EVENT_BYTES, count],
    )


def live_claims() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Claimed))


async def test_large_events_are_held_within_the_byte_bound_and_let_go_when_done(
    conn: Conn, db_url: str
) -> None:
    held: list[int] = []

    class Watch:
        def attempt(self, claimed: Claimed, result: Result, latency_s: float | None) -> None:
            held.append(relay.flight.held_bytes)

    with receiving() as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        add_large_events(conn, EVENTS)
        async with running_relay(db_url) as relay:
            relay.attempts.observer = Watch()
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop))
            try:
                await until(lambda: len(receiver.requests) == EVENTS, "every event arrives", 60)
                await until(lambda: not relay.flight.held, "the relay holds nothing", 30)
                # Idle, the relay's workers keep nothing of the deliveries they made.
                assert live_claims() == 0
            finally:
                stop.set()
                await running
    assert len(held) == EVENTS
    # Never more than the bound, give or take the one delivery that may cross it.
    assert max(held) <= HELD_BYTES + EVENT_BYTES + 4096, max(held)
