"""Every committed event gets one pending delivery per enabled endpoint it matches, written by
fan-out after commit; outbox.emit() records application events and outbox.attach() captures any
table."""

from __future__ import annotations

import random
import string
from typing import Any

import psycopg
import pytest

from .rows import EVENT_ID, changed, count, drain, fan_out, insert, table_row, types

Conn = psycopg.Connection[Any]

SUBSCRIPTIONS = {
    "all": ["*"],
    "deals": ["deal.*"],
    "new_contacts": ["contact.created"],
    "contacts_and_companies": ["contact.created", "company.*"],
}


def create_endpoint(conn: Conn, event_types: list[str], *, enabled: bool = True) -> str:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types, enabled) values (%s, %s, %s) returning id",
        ["http://127.0.0.1:9/hook", event_types, enabled],
    ).fetchone()
    assert row is not None
    endpoint_id: str = row[0]
    return endpoint_id


def deliveries(conn: Conn) -> dict[str, set[str]]:
    """Endpoint ids with a delivery, by event type, once what has committed is fanned out; fails
    on a second delivery of one event to one endpoint."""
    fan_out(conn)
    rows = conn.execute(
        "select e.type, d.endpoint_id, count(*) from outbox.deliveries d"
        " join outbox.events e on e.id = d.event_id group by e.id, e.type, d.endpoint_id"
    ).fetchall()
    assert all(n == 1 for _, _, n in rows), rows
    found: dict[str, set[str]] = {}
    for type_, endpoint_id, _ in rows:
        found.setdefault(type_, set()).add(endpoint_id)
    return found


@pytest.fixture
def endpoints(conn: Conn) -> dict[str, str]:
    """The four subscriptions above, plus a disabled `*`: endpoint ids by name."""
    made = {name: create_endpoint(conn, patterns) for name, patterns in SUBSCRIPTIONS.items()}
    made["disabled"] = create_endpoint(conn, ["*"], enabled=False)
    return made


def test_each_event_gets_one_pending_delivery_per_matching_enabled_endpoint(
    conn: Conn, endpoints: dict[str, str]
) -> None:
    with conn.transaction():
        company = insert(conn, "stover.companies", name="Acme")
        contact = insert(conn, "stover.contacts", first_name="Ada", company_id=company)
        deal = insert(conn, "stover.deals", name="Deal", contact_id=contact)
    with conn.transaction():
        conn.execute("update stover.contacts set email = 'a@acme.test' where id = %s", [contact])
        conn.execute("update stover.deals set stage = 'closed_won' where id = %s", [deal])
        conn.execute("insert into stover.posts (network, status) values ('x', 'published')")

    want = {
        "company.created": {"all", "contacts_and_companies"},
        "contact.created": {"all", "new_contacts", "contacts_and_companies"},
        "deal.created": {"all", "deals"},
        "contact.updated": {"all"},
        "deal.updated": {"all", "deals"},
        "deal.stage_changed": {"all", "deals"},
        "deal.closed_won": {"all", "deals"},
        "post.published": {"all"},
    }
    assert deliveries(conn) == {
        type_: {endpoints[name] for name in names} for type_, names in want.items()
    }
    assert count(conn, "outbox.deliveries") == sum(len(names) for names in want.values())
    row = conn.execute(
        "select count(*) filter (where status <> 'pending' or attempts <> 0"
        " or next_attempt_at is null or next_attempt_at > now()"
        " or last_attempt_at is not null or delivered_at is not null),"
        " count(*) filter (where endpoint_id = %s)"
        " from outbox.deliveries",
        [endpoints["disabled"]],
    ).fetchone()
    assert row == (0, 0)


def test_capture_writes_the_event_alone_and_fan_out_its_deliveries_after_commit(
    conn: Conn, reader: Conn, endpoints: dict[str, str]
) -> None:
    with conn.transaction():
        insert(conn, "stover.contacts", first_name="Ada")
        assert (count(conn, "outbox.events"), count(conn, "outbox.deliveries")) == (1, 0)
        # Uncommitted: another session's fan-out step finds nothing to do.
        assert fan_out(reader) == (0, 0)
    assert count(reader, "outbox.deliveries") == 0
    assert fan_out(reader) == (1, 3)
    assert fan_out(reader) == (0, 0)

    with conn.transaction():
        insert(conn, "stover.deals", name="Never")
        raise psycopg.Rollback
    assert fan_out(reader) == (0, 0)
    assert count(conn, "outbox.deliveries") == 3
    assert types(drain(conn)) == ["contact.created"]


