"""Captured events read back as text, and a model of what capture writes for a row going from
one version to the next, to compare them with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


@dataclass(frozen=True)
class Captured:
    """One event as captured, its jsonb columns as text."""

    type: str
    account_id: str | None
    data: str
    previous: str | None


def take_events(conn: Conn) -> list[Captured]:
    """The events written since the last call, oldest first, removed from the outbox."""
    rows = conn.execute(
        "delete from outbox.events "
        "returning id, type, account_id, data::text, previous_attributes::text"
    ).fetchall()
    return [Captured(*row[1:]) for row in sorted(rows)]


def row_text(reader: Conn, table: sql.Composable, key: str, value: object) -> str:
    """`to_jsonb` of one row as text, rendered by the reader's fixed session settings."""
    query = sql.SQL("select to_jsonb(t.*)::text from {} t where t.{} = %s").format(
        table, sql.Identifier(key)
    )
    row = reader.execute(query, [value]).fetchone()
    assert row is not None
    return str(row[0])


def parsed(text: str) -> Any:
    """JSON with exact decimals, so values compare the way jsonb compares them."""
    return json.loads(text, parse_float=Decimal)


def account_text(row: Row, column: str | None) -> str | None:
    """What `row_json ->> column` gives: a string as it is, any other value as JSON text."""
    value = None if column is None else row.get(column)
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def changed(old: Row, new: Row) -> Row:
    return {key: value for key, value in old.items() if new.get(key) != value}


Expected = tuple[str, str, Row | None, str | None]  # type, data as text, previous, account


def attached_events(
    entity: str,
    actions: set[str],
    account_column: str | None,
    old: str | None,
    new: str | None,
) -> list[Expected]:
    """What attach()'s triggers capture for one row going from `old` to `new` (None: absent)."""
    before = None if old is None else parsed(old)
    after = None if new is None else parsed(new)
    if before is None and after is not None:
        return [(f"{entity}.created", new, None, account_text(after, account_column))] * (
            "created" in actions
        )
    if after is None and before is not None:
        return [(f"{entity}.deleted", old, None, account_text(before, account_column))] * (
            "deleted" in actions
        )
    assert old is not None
    assert new is not None
    if "updated" not in actions:
        return []
    was, now = account_text(before, account_column), account_text(after, account_column)
    if was != now:
        return [(f"{entity}.deleted", old, None, was), (f"{entity}.created", new, None, now)]
    previous = changed(before, after)
    return [(f"{entity}.updated", new, previous, now)] if previous else []


def differences(captured: str, rendered: str) -> str:
    """The members where captured data and PostgreSQL's rendering of the row differ."""
    got, want = parsed(captured), parsed(rendered)
    if not (isinstance(got, dict) and isinstance(want, dict)):
        return f"captured {captured[:200]}, row {rendered[:200]}"
    keys = [k for k in {*got, *want} if got.get(k, ...) != want.get(k, ...)]
    return "; ".join(f"{k}: captured {got.get(k)!r}, row {want.get(k)!r}" for k in keys)


def assert_captured(events: list[Captured], expected: list[Expected]) -> None:
    assert [e.type for e in events] == [x[0] for x in expected]
    for got, (_, data, previous, account) in zip(events, expected, strict=True):
        assert got.data == data, differences(got.data, data)
        assert got.account_id == account
        assert (None if got.previous is None else parsed(got.previous)) == previous
