"""Capture searched rather than listed: rows of every column type, on the Stover tables and on an
attached application table, written under random session settings, are each refused with one
clear line by the write itself or captured exactly as PostgreSQL renders the row under fixed
settings, as strict JSON that Node.js writes back byte for byte."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql
from support import NodeRoundtrip, node_roundtrip

from outbox import payload
from tests.unit.jsontrees import numbers_fit_doubles

from .captured import (
    Captured,
    Expected,
    Row,
    account_text,
    assert_captured,
    attached_events,
    changed,
    parsed,
    row_text,
    take_events,
)
from .columns import (
    EVERY_TYPE,
    EVERY_TYPE_DDL,
    EVERY_TYPE_SETUP,
    PROPERTY,
    apply_session,
    assert_write_refused,
    every_type_rows,
    insert_values,
    json_objects,
    nullable,
    raised_in_capture,
    refusal,
    sessions,
    texts,
    timestamptz_texts,
    update_values,
)
from .rows import insert

Conn = psycopg.Connection[Any]


# ---- the Stover tables -------------------------------------------------------------------------

STAGES = ["lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost"]
STATUSES = ["draft", "scheduled", "published", "failed"]
AMOUNTS = st.sampled_from(
    [
        *("0", "-0.00", "1000.50", "0.005", "999999999999.99", "-999999999999.99", "1e3", "NaN"),
        *("999999999999.995", "Infinity", "1e12"),  # beyond numeric(14,2)
    ]
) | st.decimals(-(10**12) + 1, 10**12 - 1, places=2).map(str)
Columns = dict[str, tuple[str, st.SearchStrategy[Any]]]  # name: (declared type, values)


@dataclass(frozen=True)
class Setup:
    """Rows the generated rows may point at (and one id that points at nothing)."""

    accounts: list[int]
    companies: list[int]
    contacts: list[int]

    def ref(self, ids: list[int]) -> st.SearchStrategy[str | None]:
        return nullable(st.sampled_from([*ids * 4, 10**9]).map(str))


def reference_columns(table: str, ids: Setup) -> Columns:
    """Each column's declared type and the values tried for it (valid ones mostly)."""
    stamps = dict.fromkeys(("created_at", "updated_at"), ("timestamptz", timestamptz_texts))
    optional_text = ("text", nullable(texts))
    columns: dict[str, Columns] = {
        "companies": {"name": ("text", texts), "domain": ("text", nullable(texts)), **stamps},
        "contacts": {
            **dict.fromkeys(("first_name", "last_name", "email", "phone"), optional_text),
            "company_id": ("bigint", ids.ref(ids.companies)),
            "custom_fields": ("jsonb", json_objects),
            **stamps,
        },
        "deals": {
            "name": ("text", texts),
            "amount": ("numeric", nullable(AMOUNTS)),
            "currency": ("text", texts),
            "stage": ("text", st.sampled_from([*STAGES * 3, "won", "", "LEAD", "lead\n"])),
            "company_id": ("bigint", ids.ref(ids.companies)),
            "contact_id": ("bigint", ids.ref(ids.contacts)),
            **stamps,
        },
        "posts": {
            "network": ("text", texts),
            "content": ("text", texts),
            "status": ("text", st.sampled_from([*STATUSES * 3, "sent", "Published", " draft"])),
            "scheduled_at": ("timestamptz", nullable(timestamptz_texts)),
            "published_at": ("timestamptz", nullable(timestamptz_texts)),
            "error": ("text", nullable(texts)),
            **stamps,
        },
        "attribution_events": {
            **dict.fromkeys(("source", "medium", "campaign", "url"), optional_text),
            "contact_id": ("bigint", ids.ref(ids.contacts)),
            "occurred_at": ("timestamptz", timestamptz_texts),
        },
    }
    return {**columns[table], "account_id": ("bigint", ids.ref(ids.accounts))}


def deal_events(old: str | None, new: str | None) -> list[Expected]:
    """deal.created; deal.updated, plus deal.stage_changed and deal.closed_* as stage moves."""
    events = attached_events("deal", {"created", "updated"}, "account_id", old, new)
    if new is None or [e[0] for e in events] != ["deal.updated"]:
        return events
    previous, stage = events[0][2] or {}, parsed(new)["stage"]
    if "stage" in previous:
        events.append(("deal.stage_changed", *events[0][1:]))
        if stage in ("closed_won", "closed_lost"):
            events.append((f"deal.{stage}", *events[0][1:]))
    return events


def post_events(old: str | None, new: str | None) -> list[Expected]:
    """post.<status> when a write makes status scheduled, published or failed."""
    after = None if new is None else parsed(new)
    if new is None or after is None or after["status"] not in ("scheduled", "published", "failed"):
        return []
    previous = None if old is None else changed(parsed(old), after)
    if previous is not None and "status" not in previous:
        return []
    return [(f"post.{after['status']}", new, previous, account_text(after, "account_id"))]


def attribution_events(old: str | None, new: str | None) -> list[Expected]:
    if old is not None or new is None:
        return []
    return [("attribution.tracked", new, None, account_text(parsed(new), "account_id"))]


# The contract's event table, for one row of each Stover table going from `old` to `new`.
STOVER_EVENTS: dict[str, Callable[[str | None, str | None], list[Expected]]] = {
    "contacts": lambda old, new: attached_events(
        "contact", {"created", "updated", "deleted"}, "account_id", old, new
    ),
    "companies": lambda old, new: attached_events(
        "company", {"created", "updated"}, "account_id", old, new
    ),
    "deals": deal_events,
    "posts": post_events,
    "attribution_events": attribution_events,
}


