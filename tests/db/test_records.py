"""Events name their record and their place in its history, numbered at fan-out in the order the
record's writes committed; an ordered endpoint gets one due delivery per record at a time, and
ending it (delivered or failed) makes the next one due."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from outbox.db import admin, migrate
from outbox.db.store import Q, Result, _outcomes_json

from .rows import fan_out

Conn = psycopg.Connection[Any]


def scalar(conn: Conn, query: str, params: list[Any] | None = None) -> int:
    row = conn.execute(query, params or []).fetchone()
    assert row is not None
    return int(row[0])


def numbered(conn: Conn) -> list[tuple[str, str, int]]:
    """(event type, record, sequence) of every numbered event, in record then sequence order."""
    rows = conn.execute(
        "select e.type, r.record, r.sequence from outbox.event_records r"
        " join outbox.events e on e.id = r.event_id order by r.record, r.sequence"
    ).fetchall()
    return [(str(t), str(k), int(s)) for t, k, s in rows]


def add_deal(conn: Conn, name: str = "Acme") -> int:
    row = conn.execute(
        "insert into stover.deals (name, amount, currency, stage) values (%s, 100, 'EUR', 'lead')"
        " returning id",
        [name],
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_endpoint(conn: Conn, *, ordered: bool) -> str:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types, ordered)"
        " values ('http://127.0.0.1:9/hook', '{*}', %s) returning id",
        [ordered],
    ).fetchone()
    assert row is not None
    return str(row[0])


def due_by_record(conn: Conn, endpoint: str) -> dict[str, list[tuple[int, bool]]]:
    """Per record, its pending deliveries to `endpoint` as (sequence, due) in sequence order."""
    rows = conn.execute(
        "select record, sequence, next_attempt_at is not null from outbox.deliveries"
        " where endpoint_id = %s and status = 'pending' and record is not null"
        " order by record, sequence",
        [endpoint],
    ).fetchall()
    found: dict[str, list[tuple[int, bool]]] = {}
    for record, sequence, due in rows:
        found.setdefault(str(record), []).append((int(sequence), bool(due)))
    return found


def finish(conn: Conn, delivery_id: int, status: str) -> None:
    """Record an outcome for `delivery_id` as a relay does: claim it under a lease, then run
    deliveries_complete with `status` (pending: retried in a minute)."""
    row = conn.execute(
        "update outbox.deliveries set next_attempt_at = now() + interval '45 seconds'"
        " where id = %s returning next_attempt_at",
        [delivery_id],
    ).fetchone()
    assert row is not None
    now = datetime.now(UTC)
    result = Result(
        delivery_id, row[0], 1, status, 60.0, now, 5.0, 500 if status != "delivered" else 200,
        None, None,
    )  # fmt: skip
    conn.execute(Q["deliveries_complete"], {"outcomes": _outcomes_json([result])})


def delivery_of(conn: Conn, endpoint: str, record: str, sequence: int) -> int:
    row = conn.execute(
        "select id from outbox.deliveries where endpoint_id = %s and record = %s and sequence = %s",
        [endpoint, record, sequence],
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_records_events_are_numbered_from_one_in_the_order_they_happened(conn: Conn) -> None:
    deal = add_deal(conn)
    for stage in ("qualified", "proposal", "closed_won"):
        conn.execute("update stover.deals set stage = %s where id = %s", [stage, deal])
    other = add_deal(conn, "Other")
    fan_out(conn)
    key = f"deals:{deal}"
    assert [(t, s) for t, k, s in numbered(conn) if k == key] == [
        ("deal.created", 1),
        ("deal.updated", 2),
        ("deal.stage_changed", 3),
        ("deal.updated", 4),
        ("deal.stage_changed", 5),
        ("deal.updated", 6),
        ("deal.stage_changed", 7),
        ("deal.closed_won", 8),
    ]
    assert [(t, s) for t, k, s in numbered(conn) if k == f"deals:{other}"] == [("deal.created", 1)]
    # Every delivery carries its event's record and number.
    assert scalar(conn, "select count(*) from outbox.deliveries") == 0  # no endpoint yet
    add_endpoint(conn, ordered=False)
    conn.execute("update stover.deals set stage = 'lead' where id = %s", [deal])
    fan_out(conn)
    rows = conn.execute(
        "select record, sequence from outbox.deliveries order by sequence"
    ).fetchall()
    assert rows == [(key, 9), (key, 10)]


def test_numbers_follow_commit_order_when_the_later_writer_has_the_lower_xid(
    conn: Conn, db_url: str
) -> None:
    deal = add_deal(conn)
    fan_out(conn)
    with (
        psycopg.connect(db_url) as first,  # takes its xid first, writes the deal last
        psycopg.connect(db_url) as second,
    ):
        first.execute("insert into stover.companies (name) values ('Earlier xid')")
        second.execute("update stover.deals set stage = 'qualified' where id = %s", [deal])
        second.commit()
        first.execute("update stover.deals set stage = 'proposal' where id = %s", [deal])
        first.commit()
    # Both transactions in one fan-out step: their xids say first, their commits say second.
    fan_out(conn)
    rows = conn.execute(
        "select e.data ->> 'stage', r.sequence, e.xid::text::bigint from outbox.event_records r"
        " join outbox.events e on e.id = r.event_id"
        " where r.record = %s and e.type = 'deal.stage_changed' order by r.sequence",
        [f"deals:{deal}"],
    ).fetchall()
    assert [(stage, sequence) for stage, sequence, _ in rows] == [("qualified", 3), ("proposal", 5)]
    assert rows[0][2] > rows[1][2]


def test_emit_names_the_record_it_is_given_and_refuses_a_bad_key(conn: Conn) -> None:
    conn.execute("select outbox.emit('invoice.paid', '{\"n\": 1}', key => 'invoices:7')")
    conn.execute("select outbox.emit('invoice.paid', '{\"n\": 2}', null, 'invoices:7')")
    conn.execute("select outbox.emit('invoice.sent', '{\"n\": 3}')")  # no record
    # An application event about a reference record joins that record's numbering.
    deal = add_deal(conn)
    conn.execute("select outbox.emit('deal.noted', jsonb_build_object('id', %s::bigint))", [deal])
    fan_out(conn)
    assert [(t, k, s) for t, k, s in numbered(conn)] == [
        ("deal.created", f"deals:{deal}", 1),
        ("deal.noted", f"deals:{deal}", 2),
        ("invoice.paid", "invoices:7", 1),
        ("invoice.paid", "invoices:7", 2),
    ]
    for bad in ("", "x" * 257, "line\nbreak"):
        with pytest.raises(psycopg.errors.CheckViolation, match="record key"):
            conn.execute("select outbox.emit('invoice.paid', '{}', key => %s)", [bad])


def test_an_attached_tables_events_name_its_rows(conn: Conn) -> None:
    conn.execute("create table public.widgets (sku text primary key, colour text)")
    conn.execute("select outbox.attach('public.widgets', 'widget')")
    conn.execute("insert into public.widgets values ('w-1', 'red')")
    conn.execute("update public.widgets set colour = 'blue' where sku = 'w-1'")
    conn.execute("delete from public.widgets where sku = 'w-1'")
    fan_out(conn)
    assert numbered(conn) == [
        ("widget.created", "widgets:w-1", 1),
        ("widget.updated", "widgets:w-1", 2),
        ("widget.deleted", "widgets:w-1", 3),
    ]


def test_one_step_numbers_records_it_knows_and_new_ones_alike(conn: Conn) -> None:
    """A step bumps the records it has numbered before and inserts the others, in one statement:
    both kinds in one transaction, each counted on."""
    known = add_deal(conn)
    fan_out(conn)
    with conn.transaction():
        conn.execute("update stover.deals set stage = 'qualified' where id = %s", [known])
        new = add_deal(conn, "New")
        conn.execute("update stover.deals set stage = 'proposal' where id = %s", [new])
    fan_out(conn)
    by_key: dict[str, list[int]] = {}
    for _, key, sequence in numbered(conn):
        by_key.setdefault(key, []).append(sequence)
    assert by_key[f"deals:{known}"] == [1, 2, 3]
    assert by_key[f"deals:{new}"] == [1, 2, 3]
    counters = dict(conn.execute("select key, sequence from outbox.records").fetchall())
    assert counters == {f"deals:{known}": 3, f"deals:{new}": 3}


def test_numbers_keep_counting_after_a_records_events_are_pruned(conn: Conn) -> None:
    deal = add_deal(conn)
    fan_out(conn)
    conn.execute("delete from outbox.events")
    assert numbered(conn) == []
    conn.execute("update stover.deals set stage = 'qualified' where id = %s", [deal])
    fan_out(conn)
    assert [s for _, _, s in numbered(conn)] == [2, 3]


def test_an_ordered_endpoint_gets_one_due_delivery_per_record_at_a_time(conn: Conn) -> None:
    ordered, unordered = add_endpoint(conn, ordered=True), add_endpoint(conn, ordered=False)
    deals = [add_deal(conn, f"Deal {n}") for n in range(3)]
    fan_out(conn)
    for stage in ("qualified", "proposal"):
        for deal in deals:
            conn.execute("update stover.deals set stage = %s where id = %s", [stage, deal])
    fan_out(conn)
    # deal.created was due alone; each update's two events wait behind it, in order.
    expected = [(1, True), (2, False), (3, False), (4, False), (5, False)]
    assert due_by_record(conn, ordered) == {f"deals:{d}": expected for d in deals}
    assert all(due for rows in due_by_record(conn, unordered).values() for _, due in rows)
    # A delivery written while an earlier one of its record is pending waits too.
    conn.execute("update stover.deals set stage = 'lead' where id = %s", [deals[0]])
    fan_out(conn)
    assert due_by_record(conn, ordered)[f"deals:{deals[0]}"][-1] == (7, False)
    # Other events (no record) to the ordered endpoint are due at once.
    conn.execute("select outbox.emit('app.ping', '{}')")
    fan_out(conn)
    assert (
        scalar(
            conn,
            "select count(*) from outbox.deliveries where endpoint_id = %s and record is null"
            " and next_attempt_at is not null",
            [ordered],
        )
        == 1
    )


def test_ending_an_ordered_delivery_makes_the_next_of_its_record_due(conn: Conn) -> None:
    endpoint = add_endpoint(conn, ordered=True)
    deal, other = add_deal(conn), add_deal(conn, "Other")
    conn.execute("update stover.deals set stage = 'qualified' where id = %s", [deal])
    fan_out(conn)
    key = f"deals:{deal}"
    assert due_by_record(conn, endpoint)[key] == [(1, True), (2, False), (3, False)]
    # A retry to come holds the record back.
    finish(conn, delivery_of(conn, endpoint, key, 1), "pending")
    assert due_by_record(conn, endpoint)[key] == [(1, True), (2, False), (3, False)]
    # Failed for good: the next one goes.
    finish(conn, delivery_of(conn, endpoint, key, 1), "failed")
    assert due_by_record(conn, endpoint)[key] == [(2, True), (3, False)]
    finish(conn, delivery_of(conn, endpoint, key, 2), "delivered")
    assert due_by_record(conn, endpoint)[key] == [(3, True)]
    finish(conn, delivery_of(conn, endpoint, key, 3), "delivered")
    assert key not in due_by_record(conn, endpoint)
    # The other record was never held.
    assert due_by_record(conn, endpoint)[f"deals:{other}"] == [(1, True)]
    # Once a record has nothing pending, its next delivery is due at once.
    conn.execute("update stover.deals set stage = 'proposal' where id = %s", [deal])
    fan_out(conn)
    assert due_by_record(conn, endpoint)[key] == [(4, True), (5, False)]


def test_a_redelivered_or_replayed_delivery_takes_its_turn_on_an_ordered_endpoint(
    conn: Conn,
) -> None:
    endpoint = add_endpoint(conn, ordered=True)
    deal = add_deal(conn)
    conn.execute("update stover.deals set stage = 'qualified' where id = %s", [deal])
    fan_out(conn)
    key = f"deals:{deal}"
    first = delivery_of(conn, endpoint, key, 1)
    finish(conn, first, "delivered")
    assert due_by_record(conn, endpoint)[key] == [(2, True), (3, False)]
    # Sent again while #2 is under way: it waits, and goes before #3.
    admin.redeliver(conn, [first])
    assert due_by_record(conn, endpoint)[key] == [(1, False), (2, True), (3, False)]
    finish(conn, delivery_of(conn, endpoint, key, 2), "delivered")
    assert due_by_record(conn, endpoint)[key] == [(1, True), (3, False)]
    # A replay to an endpoint that missed the events: numbered as fan-out numbered them, one due.
    late = add_endpoint(conn, ordered=True)
    conn.execute(
        "update outbox.endpoints set created_at = now() - interval '1 day' where id = %s", [late]
    )
    done = admin.replay(conn, endpoint_id=late, since=datetime(2000, 1, 1, tzinfo=UTC))
    assert done is not None
    assert done.created == 3
    assert due_by_record(conn, late)[key] == [(1, True), (2, False), (3, False)]


def test_a_second_table_of_the_same_name_keys_its_records_with_its_schema(conn: Conn) -> None:
    conn.execute("create table public.deals (id int primary key, name text)")
    conn.execute("select outbox.attach('public.deals', 'sale')")
    conn.execute("insert into public.deals values (1, 'one')")
    conn.execute("insert into stover.deals (name) values ('Acme') returning id")
    fan_out(conn)
    keys = {(t, k) for t, k, _ in numbered(conn)}
    stover_id = scalar(conn, "select max(id) from stover.deals")
    assert keys == {("sale.created", "public.deals:1"), ("deal.created", f"deals:{stover_id}")}


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def rows_handled(node: dict[str, Any]) -> int:
    """The rows a plan node produced and threw away over all its loops (EXPLAIN gives both as a
    mean per loop)."""
    per_loop = (
        node.get("Actual Rows", 0)
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Join Filter", 0)
    )
    return int(per_loop * node.get("Actual Loops", 0))


def most_rows_handled(conn: Conn, statement: str) -> int:
    """Run `statement` and return the most rows any node of its plans (nested ones too) handled,
    read from the executed plans through auto_explain, so a check on it does not depend on the
    machine's speed. Skips the test on a server without the module."""
    try:
        conn.execute("load 'auto_explain'")
    except psycopg.errors.UndefinedFile:
        pytest.skip("this server has no auto_explain module")
    plans: list[dict[str, Any]] = []

    def keep_plan(notice: psycopg.errors.Diagnostic) -> None:
        text = notice.message_primary or ""
        if "plan:" in text:
            plans.append(json.loads(text.split("plan:", 1)[1]))

    conn.add_notice_handler(keep_plan)
    for name, value in [
        ("log_min_duration", "0"),
        ("log_nested_statements", "on"),
        ("log_analyze", "on"),
        ("log_format", "json"),
        ("log_level", "notice"),
    ]:
        conn.execute(f"set auto_explain.{name} = {value}")
    conn.execute("set client_min_messages = notice")
    conn.execute(statement)
    conn.execute("reset auto_explain.log_min_duration")
    conn.remove_notice_handler(keep_plan)
    assert plans, "auto_explain logged no plan"
    return max(rows_handled(node) for p in plans for node in plan_nodes(p["Plan"]))


