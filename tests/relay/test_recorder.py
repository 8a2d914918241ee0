"""Outcomes written in batches: a trickle's gathered for a moment, a backlog's at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg

from outbox.db.store import Claimed, Result, Store, Transition
from outbox.relay.recorder import FEW, Recorder
from tests.db.rows import fan_out

from . import add_endpoint, emit_one
from .test_store import outcome_of

Conn = psycopg.Connection[Any]
# Long beside the few event-loop turns between the outcomes below: the test never races it.
GATHER = 0.5


class CountingStore(Store):
    """A real Store that notes the size of every batch of outcomes it writes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.batches: list[int] = []

    async def complete(
        self, results: Sequence[Result], verdicts: Sequence[Any] = (), *args: Any
    ) -> list[Transition]:
        changed = await super().complete(results, verdicts, *args)
        self.batches.append(len(results))
        return changed


async def _claimed(conn: Conn, store: Store, count: int) -> list[Claimed]:
    add_endpoint(conn, "http://127.0.0.1:9/hook")
    for _ in range(count):
        emit_one(conn)
    fan_out(conn)
    return await store.claim(count, 30.0)


async def _batches(store: CountingStore, outcomes: list[list[Result]], gather: float) -> list[int]:
    """Queue each group of outcomes one event-loop turn after the last; the batches written."""
    recorder = Recorder(store, list, gather=gather)
    writing = asyncio.create_task(recorder.run())
    try:
        for group in outcomes:
            for result in group:
                recorder.add(result)
            for _ in range(3):
                await asyncio.sleep(0)
        total = sum(len(group) for group in outcomes)
        for _ in range(200):  # bounded: 10 s
            if sum(store.batches) >= total:
                break
            await asyncio.sleep(0.05)
    finally:
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
    return store.batches


async def test_outcomes_that_trickle_in_are_written_together(conn: Conn, db_url: str) -> None:
    store = CountingStore(db_url)
    await store.open()
    try:
        claimed = await _claimed(conn, store, 3)
        batches = await _batches(store, [[outcome_of(c)] for c in claimed], GATHER)
    finally:
        await store.close()
    # Without gathering, the first outcome is written alone as soon as it queues.
    assert batches == [3]
    recorded = conn.execute("select count(*) from outbox.attempts").fetchone()
    assert recorded == (3,)


async def test_a_backlogs_outcomes_are_written_without_waiting(conn: Conn, db_url: str) -> None:
    store = CountingStore(db_url)
    await store.open()
    try:
        claimed = await _claimed(conn, store, FEW + 1)
        first, last = claimed[:FEW], claimed[FEW:]
        batches = await _batches(
            store, [[outcome_of(c) for c in first], [outcome_of(c) for c in last]], GATHER
        )
    finally:
        await store.close()
    assert batches == [FEW, 1]


async def test_without_gathering_each_trickled_outcome_is_its_own_write(
    conn: Conn, db_url: str
) -> None:
    store = CountingStore(db_url)
    await store.open()
    try:
        claimed = await _claimed(conn, store, 3)
        batches = await _batches(store, [[outcome_of(c)] for c in claimed], 0.0)
    finally:
        await store.close()
    assert batches[0] == 1
    assert sum(batches) == 3
