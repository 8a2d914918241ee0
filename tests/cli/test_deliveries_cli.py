"""`outbox deliveries …`, `outbox redeliver`, `outbox replay` as real processes: output, rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.commands.deliveries import parse_timestamp
from outbox.errors import ConfigError
from tests.db.rows import backdate_event, fan_out

from .test_endpoints_cli import Conn, add_endpoint, assert_one_line_error, outbox


def emit(conn: Conn, event_type: str, age: timedelta | None = None) -> str:
    """An event (fanned out to the endpoints subscribed now), optionally dated `age` ago."""
    row = conn.execute("select outbox.emit(%s, '{}'::jsonb)", [event_type]).fetchone()
    assert row is not None
    fan_out(conn)
    if age is not None:
        backdate_event(conn, row[0], age)
    return str(row[0])


def delivery_of(conn: Conn, event_id: str, endpoint_id: str) -> int:
    row = conn.execute(
        "select id from outbox.deliveries where event_id = %s and endpoint_id = %s",
        [event_id, endpoint_id],
    ).fetchone()
    assert row is not None, f"no delivery of {event_id} to {endpoint_id}"
    return int(row[0])


def set_state(conn: Conn, delivery_id: int, status: str, attempts: int, ago: str = "1 h") -> None:
    """Mark a delivery as the relay would leave it after its attempts."""
    conn.execute(
        "update outbox.deliveries set status = %s, attempts = %s,"
        " last_attempt_at = now() - %s::interval,"
        " next_attempt_at = case when %s = 'pending' then next_attempt_at end,"
        " delivered_at = case when %s = 'delivered' then now() end"
        " where id = %s",
        [status, attempts, ago, status, status, delivery_id],
    )


def state(conn: Conn, delivery_id: int) -> dict[str, Any]:
    row = conn.execute(
        "select status, attempts, ladder_start, next_attempt_at, delivered_at"
        " from outbox.deliveries where id = %s",
        [delivery_id],
    ).fetchone()
    assert row is not None
    names = ["status", "attempts", "ladder_start", "due", "delivered_at"]
    return dict(zip(names, row, strict=True))


def now(conn: Conn) -> datetime:
    row = conn.execute("select now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_list_filters_and_shows_newest_first(cli_env: dict[str, str], conn: Conn) -> None:
    contacts, _ = add_endpoint(conn, "https://contacts.example.com/in", ["contact.*"])
    everything, _ = add_endpoint(conn, "https://all.example.com/in", ["*"])
    first = emit(conn, "contact.created")
    emit(conn, "contact.updated")
    deal = emit(conn, "deal.created")
    failed = delivery_of(conn, first, contacts)
    set_state(conn, failed, "failed", 5)

    listed = json.loads(outbox(cli_env, "deliveries", "list", "--json").out)
    only_failed = outbox(
        cli_env, "deliveries", "list", "--endpoint", contacts, "--status", "failed", "--json"
    )
    deals = outbox(cli_env, "deliveries", "list", "--event-type", "deal.*", "--json")
    table = outbox(cli_env, "deliveries", "list", "--limit", "2")

    ids = [d["id"] for d in listed]
    assert len(ids) == 5
    assert ids == sorted(ids, reverse=True)
    assert [d["id"] for d in json.loads(only_failed.out)] == [failed]
    assert [(d["event_id"], d["endpoint_id"]) for d in json.loads(deals.out)] == [
        (deal, everything)
    ]
    lines = table.out.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "TRIES"]
    assert [int(line.split()[0]) for line in lines[1:]] == ids[:2]
    # Piped, nothing is cut: each row ends with its endpoint's whole id.
    assert "…" not in table.out
    assert {line.split()[-1] for line in lines[1:]} <= {everything, contacts}


def test_show_lists_every_attempt_with_the_start_of_each_answer(
    cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    event_id = emit(conn, "contact.created")
    delivery_id = delivery_of(conn, event_id, endpoint_id)
    set_state(conn, delivery_id, "pending", 2)
    body = '{"error":"boom"}\n\x1b[31m' + "x" * 300
    conn.execute(
        "insert into outbox.attempts"
        " (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body)"
        " values (%s, 1, now(), 12.5, 500, null, %s), (%s, 2, now(), 30000, null, %s, null)",
        [delivery_id, body, delivery_id, "timed out after 30 s"],
    )

    text = outbox(cli_env, "deliveries", "show", str(delivery_id))
    document = json.loads(outbox(cli_env, "deliveries", "show", str(delivery_id), "--json").out)

    assert text.code == 0, text.err
    assert "\x1b" not in text.out
    assert f"{event_id} contact.created" in text.out
    assert "attempt 1" in text.out
    assert "status 500" in text.out
    assert '{"error":"boom"}\\n\\x1b[31m' in text.out
    assert f"({len(body) - 200} more)" in text.out
    assert "attempt 2" in text.out
    assert "timed out after 30 s" in text.out
    assert document["delivery"]["event_type"] == "contact.created"
    assert document["delivery"]["event_id"] == event_id
    heads = [(a["attempt"], a["status_code"], a["response_head"]) for a in document["attempts"]]
    assert heads == [(1, 500, body[:200]), (2, None, None)]


def test_show_of_an_unknown_delivery_is_a_one_line_error(
    cli_env: dict[str, str], conn: Conn
) -> None:
    run = outbox(cli_env, "deliveries", "show", "424242")
    assert run.code == 1
    assert_one_line_error(run, "no delivery with id 424242")


def test_redeliver_puts_failed_and_delivered_back_due_now_from_the_first_rung(
    cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    failed = delivery_of(conn, emit(conn, "contact.created"), endpoint_id)
    delivered = delivery_of(conn, emit(conn, "contact.updated"), endpoint_id)
    set_state(conn, failed, "failed", 5)
    set_state(conn, delivered, "delivered", 1)
    before = now(conn)

    run = outbox(cli_env, "redeliver", str(failed), str(delivered))

    assert run.code == 0, run.err
    assert run.out.strip() == "requeued 2 deliveries"
    after = now(conn)
    for delivery_id, attempts in ((failed, 5), (delivered, 1)):
        got = state(conn, delivery_id)
        assert (got["status"], got["attempts"], got["ladder_start"]) == (
            "pending",
            attempts,
            attempts,
        )
        assert before <= got["due"] <= after
        assert got["delivered_at"] is None


def test_redeliver_leaves_a_pending_delivery_alone_and_says_so(
    cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    pending = delivery_of(conn, emit(conn, "contact.created"), endpoint_id)
    unchanged = state(conn, pending)

    run = outbox(cli_env, "redeliver", str(pending))

    assert run.code == 0, run.err
    assert run.out.strip() == "requeued 0 deliveries"
    assert f"delivery {pending} is already pending" in run.err
    assert state(conn, pending) == unchanged


def test_redeliver_with_an_unknown_id_changes_nothing(cli_env: dict[str, str], conn: Conn) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    failed = delivery_of(conn, emit(conn, "contact.created"), endpoint_id)
    set_state(conn, failed, "failed", 5)

    run = outbox(cli_env, "redeliver", str(failed), "987654")

    assert_one_line_error(run, "no delivery with id 987654")
    assert state(conn, failed)["status"] == "failed"


def test_redeliver_failed_narrowed_by_endpoint_and_since(
    cli_env: dict[str, str], conn: Conn
) -> None:
    mine, _ = add_endpoint(conn, "https://mine.example.com/in", ["contact.*"])
    theirs, _ = add_endpoint(conn, "https://theirs.example.com/in", ["contact.*"])
    old_event, new_event = emit(conn, "contact.created"), emit(conn, "contact.updated")
    old, recent = delivery_of(conn, old_event, mine), delivery_of(conn, new_event, mine)
    other = delivery_of(conn, new_event, theirs)
    set_state(conn, old, "failed", 5, ago="2 days")
    set_state(conn, recent, "failed", 5)
    set_state(conn, other, "failed", 5)
    since = iso(now(conn) - timedelta(days=1))

    run = outbox(cli_env, "redeliver", "--failed", "--endpoint", mine, "--since", since, "--json")

    assert run.code == 0, run.err
    assert json.loads(run.out) == {"requeued": [recent], "already_pending": []}
    assert [state(conn, d)["status"] for d in (old, recent, other)] == [
        "failed",
        "pending",
        "failed",
    ]
    assert state(conn, recent)["ladder_start"] == 5


def test_redeliver_needs_ids_or_failed(cli_env: dict[str, str]) -> None:
    assert_one_line_error(outbox(cli_env, "redeliver"), "--failed")


def test_replay_requeues_what_it_had_and_creates_what_it_missed(
    cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["contact.*"])
    conn.execute("update outbox.endpoints set enabled = false where id = %s", [endpoint_id])
    too_old = emit(conn, "contact.created", age=timedelta(days=10))
    missed = emit(conn, "contact.updated")
    conn.execute("update outbox.endpoints set enabled = true where id = %s", [endpoint_id])
    delivered = delivery_of(conn, emit(conn, "contact.created"), endpoint_id)
    failed = delivery_of(conn, emit(conn, "contact.updated"), endpoint_id)
    pending = delivery_of(conn, emit(conn, "contact.deleted"), endpoint_id)
    unsubscribed = emit(conn, "deal.created")
    set_state(conn, delivered, "delivered", 1)
    set_state(conn, failed, "failed", 5)
    since = iso(now(conn) - timedelta(days=1))

    run = outbox(cli_env, "replay", "--endpoint", endpoint_id, "--since", since, "--json")

    assert run.code == 0, run.err
    assert json.loads(run.out) == {
        "requeued": 2,
        "created": 1,
        "already_pending": 1,
        "endpoint_enabled": True,
    }
    for delivery_id, attempts in ((delivered, 1), (failed, 5)):
        got = state(conn, delivery_id)
        assert (got["status"], got["ladder_start"], got["delivered_at"]) == (
            "pending",
            attempts,
            None,
        )
    created = state(conn, delivery_of(conn, missed, endpoint_id))
    assert (created["status"], created["attempts"], created["ladder_start"]) == ("pending", 0, 0)
    assert state(conn, pending)["ladder_start"] == 0
    counts = conn.execute(
        "select count(*) filter (where event_id = %s), count(*) filter (where event_id = %s),"
        " count(*) from outbox.deliveries",
        [too_old, unsubscribed],
    ).fetchone()
    assert counts == (0, 0, 4)


def test_replay_window_end_and_types_narrow_what_is_sent(
    cli_env: dict[str, str], conn: Conn
) -> None:
    early = emit(conn, "contact.created", age=timedelta(hours=3))
    emit(conn, "deal.created", age=timedelta(hours=2))
    emit(conn, "contact.updated", age=timedelta(hours=1))
    endpoint_id, _ = add_endpoint(conn, "https://late.example.com/in", ["*"])
    start = now(conn)

    run = outbox(
        cli_env,
        "replay",
        "--endpoint",
        endpoint_id,
        "--since",
        iso(start - timedelta(hours=4)),
        "--until",
        iso(start - timedelta(minutes=90)),
        "--types",
        "contact.*",
    )

    assert run.code == 0, run.err
    assert run.out.strip() == "requeued 0, created 1, already pending 0"
    rows = conn.execute("select event_id, status from outbox.deliveries").fetchall()
    assert rows == [(early, "pending")]


def test_replay_sends_operational_events_but_never_those_about_the_endpoint_itself(
    cli_env: dict[str, str], conn: Conn
) -> None:
    ops, _ = add_endpoint(conn, "https://ops.example.com/in", ["outbox.*"])
    other, _ = add_endpoint(conn, "https://other.example.com/in", ["*"])
    for endpoint_id in (ops, other):
        conn.execute("update outbox.endpoints set enabled = false where id = %s", [endpoint_id])
        conn.execute("update outbox.endpoints set enabled = true where id = %s", [endpoint_id])
    fan_out(conn)
    conn.execute("delete from outbox.deliveries")
    since = iso(now(conn) - timedelta(days=1))

    run = outbox(cli_env, "replay", "--endpoint", ops, "--since", since, "--json")

    assert run.code == 0, run.err
    assert json.loads(run.out)["created"] == 2
    about = conn.execute(
        "select distinct e.data ->> 'endpoint_id' from outbox.deliveries d"
        " join outbox.events e on e.id = d.event_id where d.endpoint_id = %s",
        [ops],
    ).fetchall()
    assert about == [(other,)]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 timestamp"),
        (["--since", "2024-01-02", "--until", "2024-01-01"], "is not after --since"),
    ],
)
def test_replay_rejects_bad_timestamps_in_one_line(
    cli_env: dict[str, str], conn: Conn, args: list[str], needle: str
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    emit(conn, "contact.created")
    conn.execute("update outbox.deliveries set status = 'failed'")

    run = outbox(cli_env, "replay", "--endpoint", endpoint_id, *args)

    assert_one_line_error(run, needle)
    assert conn.execute("select status from outbox.deliveries").fetchall() == [("failed",)]


def test_replay_to_an_unknown_endpoint_is_a_one_line_error(
    cli_env: dict[str, str], conn: Conn
) -> None:
    run = outbox(cli_env, "replay", "--endpoint", "ep_nope", "--since", "2024-01-01T00:00:00Z")
    assert run.code == 1
    assert_one_line_error(run, "no endpoint with id 'ep_nope'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:30:00Z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T10:30:00z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T12:30:00+02:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15 10:30", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15", datetime(2024, 1, 15, tzinfo=UTC)),
    ],
)
def test_timestamps_are_iso_8601_with_naive_ones_in_utc(text: str, expected: datetime) -> None:
    assert parse_timestamp(text, "--since") == expected


@pytest.mark.parametrize("text", ["", "Z", "yesterday", "2024-13-01", "1705314600"])
def test_timestamps_that_are_not_iso_8601_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--since"):
        parse_timestamp(text, "--since")
