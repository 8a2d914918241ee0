"""Reading outbox rows back in tests: captured events, deliveries and application rows as JSON."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

EVENT_ID = re.compile(r"^evt_[0-9a-f]+$")


def drain(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The events recorded since the last drain, oldest first, removed so the next drain starts
    clean (their deliveries go with them)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "delete from outbox.events returning id, type, created_at, data, previous_attributes"
        )
        return sorted(cur.fetchall(), key=lambda event: event["id"])


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def count(conn: psycopg.Connection[Any], table: str) -> int:
    query = sql.SQL("select count(*) from {}").format(sql.Identifier(*table.split(".")))
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def table_row(conn: psycopg.Connection[Any], table: str, row_id: int) -> dict[str, Any]:
    """`to_jsonb` of one row, rendered by `conn` (tests give it TimeZone UTC)."""
    query = sql.SQL("select to_jsonb(t) from {} t where t.id = %s").format(
        sql.Identifier(*table.split("."))
    )
    row = conn.execute(query, [row_id]).fetchone()
    assert row is not None, f"no row {row_id} in {table}"
    value: dict[str, Any] = row[0]
    return value


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The old values of the columns whose value differs between two versions of a row."""
    return {key: value for key, value in before.items() if after[key] != value}


def insert(conn: psycopg.Connection[Any], table: str, **values: Any) -> int:
    """Insert one row into `table` and return its id."""
    query = sql.SQL("insert into {} ({}) values ({}) returning id").format(
        sql.Identifier(*table.split(".")),
        sql.SQL(", ").join(sql.Identifier(name) for name in values),
        sql.SQL(", ").join(sql.Placeholder() for _ in values),
    )
    row = conn.execute(query, list(values.values())).fetchone()
    assert row is not None
    return int(row[0])


def fan_out(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Fan out every committed event as a relay's steps would: (events, deliveries written)."""
    events = deliveries = 0
    while True:
        row = conn.execute("select events, deliveries, more from outbox.fan_out()").fetchone()
        assert row is not None
        events, deliveries = events + row[0], deliveries + row[1]
        if not row[2]:
            return events, deliveries


def backdate_event(conn: psycopg.Connection[Any], event_id: str, age: Any) -> None:
    """Move an event's created_at `age` into the past, as if written then. Events are append-only,
    so this goes round their trigger (a superuser's session_replication_role)."""
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute(
            "update outbox.events set created_at = now() - %s::interval where id = %s",
            [age, event_id],
        )