def test_emit_records_registers_and_fans_out_an_application_event(conn: Conn) -> None:
    everything = create_endpoint(conn, ["*"])
    with pytest.raises(psycopg.errors.CheckViolation, match="not known"):
        create_endpoint(conn, ["billing.*"])

    row = conn.execute("""select outbox.emit('billing.invoice_paid', '{"n":1}')""").fetchone()
    assert row is not None
    event_id = row[0]
    assert EVENT_ID.match(event_id)
    registered = conn.execute(
        "select count(*) from outbox.event_types where name = 'billing.invoice_paid'"
    ).fetchone()
    assert registered == (1,)
    assert deliveries(conn) == {"billing.invoice_paid": {everything}}

    billing = create_endpoint(conn, ["billing.*"])
    with conn.transaction():
        second = conn.execute("""select outbox.emit('billing.invoice_paid', '{"n":2}')""")
        second_id = second.fetchone()
    assert second_id is not None
    fan_out(conn)
    rows = conn.execute(
        "select endpoint_id from outbox.deliveries where event_id = %s", [second_id[0]]
    ).fetchall()
    assert {endpoint_id for (endpoint_id,) in rows} == {everything, billing}
    events = drain(conn)
    assert [(e["id"], e["type"], e["data"], e["previous_attributes"]) for e in events] == [
        (event_id, "billing.invoice_paid", {"n": 1}, None),
        (second_id[0], "billing.invoice_paid", {"n": 2}, None),
    ]


BAD_EMITS = [
    ("billing", "{}", "entity.action"),
    ("Billing.Paid", "{}", "entity.action"),
    ("billing.", "{}", "entity.action"),
    ("billing.invoice paid", "{}", "entity.action"),
    ("billing.paid", "[1]", "JSON object"),
    ("billing.paid", '"paid"', "JSON object"),
    ("billing.paid", "null", "JSON object"),
    ("billing.paid", None, "JSON object"),
]


def test_emit_refuses_a_bad_type_or_non_object_data(conn: Conn) -> None:
    create_endpoint(conn, ["*"])
    for event_type, data, message in BAD_EMITS:
        with pytest.raises(psycopg.errors.CheckViolation, match=message):
            conn.execute("select outbox.emit(%s, %s::jsonb)", [event_type, data])
    assert count(conn, "outbox.events") == 0
    assert count(conn, "outbox.deliveries") == 0
    known = conn.execute("select count(*) from outbox.event_types where name like 'billing%'")
    assert known.fetchone() == (0,)


def test_an_event_type_is_at_most_256_characters_and_a_longer_one_is_refused_in_words(
    conn: Conn,
) -> None:
    # Random letters, which the index cannot compress: 3,000 of them were once refused by
    # event_types' primary key ("index row size ... exceeds btree version 4 maximum 2704").
    letters = "".join(random.Random(7).choices(string.ascii_lowercase, k=3000))
    conn.execute("select outbox.emit(%s, '{}')", [letters[:254] + ".x"])
    with pytest.raises(psycopg.errors.CheckViolation, match="at most 256 characters") as refused:
        conn.execute("select outbox.emit(%s, '{}')", [letters + ".x"])
    assert len(refused.value.diag.message_primary or "") < 300  # quotes 140 characters at most
    conn.execute("create table public.notes (id int primary key)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 248"):
        conn.execute("select outbox.attach('public.notes', %s)", [letters[:249]])
    conn.execute("select outbox.attach('public.notes', %s)", [letters[:248]])
    assert count(conn, "outbox.events") == 1


# ---- attach / detach ---------------------------------------------------------------------------


@pytest.fixture
def widgets(conn: Conn) -> str:
    conn.execute(
        "create table public.widgets ("
        " id bigint generated always as identity primary key,"
        " name text not null, size integer, made_at timestamptz not null default now())"
    )
    return "public.widgets"


def write_widgets(conn: Conn) -> None:
    """Insert, update, update to the same value, then delete one widget, each committed."""
    with conn.transaction():
        widget = insert(conn, "public.widgets", name="sprocket", size=3)
    with conn.transaction():
        conn.execute("update public.widgets set size = 4 where id = %s", [widget])
    with conn.transaction():
        conn.execute("update public.widgets set size = size where id = %s", [widget])
    with conn.transaction():
        conn.execute("delete from public.widgets where id = %s", [widget])


def test_attach_captures_a_user_table_like_the_stover_tables(
    writer: Conn, reader: Conn, widgets: str
) -> None:
    conn = writer
    conn.execute("select outbox.attach(%s, 'widget')", [widgets])
    subscriber = create_endpoint(conn, ["widget.*"])

    with conn.transaction():
        widget = insert(conn, widgets, name="sprocket", size=3)
    created = table_row(reader, widgets, widget)
    with conn.transaction():
        conn.execute("update public.widgets set size = 4, name = name where id = %s", [widget])
    updated = table_row(reader, widgets, widget)
    with conn.transaction():
        conn.execute("update public.widgets set size = size where id = %s", [widget])
    with conn.transaction():
        conn.execute("delete from public.widgets where id = %s", [widget])

    assert deliveries(conn) == {
        type_: {subscriber} for type_ in ("widget.created", "widget.updated", "widget.deleted")
    }
    events = drain(conn)
    assert [(e["type"], e["data"], e["previous_attributes"]) for e in events] == [
        ("widget.created", created, None),
        ("widget.updated", updated, changed(created, updated)),
        ("widget.deleted", updated, None),
    ]
    assert changed(created, updated) == {"size": 3}
    assert all(EVENT_ID.match(e["id"]) for e in events)
    registered = conn.execute(
        "select array_agg(name order by name) from outbox.event_types where name like 'widget.%'"
    ).fetchone()
    assert registered == (["widget.created", "widget.deleted", "widget.updated"],)