DEAL_UPDATES = (
    "insert into outbox.events (type, data)"
    " select 'deal.updated', jsonb_build_object('id', g) from generate_series(1, %s) g"
)
UPDATES = (
    "insert into outbox.events (type, data, record)"
    " select 'contact.updated', '{}', 'contacts:' || g from generate_series(1, %s) g"
)


def test_a_step_of_known_records_handles_each_record_a_bounded_number_of_times(conn: Conn) -> None:
    """Numbering looks each record up by its key, never against the step's other records: every
    node of the step's plans handles a number of rows in proportion to the step's events."""
    records = 400
    add_endpoint(conn, ordered=False)
    conn.execute(UPDATES, [records])
    fan_out(conn)  # the records are known from here on
    conn.execute(UPDATES, [records])
    assert most_rows_handled(conn, "select outbox.fan_out(10000)") <= 4 * records
    assert [s for _, key, s in numbered(conn) if key == "contacts:1"] == [1, 2]


def test_an_ordered_step_looks_up_each_records_pending_deliveries_alone(
    empty_db_url: str,
) -> None:
    """Holding a record's delivery behind an earlier pending one looks that record up, never the
    ordered endpoint's whole backlog: on a database just migrated, with no statistics yet, every
    node of the step's plans handles rows in proportion to the step's events, however many are
    pending."""
    migrate.migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        check_ordered_step(conn, records=1000)


def check_ordered_step(conn: Conn, *, records: int) -> None:
    """A backlog on an ordered endpoint, then one step of an update to each of its records."""
    endpoint = add_endpoint(conn, ordered=True)
    for _ in range(2):  # a backlog: each record's first delivery due, the others held
        conn.execute(DEAL_UPDATES, [records])
        conn.execute("select outbox.fan_out(100000)")
    conn.execute(DEAL_UPDATES, [records])
    assert most_rows_handled(conn, "select outbox.fan_out(10000)") <= 4 * records
    due = due_by_record(conn, endpoint)
    assert len(due) == records
    assert all(turns == [(1, True), (2, False), (3, False)] for turns in due.values())
