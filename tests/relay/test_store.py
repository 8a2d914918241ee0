"""The relay's queries against a real database: what an outcome records, whatever its text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from outbox.db.store import Result, Store, claim_statement
from outbox.db.turns import Turns
from tests.db.rows import fan_out

from . import add_endpoint, attempts, emit_one, only_delivery

Conn = psycopg.Connection[Any]


def outcome_of(claimed: Any, **changes: Any) -> Result:
    result = Result(
        delivery_id=claimed.delivery_id,
        lease=claimed.lease,
        attempt=claimed.attempts + 1,
        status="pending",
        delay=60.0,
        started_at=datetime.now(UTC),
        duration_ms=12.5,
        status_code=500,
        error="http: 500",
        response_body="oops",
    )
    return replace(result, **changes)


@asynccontextmanager
async def store_with_due(conn: Conn, db_url: str, events: int) -> AsyncIterator[Store]:
    """An open Store on a database with `events` events due for one endpoint."""
    add_endpoint(conn, "http://127.0.0.1:9/hook")
    for _ in range(events):
        emit_one(conn)
    fan_out(conn)
    store = Store(db_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_an_outcome_records_the_delivery_summary_and_its_attempt(
    conn: Conn, db_url: str
) -> None:
    async with store_with_due(conn, db_url, events=1) as store:
        (claimed,) = await store.claim(10, 30.0)
        await store.complete([outcome_of(claimed, response_body='{"é": "😀"}')])
    row = only_delivery(conn)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 500)
    assert row["last_error"] == "http: 500"
    assert 55 <= (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds() <= 65
    (attempt,) = attempts(conn, claimed.delivery_id)
    assert attempt["duration_ms"] == 12.5
    assert attempt["response_body"] == '{"é": "😀"}'


async def test_nul_and_lone_surrogates_in_an_outcome_are_replaced_not_fatal(
    conn: Conn, db_url: str
) -> None:
    async with store_with_due(conn, db_url, events=2) as store:
        first, second = await store.claim(10, 30.0)
        await store.complete(
            [
                outcome_of(first, error="protocol: bad \x00 byte", response_body="a\x00b"),
                outcome_of(second, error="connection: \udcff name", status="failed"),
            ]
        )
    one = attempts(conn, first.delivery_id)[0]
    assert (one["error"], one["response_body"]) == ("protocol: bad \ufffd byte", "a\ufffdb")
    two = attempts(conn, second.delivery_id)[0]
    assert two["error"] == "connection: ? name"


async def test_an_outcome_under_an_expired_lease_is_dropped(conn: Conn, db_url: str) -> None:
    async with store_with_due(conn, db_url, events=1) as store:
        (claimed,) = await store.claim(10, 30.0)
        conn.execute("update outbox.deliveries set next_attempt_at = now()")  # taken over
        await store.complete([outcome_of(claimed, status="delivered", status_code=200)])
    assert only_delivery(conn)["status"] == "pending"
    assert attempts(conn, claimed.delivery_id) == []


def test_the_claim_alone_commits_without_waiting_for_the_wal_flush(conn: Conn) -> None:
    # The claim's own transaction runs with synchronous_commit off; the session keeps its
    # setting, so outcomes (recorded on the same pooled connections) still commit durably.
    add_endpoint(conn, "http://127.0.0.1:9/hook")
    emit_one(conn)
    fan_out(conn)
    claim = claim_statement(walk=False)
    assert conn.execute("show synchronous_commit").fetchone() == ("on",)
    with conn.transaction():
        claimed = conn.execute(
            claim, {"limit": 10, "lease": 30.0, "busy": [], **Turns().params()}
        ).fetchall()
        assert len(claimed) == 1
        assert conn.execute("show synchronous_commit").fetchone() == ("off",)
    assert conn.execute("show synchronous_commit").fetchone() == ("on",)


@pytest.mark.parametrize("idle", [0, 120], ids=["few-endpoints", "many-endpoints"])
async def test_endpoints_with_due_work_take_turns_from_one_claim_to_the_next(
    conn: Conn, db_url: str, idle: int
) -> None:
    """Three endpoints with ten due deliveries each (every event fans out to all three): claims
    of ten go to each endpoint in turn and then wrap, oldest due first within each. With over a
    hundred enabled endpoints the claim finds those with work by walking the pending index
    instead of asking each: the same turns."""
    conn.execute(
        "insert into outbox.endpoints (url, event_types)"
        " select 'http://127.0.0.1:9/idle', '{post.failed}' from generate_series(1, %s) g",
        [idle],
    )
    for name in ("a", "b", "c"):
        add_endpoint(conn, f"http://127.0.0.1:9/{name}")
    events = [emit_one(conn) for _ in range(10)]
    fan_out(conn)
    order = [
        r[0]
        for r in conn.execute(
            "select id from outbox.endpoints where url <> 'http://127.0.0.1:9/idle'"
            " order by id desc"
        ).fetchall()
    ]
    store = Store(db_url)
    await store.open()
    try:
        claims = [await store.claim(5, 30.0) for _ in range(6)]
        assert store.walking is (idle > 0)
    finally:
        await store.close()

    assert [{c.endpoint_id for c in claim} for claim in claims] == [{ep} for ep in order * 2]
    for first, second in zip(claims[:3], claims[3:], strict=True):
        assert {c.event_id for c in first} == set(events[:5])
        assert {c.event_id for c in second} == set(events[5:])


async def test_accounts_take_turns_and_endpoints_take_turns_within_an_account(
    conn: Conn, db_url: str
) -> None:
    """Account a1 has three endpoints with due work, a2 one, and the account-less feed one: each
    claim (of up to three, so none takes another's turn) goes to the next account, a1's three
    endpoints taking a1's turns in order; a2 is not made to wait behind a1's three."""
    ids: dict[str, list[str]] = {}
    for account, count in (("a1", 3), ("a2", 1), (None, 1)):
        for n in range(count):
            row = conn.execute(
                "insert into outbox.endpoints (url, event_types, account_id)"
                " values (%s, '{*}', %s) returning id",
                [f"http://127.0.0.1:9/{account}/{n}", account],
            ).fetchone()
            assert row is not None
            ids.setdefault(account or "", []).append(str(row[0]))
    for account in ("a1", "a2", None):
        for _ in range(9):
            conn.execute("select outbox.emit('test.ping', '{}'::jsonb, account => %s)", [account])
    fan_out(conn)
    store = Store(db_url)
    await store.open()
    try:
        claims = [await store.claim(3, 30.0) for _ in range(9)]
    finally:
        await store.close()
    took = [{(c.account_id or "", c.endpoint_id) for c in claim} for claim in claims]
    a1 = sorted(ids["a1"], reverse=True)
    # Accounts in descending order, wrapping round: a2, a1, '' (the account-less feed), ...
    expected = [
        {("a2", ids["a2"][0])}, {("a1", a1[0])}, {("", ids[""][0])},
        {("a2", ids["a2"][0])}, {("a1", a1[1])}, {("", ids[""][0])},
        {("a2", ids["a2"][0])}, {("a1", a1[2])}, {("", ids[""][0])},
    ]  # fmt: skip
    assert took == expected


async def test_the_relays_connections_do_not_jit_compile(conn: Conn, db_url: str) -> None:
    """JIT compiling a claim whose plan is costed high took 16 ms a run; the relay turns it off."""
    async with store_with_due(conn, db_url, events=1) as store, store.pool.connection() as own:
        cur = await own.execute("select current_setting('jit')")
        assert await cur.fetchone() == ("off",)
