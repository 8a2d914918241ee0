"""The relay's own loop, run in this process: when it asks writers for a NOTIFY and when not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from . import add_endpoint, emit_one, receiving, running_relay, until

Conn = psycopg.Connection[Any]
TRICKLE = 40


def _idle(conn: Conn) -> list[bool]:
    return [row[0] for row in conn.execute("select idle from outbox.relays").fetchall()]


async def test_a_trickle_of_writes_is_gathered_by_claims_not_by_a_notify_per_write(
    conn: Conn, db_url: str
) -> None:
    with receiving() as receiver, psycopg.connect(db_url, autocommit=True) as writer:
        add_endpoint(conn, receiver.url("/hook"))
        async with running_relay(db_url) as relay:
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop))
            try:
                # Nothing due: the relay says it is idle, so writers wake it with a NOTIFY.
                await until(lambda: _idle(conn) == [True], "the relay says it is idle")

                def trickle() -> list[bool]:
                    seen = []
                    for _ in range(TRICKLE):
                        emit_one(writer)
                        time.sleep(0.01)
                        seen += _idle(conn)
                    return seen

                seen = await asyncio.to_thread(trickle)
                # Work arriving every 10 ms: the relay says it is busy and claims every few
                # milliseconds, so the writers stop sending a NOTIFY each.
                assert False in seen, seen
                await until(lambda: len(receiver.requests) == TRICKLE, "every event arrives")
                # Once the trickle dries up, it is idle again and writers wake it.
                await until(lambda: _idle(conn) == [True], "the relay is idle again")
                emit_one(writer)
                await until(lambda: len(receiver.requests) == TRICKLE + 1, "a late write arrives")
            finally:
                stop.set()
                await running
    assert conn.execute("select count(*) from outbox.relays").fetchone() == (0,)
