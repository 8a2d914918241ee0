"""Accounts: an event carries its row's account, and fan-out sends it to that account's endpoints
alone (plus the operator's all_accounts feed); rows without an account behave as before."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from .rows import fan_out, insert

Conn = psycopg.Connection[Any]


def account(conn: Conn, name: str) -> int:
    return insert(conn, "stover.accounts", name=name)


def endpoint(
    conn: Conn, account_id: str | None, *, all_accounts: bool = False, types: str = "*"
) -> str:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types, account_id, all_accounts)"
        " values ('http://127.0.0.1:9/hook', %s, %s, %s) returning id",
        [[types], account_id, all_accounts],
    ).fetchone()
    assert row is not None
    return str(row[0])


def received(conn: Conn) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """By endpoint: (event type, event account, delivery account) of each delivery it got, once
    everything committed is fanned out."""
    fan_out(conn)
    rows = conn.execute(
        "select d.endpoint_id, e.type, e.account_id, d.account_id from outbox.deliveries d"
        " join outbox.events e on e.id = d.event_id order by d.event_id"
    ).fetchall()
    found: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for endpoint_id, type_, event_account, delivery_account in rows:
        found.setdefault(endpoint_id, []).append((type_, event_account, delivery_account))
    return found


def test_an_event_reaches_its_own_accounts_endpoints_and_the_all_accounts_feed(
    conn: Conn,
) -> None:
    a, b = account(conn, "A"), account(conn, "B")
    ep_a, ep_b = endpoint(conn, str(a)), endpoint(conn, str(b))
    ep_none, ep_all = endpoint(conn, None), endpoint(conn, None, all_accounts=True)
    insert(conn, "stover.contacts", first_name="Ada", account_id=a)
    insert(conn, "stover.companies", name="Bee", account_id=b)
    insert(conn, "stover.contacts", first_name="Solo")
    conn.execute("select outbox.emit('invoice.paid', '{}', account => %s)", [str(b)])
    got = received(conn)
    assert got[ep_a] == [("contact.created", str(a), str(a))]
    assert got[ep_b] == [
        ("company.created", str(b), str(b)),
        ("invoice.paid", str(b), str(b)),
    ]
    assert got[ep_none] == [("contact.created", None, None)]
    assert sorted(t for t, _, _ in got[ep_all]) == [
        "company.created",
        "contact.created",
        "contact.created",
        "invoice.paid",
    ]


def test_every_reference_table_carries_the_account(conn: Conn) -> None:
    a = account(conn, "A")
    ep = endpoint(conn, str(a))
    company = insert(conn, "stover.companies", name="Acme", account_id=a)
    contact = insert(conn, "stover.contacts", first_name="Ada", account_id=a)
    deal = insert(conn, "stover.deals", name="D", contact_id=contact, account_id=a)
    insert(conn, "stover.posts", network="x", status="scheduled", account_id=a)
    insert(conn, "stover.attribution_events", contact_id=contact, source="ad", account_id=a)
    conn.execute("update stover.companies set domain = 'acme.test' where id = %s", [company])
    conn.execute("update stover.deals set stage = 'closed_won' where id = %s", [deal])
    conn.execute("update stover.posts set status = 'published'")
    conn.execute("delete from stover.contacts where id = %s", [contact])
    got = received(conn)
    assert {t for t, _, _ in got[ep]} == {
        "company.created",
        "contact.created",
        "deal.created",
        "post.scheduled",
        "attribution.tracked",
        "company.updated",
        "deal.updated",
        "deal.stage_changed",
        "deal.closed_won",
        "post.published",
        "contact.deleted",
        # deleting the contact set the deal's contact_id to NULL
    }
    assert all(e == str(a) for _, e, _ in got[ep])
    # Nothing without an account was written.
    assert conn.execute(
        "select count(*) from outbox.events where account_id is null"
    ).fetchone() == (0,)


def test_a_row_moved_to_another_account_is_deleted_from_one_and_created_in_the_other(
    conn: Conn,
) -> None:
    a, b = account(conn, "A"), account(conn, "B")
    ep_a, ep_b = endpoint(conn, str(a)), endpoint(conn, str(b))
    contact = insert(conn, "stover.contacts", first_name="Ada", email="ada@a.test", account_id=a)
    fan_out(conn)
    conn.execute("delete from outbox.deliveries")
    conn.execute(
        "update stover.contacts set account_id = %s, email = 'ada@b.test' where id = %s",
        [b, contact],
    )
    rows = conn.execute(
        "select type, account_id, data ->> 'email', previous_attributes from outbox.events"
        " where type <> 'contact.created' or account_id = %s order by id",
        [str(b)],
    ).fetchall()
    assert rows == [
        ("contact.deleted", str(a), "ada@a.test", None),
        ("contact.created", str(b), "ada@b.test", None),
    ]
    got = received(conn)
    assert [t for t, _, _ in got[ep_a]] == ["contact.deleted"]
    assert [t for t, _, _ in got[ep_b]] == ["contact.created"]


def test_a_deal_moved_between_accounts_raises_no_stage_events(conn: Conn) -> None:
    a, b = account(conn, "A"), account(conn, "B")
    deal = insert(conn, "stover.deals", name="D", account_id=a)
    conn.execute("delete from outbox.events")
    conn.execute(
        "update stover.deals set account_id = %s, stage = 'closed_won' where id = %s", [b, deal]
    )
    rows = conn.execute("select type, account_id from outbox.events order by id").fetchall()
    assert rows == [("deal.deleted", str(a)), ("deal.created", str(b))]


def test_an_update_within_one_account_is_the_update_it_always_was(conn: Conn) -> None:
    a = account(conn, "A")
    contact = insert(conn, "stover.contacts", first_name="Ada", account_id=a)
    conn.execute("delete from outbox.events")
    conn.execute("update stover.contacts set first_name = 'Adah' where id = %s", [contact])
    rows = conn.execute(
        "select type, account_id, previous_attributes ->> 'first_name' from outbox.events"
    ).fetchall()
    assert rows == [("contact.updated", str(a), "Ada")]


def test_attach_takes_an_account_column_of_any_type(conn: Conn) -> None:
    conn.execute(
        "create table public.tickets (id bigint generated always as identity primary key,"
        " tenant uuid, subject text)"
    )
    conn.execute("select outbox.attach('public.tickets', 'ticket', account_column => 'tenant')")
    tenant = "6f1c1c3e-1111-4a4a-9b9b-000000000001"
    ep = endpoint(conn, tenant)
    conn.execute("insert into public.tickets (tenant, subject) values (%s, 'hi')", [tenant])
    conn.execute("insert into public.tickets (tenant, subject) values (null, 'no one')")
    got = received(conn)
    assert got[ep] == [("ticket.created", tenant, tenant)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "select outbox.attach('stover.contacts', 'contact', account_column => 'tenant')",
            "no column tenant",
        ),
        ("select outbox.attach('outbox.endpoints', 'endpoint')", "cannot be attached"),
        ("select outbox.emit('a.b', '{}', account => '')", "must be 1 to 128"),
        ("select outbox.emit('a.b', '{}', account => repeat('x', 129))", "must be 1 to 128"),
        ("select outbox.emit('a.b', '{}', account => 'a b')", "must be 1 to 128"),
    ],
)
def test_bad_accounts_and_attachments_are_refused(conn: Conn, call: str, message: str) -> None:
    with pytest.raises(psycopg.Error, match=message):
        conn.execute(call)
    assert conn.execute("select count(*) from outbox.events").fetchone() == (0,)


@pytest.mark.parametrize(
    ("account_id", "all_accounts"),
    [("", False), ("x" * 129, False), ("has space", False), ("42", True)],
)
def test_an_endpoint_with_a_bad_account_is_refused(
    conn: Conn, account_id: str, all_accounts: bool
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        endpoint(conn, account_id, all_accounts=all_accounts)


def test_fan_out_to_ten_thousand_endpoints_reads_only_the_events_accounts(conn: Conn) -> None:
    # 10,000 endpoints across 5,000 accounts: the join is by account, never every endpoint for
    # every event (the plan is the proof; its speed is `outbox bench accounts`).
    conn.execute(
        "insert into outbox.endpoints (url, event_types, account_id)"
        " select 'http://127.0.0.1:9/hook', '{*}', (g % 5000)::text"
        " from generate_series(1, 10000) g"
    )
    conn.execute("analyze outbox.endpoints")
    for n in range(50):
        conn.execute("select outbox.emit('app.thing', '{}', account => %s)", [str(n)])
    events, written = fan_out(conn)
    assert (events, written) == (50, 100)
    wrong = conn.execute(
        "select count(*) from outbox.deliveries d join outbox.endpoints ep"
        " on ep.id = d.endpoint_id join outbox.events e on e.id = d.event_id"
        " where ep.account_id is distinct from e.account_id"
        "    or d.account_id is distinct from ep.account_id"
    ).fetchone()
    assert wrong == (0,)
