"""Row changes on the Stover tables become outbox events in the writer's transaction, one per row
of the contract's event table, carrying the row as it is and the old values of what changed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import pytest

from .rows import EVENT_ID, changed, count, drain, fan_out, insert, table_row, types

Conn = psycopg.Connection[Any]


def assert_event(
    event: dict[str, Any],
    type_: str,
    data: dict[str, Any],
    previous: dict[str, Any] | None = None,
) -> None:
    assert event["type"] == type_
    assert EVENT_ID.match(event["id"]), event["id"]
    assert event["data"] == data
    assert event["previous_attributes"] == previous


def write(writer: Conn, statement: str, params: list[Any] | None = None) -> None:
    """Run one statement in its own committed transaction."""
    with writer.transaction():
        writer.execute(statement, params)


@pytest.fixture
def company(writer: Conn) -> int:
    with writer.transaction():
        company_id = insert(writer, "stover.companies", name="Acme", domain="acme.test")
    drain(writer)
    return company_id


@pytest.fixture
def contact(writer: Conn, company: int) -> int:
    with writer.transaction():
        contact_id = insert(
            writer,
            "stover.contacts",
            first_name="Ada",
            last_name="Lovelace",
            email="ada@acme.test",
            phone="+1 555 0100",
            company_id=company,
            custom_fields=psycopg.types.json.Jsonb({"tier": "gold", "score": 7}),
        )
    drain(writer)
    return contact_id


@pytest.fixture
def deal(writer: Conn, company: int, contact: int) -> int:
    with writer.transaction():
        deal_id = insert(
            writer,
            "stover.deals",
            name="Big one",
            amount="1000.50",
            company_id=company,
            contact_id=contact,
        )
    drain(writer)
    return deal_id


# ---- contacts ----------------------------------------------------------------------------------


def test_contact_insert_emits_contact_created_with_the_row(
    writer: Conn, reader: Conn, company: int
) -> None:
    with writer.transaction():
        contact_id = insert(
            writer,
            "stover.contacts",
            first_name="Ada",
            email="ada@acme.test",
            company_id=company,
            custom_fields=psycopg.types.json.Jsonb({"tier": "gold"}),
        )
    (event,) = drain(writer)
    assert_event(event, "contact.created", table_row(reader, "stover.contacts", contact_id))


def test_contact_update_emits_contact_updated_with_old_values_of_changed_columns(
    writer: Conn, reader: Conn, contact: int
) -> None:
    before = table_row(reader, "stover.contacts", contact)
    write(
        writer,
        "update stover.contacts set email = 'ada@new.test', phone = null where id = %s",
        [contact],
    )
    after = table_row(reader, "stover.contacts", contact)
    (event,) = drain(writer)
    previous = changed(before, after)
    assert set(previous) == {"email", "phone", "updated_at"}
    assert previous["email"] == "ada@acme.test"
    assert datetime.fromisoformat(after["updated_at"]) > datetime.fromisoformat(
        before["updated_at"]
    )
    assert_event(event, "contact.updated", after, previous)


def test_contact_delete_emits_contact_deleted_with_the_old_row(
    writer: Conn, reader: Conn, contact: int
) -> None:
    before = table_row(reader, "stover.contacts", contact)
    write(writer, "delete from stover.contacts where id = %s", [contact])
    (event,) = drain(writer)
    assert_event(event, "contact.deleted", before)


# ---- companies ---------------------------------------------------------------------------------


def test_company_insert_emits_company_created(writer: Conn, reader: Conn) -> None:
    with writer.transaction():
        company_id = insert(writer, "stover.companies", name="Initech", domain=None)
    (event,) = drain(writer)
    assert_event(event, "company.created", table_row(reader, "stover.companies", company_id))


def test_company_update_emits_company_updated(writer: Conn, reader: Conn, company: int) -> None:
    before = table_row(reader, "stover.companies", company)
    write(writer, "update stover.companies set name = 'Acme Corp' where id = %s", [company])
    after = table_row(reader, "stover.companies", company)
    (event,) = drain(writer)
    assert_event(
        event, "company.updated", after, {"name": "Acme", "updated_at": before["updated_at"]}
    )


def test_company_delete_emits_contact_updated_for_its_contacts(
    writer: Conn, reader: Conn, company: int, contact: int
) -> None:
    with writer.transaction():
        other = insert(writer, "stover.contacts", first_name="Bob", company_id=None)
        second = insert(writer, "stover.contacts", first_name="Cy", company_id=company)
    drain(writer)
    before = {cid: table_row(reader, "stover.contacts", cid) for cid in (contact, second)}

    write(writer, "delete from stover.companies where id = %s", [company])

    events = drain(writer)
    assert types(events) == ["contact.updated", "contact.updated"]
    by_contact = {event["data"]["id"]: event for event in events}
    assert set(by_contact) == {contact, second}
    assert other not in by_contact
    for cid, event in by_contact.items():
        after = table_row(reader, "stover.contacts", cid)
        assert after["company_id"] is None
        assert event["previous_attributes"]["company_id"] == company
        assert_event(event, "contact.updated", after, changed(before[cid], after))


# ---- deals -------------------------------------------------------------------------------------


def test_deal_insert_emits_deal_created(writer: Conn, reader: Conn, company: int) -> None:
    with writer.transaction():
        deal_id = insert(
            writer, "stover.deals", name="Small one", amount="99.90", company_id=company
        )
    (event,) = drain(writer)
    data = table_row(reader, "stover.deals", deal_id)
    assert data["stage"] == "lead"
    assert_event(event, "deal.created", data)


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("amount = 2000", ["deal.updated"]),
        ("stage = 'qualified'", ["deal.updated", "deal.stage_changed"]),
        ("stage = 'closed_won'", ["deal.updated", "deal.stage_changed", "deal.closed_won"]),
        (
            "stage = 'closed_lost', amount = 0",
            ["deal.updated", "deal.stage_changed", "deal.closed_lost"],
        ),
    ],
)
def test_deal_update_emits_updated_then_stage_events(
    writer: Conn, reader: Conn, deal: int, assignment: str, expected: list[str]
) -> None:
    before = table_row(reader, "stover.deals", deal)
    write(writer, f"update stover.deals set {assignment} where id = %s", [deal])
    after = table_row(reader, "stover.deals", deal)
    events = drain(writer)
    assert types(events) == expected
    for event, type_ in zip(events, expected, strict=True):
        assert_event(event, type_, after, changed(before, after))


def test_deal_already_closed_emits_only_deal_updated(writer: Conn, deal: int) -> None:
    write(writer, "update stover.deals set stage = 'closed_won' where id = %s", [deal])
    drain(writer)
    write(writer, "update stover.deals set name = 'Renamed' where id = %s", [deal])
    assert types(drain(writer)) == ["deal.updated"]


def test_multi_row_deal_update_emits_each_deals_events_together_in_order(
    writer: Conn, deal: int
) -> None:
    with writer.transaction():
        second = insert(writer, "stover.deals", name="Second")
    drain(writer)
    write(
        writer, "update stover.deals set stage = 'closed_won' where id in (%s, %s)", [deal, second]
    )
    events = drain(writer)
    expected = ["deal.updated", "deal.stage_changed", "deal.closed_won"]
    assert types(events) == expected * 2
    assert [event["data"]["id"] for event in events] == [deal] * 3 + [second] * 3


# ---- posts -------------------------------------------------------------------------------------


def test_post_inserted_with_a_live_status_emits_post_status_and_a_draft_nothing(
    writer: Conn, reader: Conn
) -> None:
    with writer.transaction():
        rows = writer.execute(
            "insert into stover.posts (network, content, status) values"
            " ('x', 'a', 'draft'), ('x', 'b', 'scheduled'), ('x', 'c', 'published'),"
            " ('x', 'd', 'failed') returning id, status"
        ).fetchall()
    events = drain(writer)
    live = [(post_id, status) for post_id, status in rows if status != "draft"]
    assert len(events) == len(live) == 3
    for event, (post_id, status) in zip(events, live, strict=True):
        assert_event(event, f"post.{status}", table_row(reader, "stover.posts", post_id))


def test_post_moving_draft_scheduled_published_emits_each_status(
    writer: Conn, reader: Conn
) -> None:
    with writer.transaction():
        post_id = insert(writer, "stover.posts", network="x", content="Launch")
    drain(writer)
    steps = [
        ("status = 'scheduled', scheduled_at = '2030-01-01T09:00:00Z'", "post.scheduled"),
        ("status = 'published', published_at = now()", "post.published"),
    ]
    for assignment, expected in steps:
        before = table_row(reader, "stover.posts", post_id)
        write(writer, f"update stover.posts set {assignment} where id = %s", [post_id])
        after = table_row(reader, "stover.posts", post_id)
        (event,) = drain(writer)
        assert "status" in event["previous_attributes"]
        assert_event(event, expected, after, changed(before, after))


def test_post_update_to_failed_emits_post_failed(writer: Conn, reader: Conn) -> None:
    with writer.transaction():
        post_id = insert(writer, "stover.posts", network="x", status="scheduled")
    drain(writer)
    before = table_row(reader, "stover.posts", post_id)
    write(
        writer,
        "update stover.posts set status = 'failed', error = 'token expired' where id = %s",
        [post_id],
    )
    after = table_row(reader, "stover.posts", post_id)
    (event,) = drain(writer)
    assert_event(event, "post.failed", after, changed(before, after))
    assert event["previous_attributes"]["status"] == "scheduled"


def test_post_update_that_keeps_status_emits_nothing(writer: Conn) -> None:
    with writer.transaction():
        writer.execute(
            "insert into stover.posts (network, status) values"
            " ('x', 'draft'), ('x', 'scheduled'), ('x', 'published'), ('x', 'failed')"
        )
    drain(writer)
    write(writer, "update stover.posts set content = 'edited', scheduled_at = now()")
    assert drain(writer) == []
    assert count(writer, "stover.posts") == 4


# ---- attribution -------------------------------------------------------------------------------


def test_attribution_insert_emits_attribution_tracked(
    writer: Conn, reader: Conn, contact: int
) -> None:
    with writer.transaction():
        row_id = insert(
            writer,
            "stover.attribution_events",
            contact_id=contact,
            source="google",
            medium="cpc",
            campaign="spring",
            url="https://acme.test/?utm=1",
        )
    (event,) = drain(writer)
    assert_event(
        event, "attribution.tracked", table_row(reader, "stover.attribution_events", row_id)
    )


# ---- semantics shared by every event -----------------------------------------------------------


def test_timestamps_in_data_are_utc_whatever_the_writers_timezone(
    writer: Conn, contact: int, deal: int
) -> None:
    assert writer.execute("show timezone").fetchone() == ("America/New_York",)
    with writer.transaction():
        writer.execute(
            "insert into stover.posts (network, status, scheduled_at, published_at)"
            " values ('x', 'published', '2024-01-15 05:30:00-05', now())"
        )
        writer.execute("update stover.deals set stage = 'proposal' where id = %s", [deal])
        writer.execute("delete from stover.contacts where id = %s", [contact])
    events = drain(writer)
    assert sorted(types(events)) == sorted(
        # Deleting the contact nulls the deal's contact_id: a second deal.updated.
        ["post.published", "deal.updated", "deal.stage_changed", "contact.deleted", "deal.updated"]
    )
    stamps = [
        value
        for event in events
        for part in (event["data"], event["previous_attributes"] or {})
        for key, value in part.items()
        if key.endswith("_at") and value is not None
    ]
    assert len(stamps) >= 12
    assert all(stamp.endswith("+00:00") for stamp in stamps), stamps
    (post,) = (event["data"] for event in events if event["type"] == "post.published")
    assert post["scheduled_at"] == "2024-01-15T10:30:00+00:00"


def test_rolled_back_write_emits_no_event_and_no_delivery(writer: Conn, contact: int) -> None:
    writer.execute(
        "insert into outbox.endpoints (url, event_types) values ('http://127.0.0.1:9/hook', '{*}')"
    )
    with writer.transaction():
        insert(writer, "stover.contacts", first_name="Ghost")
        writer.execute("update stover.contacts set email = 'x@y.test' where id = %s", [contact])
        writer.execute("delete from stover.contacts where id = %s", [contact])
        assert count(writer, "outbox.events") == 3
        raise psycopg.Rollback
    assert count(writer, "outbox.events") == 0
    assert fan_out(writer) == (0, 0)
    assert count(writer, "outbox.deliveries") == 0


def test_update_that_changes_nothing_emits_nothing_and_keeps_updated_at(
    writer: Conn, reader: Conn, contact: int
) -> None:
    before = table_row(reader, "stover.contacts", contact)
    for assignment in (
        "email = email",
        "updated_at = updated_at",
        "custom_fields = custom_fields, phone = phone, company_id = company_id",
    ):
        write(writer, f"update stover.contacts set {assignment} where id = %s", [contact])
        assert drain(writer) == [], assignment
        assert table_row(reader, "stover.contacts", contact) == before, assignment


def test_multi_row_insert_emits_one_event_per_row(writer: Conn, reader: Conn) -> None:
    write(
        writer,
        "insert into stover.contacts (first_name, email) "
        "select 'c' || g, 'c' || g || '@acme.test' from generate_series(1, 100) g",
    )
    events = drain(writer)
    assert types(events) == ["contact.created"] * 100
    rows = {
        row[0]["id"]: row[0]
        for row in reader.execute("select to_jsonb(t) from stover.contacts t").fetchall()
    }
    assert len(rows) == 100
    assert {event["data"]["id"]: event["data"] for event in events} == rows
    assert all(event["previous_attributes"] is None for event in events)


def test_multi_row_update_pairs_each_old_row_with_its_new_row(writer: Conn, reader: Conn) -> None:
    with writer.transaction():
        ids = [
            insert(
                writer,
                "stover.contacts",
                first_name=f"c{n}",
                email=f"c{n}@acme.test",
                phone=f"555-{n}",
            )
            for n in range(6)
        ]
    drain(writer)
    before = {cid: table_row(reader, "stover.contacts", cid) for cid in ids}
    # Row by row a different set of columns changes, and two rows do not change at all.
    write(
        writer,
        "update stover.contacts set"
        " email = case when id %% 2 = 0 then upper(email) else email end,"
        " phone = case when id %% 3 = 0 then 'changed-' || id else phone end"
        " where id = any(%s)",
        [ids],
    )
    events = drain(writer)
    changed_ids = [cid for cid in ids if cid % 2 == 0 or cid % 3 == 0]
    assert sorted(event["data"]["id"] for event in events) == sorted(changed_ids)
    for event in events:
        cid = event["data"]["id"]
        after = table_row(reader, "stover.contacts", cid)
        previous = changed(before[cid], after)
        expected = (
            {"updated_at"}
            | ({"email"} if cid % 2 == 0 else set())
            | ({"phone"} if cid % 3 == 0 else set())
        )
        assert set(previous) == expected
        assert_event(event, "contact.updated", after, previous)


def test_event_is_visible_to_others_only_after_commit(writer: Conn, reader: Conn) -> None:
    with writer.transaction():
        insert(writer, "stover.companies", name="Hooli")
        assert count(writer, "outbox.events") == 1
        assert count(reader, "outbox.events") == 0
    assert count(reader, "outbox.events") == 1