def test_attach_twice_still_emits_one_event_per_write(conn: Conn, widgets: str) -> None:
    conn.execute("select outbox.attach(%s, 'widget')", [widgets])
    conn.execute("select outbox.attach(%s, 'widget')", [widgets])
    # A caller whose search_path does not hold the table's schema attaches the same table.
    with conn.transaction():
        conn.execute("set local search_path to outbox")
        conn.execute("select outbox.attach('public.widgets', 'widget')")
    write_widgets(conn)
    assert types(drain(conn)) == ["widget.created", "widget.updated", "widget.deleted"]


def test_detach_stops_capture_and_keeps_the_event_types(conn: Conn, widgets: str) -> None:
    conn.execute("select outbox.attach(%s, 'widget')", [widgets])
    conn.execute("select outbox.detach(%s)", [widgets])
    write_widgets(conn)
    assert drain(conn) == []
    kept = conn.execute("select count(*) from outbox.event_types where name like 'widget.%'")
    assert kept.fetchone() == (3,)


def test_attach_needs_a_single_column_primary_key_to_capture_updates(conn: Conn) -> None:
    conn.execute("create table public.pairs (a integer, b integer, primary key (a, b))")
    conn.execute("create table public.lines (a integer, b integer)")
    for table in ("public.pairs", "public.lines"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="single-column primary key"):
            conn.execute("select outbox.attach(%s, 'pair')", [table])
        known = conn.execute("select count(*) from outbox.event_types where name like 'pair.%'")
        assert known.fetchone() == (0,)
    # Without updates there is nothing to pair, so any table will do.
    conn.execute("select outbox.attach('public.pairs', 'pair', array['created', 'deleted'])")
    with conn.transaction():
        conn.execute("insert into public.pairs values (1, 2)")
        conn.execute("update public.pairs set b = 3")
        conn.execute("delete from public.pairs")
    events = drain(conn)
    assert [(e["type"], e["data"]) for e in events] == [
        ("pair.created", {"a": 1, "b": 2}),
        ("pair.deleted", {"a": 1, "b": 3}),
    ]


def test_attach_captures_the_whole_row_of_a_table_with_a_column_named_like_the_row(
    conn: Conn,
) -> None:
    conn.execute("create table public.colors (id int primary key, r int, g int, b int)")
    conn.execute("select outbox.attach('public.colors', 'color')")
    conn.execute("insert into public.colors values (1, null, 128, 255)")
    conn.execute("update public.colors set r = 7 where id = 1")
    conn.execute("delete from public.colors")
    events = drain(conn)
    assert [(e["type"], e["data"], e["previous_attributes"]) for e in events] == [
        ("color.created", {"id": 1, "r": None, "g": 128, "b": 255}, None),
        ("color.updated", {"id": 1, "r": 7, "g": 128, "b": 255}, {"r": None}),
        ("color.deleted", {"id": 1, "r": 7, "g": 128, "b": 255}, None),
    ]


def test_attach_captures_every_action_of_a_table_with_a_long_name(conn: Conn) -> None:
    table = "public." + "subscription_billing_history_entry_" * 2  # 70 bytes, cut to 63
    conn.execute(f"create table {table} (id int primary key, note text)")
    conn.execute("select outbox.attach(%s, 'entry')", [table])
    conn.execute("select outbox.attach(%s, 'entry')", [table])  # replaces, does not add
    conn.execute(f"insert into {table} values (1, 'a')")
    conn.execute(f"update {table} set note = 'b'")
    conn.execute(f"delete from {table}")
    assert types(drain(conn)) == ["entry.created", "entry.updated", "entry.deleted"]
    conn.execute("select outbox.detach(%s)", [table])
    conn.execute(f"insert into {table} values (2, 'c')")
    assert drain(conn) == []


def test_attach_takes_a_table_in_a_schema_whose_name_starts_like_the_outbox(conn: Conn) -> None:
    conn.execute("create schema outbox_archive")
    conn.execute("create table outbox_archive.invoices (id int primary key, total int)")
    conn.execute("select outbox.attach('outbox_archive.invoices', 'invoice')")
    conn.execute("insert into outbox_archive.invoices values (1, 10)")
    assert types(drain(conn)) == ["invoice.created"]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="outbox's own tables"):
        conn.execute("select outbox.attach('outbox.events', 'event')")