@pytest.fixture
def stover_rows(writer: Conn) -> Setup:
    with writer.transaction():
        accounts = [insert(writer, "stover.accounts", name=n) for n in ("one", "two")]
        company = insert(writer, "stover.companies", name="Acme", account_id=accounts[0])
        contact = insert(writer, "stover.contacts", first_name="Ada", company_id=company)
    take_events(writer)
    return Setup(accounts, [company], [contact])


@pytest.mark.parametrize("table", sorted(STOVER_EVENTS))
def test_a_stover_row_of_any_values_is_refused_by_the_write_or_captured_as_postgres_renders_it(
    writer: Conn, reader: Conn, stover_rows: Setup, table: str
) -> None:
    columns = reference_columns(table, stover_rows)
    declared = {name: kind for name, (kind, _) in columns.items()}
    name = sql.Identifier("stover", table)
    expected = STOVER_EVENTS[table]
    # Any column may be left to its default, but for those that have none.
    required = {"name", "network"}
    rows = st.fixed_dictionaries(
        {col: s for col, (_, s) in columns.items() if col in required},
        optional={col: s for col, (_, s) in columns.items() if col not in required},
    )

    @PROPERTY
    @given(session=sessions, first=rows, second=rows)
    def check(session: dict[str, str], first: Row, second: Row) -> None:
        apply_session(writer, session)
        keys: list[int] = []
        inserting = insert_values(name, first, declared)
        error = refusal(
            lambda: keys.extend(writer.execute(inserting, [*first.values()]).fetchone())
        )
        if error is not None:
            assert_write_refused(error, first)
            assert take_events(writer) == []
            return
        old = row_text(reader, name, "id", keys[0])
        assert_captured(take_events(writer), expected(None, old))
        updating = update_values(name, second, declared, "id")
        error = refusal(lambda: writer.execute(updating, [*second.values(), keys[0]]))
        if error is not None:
            assert_write_refused(error, second)
            assert take_events(writer) == []
        else:
            new = row_text(reader, name, "id", keys[0])
            assert_captured(take_events(writer), expected(old, new))
            old = new
        writer.execute(sql.SQL("delete from {} where id = %s").format(name), keys)
        assert_captured(take_events(writer), expected(old, None))

    check()


# ---- an attached table of every column type ----------------------------------------------------

# jsonb holds no \u0000 and no lone surrogate, which a json column holds as text: such a row
# cannot be captured, and its write is refused, saying which.
JSON_LIMITS = {"unsupported Unicode escape sequence", "invalid input syntax for type json"}
EPOCH = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def node() -> Iterator[NodeRoundtrip | None]:
    with node_roundtrip() as roundtrip:
        yield roundtrip


def reject_constant(name: str) -> Any:
    raise AssertionError(f"{name} in captured data")


def assert_portable(event: Captured, node: NodeRoundtrip | None) -> None:
    """Captured data is strict JSON, and its body is what Node's JSON.stringify writes back."""
    json.loads(event.data, parse_constant=reject_constant)
    try:
        body = payload.render_event("evt_x", event.type, EPOCH, event.data, event.previous)
    except RecursionError:  # nested deeper than the renderer goes: a recorded failure, not sent
        return
    fits = numbers_fit_doubles(event.data) and numbers_fit_doubles(event.previous or "{}")
    if node is not None and fits:
        assert node.verdict(body) == "1", body[:300]


@pytest.fixture
def every_type(conn: Conn) -> sql.Identifier:
    for statement in EVERY_TYPE_SETUP:
        conn.execute(statement)
    conn.execute(EVERY_TYPE_DDL)
    conn.execute("select outbox.attach('public.every_type', 'thing', account_column => 'tenant')")
    return sql.Identifier("public", "every_type")


def test_an_attached_row_of_every_column_type_is_captured_the_same_under_any_session(
    writer: Conn, reader: Conn, every_type: sql.Identifier, node: NodeRoundtrip | None
) -> None:
    declared = {"id": "bigint", **{name: kind for name, (kind, _) in EVERY_TYPE.items()}}
    keys = itertools.count(1)

    def expected(old: str | None, new: str | None) -> list[Expected]:
        return attached_events("thing", {"created", "updated", "deleted"}, "tenant", old, new)

    def refused(error: psycopg.Error, values: Row) -> None:
        if raised_in_capture(error) and values.get("js") is not None:
            assert error.diag.message_primary in JSON_LIMITS, error.diag.message_primary
        else:
            assert_write_refused(error, values)
        assert take_events(writer) == []

    def captured(old: str | None, new: str | None) -> None:
        events = take_events(writer)
        assert_captured(events, expected(old, new))
        for event in events:
            assert_portable(event, node)

    @PROPERTY
    @given(session=sessions, first=every_type_rows, second=every_type_rows, data=st.data())
    def check(session: dict[str, str], first: Row, second: Row, data: st.DataObject) -> None:
        apply_session(writer, session)
        key = next(keys)
        values = {"id": str(key), **first}
        inserting = insert_values(every_type, values, declared)
        error = refusal(lambda: writer.execute(inserting, [*values.values()]))
        if error is not None:
            refused(error, values)
            return
        old = row_text(reader, every_type, "id", key)
        captured(None, old)
        change = data.draw(st.sets(st.sampled_from(sorted(first)), max_size=4))
        update = {name: second[name] for name in change}
        updating = update_values(every_type, update, declared, "id")
        error = refusal(lambda: writer.execute(updating, [*update.values(), key]))
        if error is not None:
            refused(error, update)
        else:
            new = row_text(reader, every_type, "id", key)
            captured(old, new)
            old = new
        writer.execute("delete from public.every_type where id = %s", [key])
        captured(old, None)

    check()
