"""Every claimed delivery ends: an event the relay cannot render, or one over the payload cap, is a
recorded failure with its reason, not a delivery claimed again at every lease; the rest of its
batch is delivered, and `outbox relay --once` ends without a traceback, holding nothing."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import psycopg
import pytest
from support import env_without_outbox, outbox_cmd

from . import add_endpoint, attempts, deliveries, drive, emit_one, receiving, running_relay

Conn = psycopg.Connection[Any]


def nested(depth: int) -> dict[str, Any]:
    """{"a": {"a": ... {}}}, `depth` objects deep (a contact's custom_fields can hold it)."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def by_event(conn: Conn) -> dict[str, dict[str, Any]]:
    return {row["event_id"]: row for row in deliveries(conn)}


async def test_an_event_too_deep_to_render_fails_at_once_and_the_batch_goes_on(
    conn: Conn, db_url: str
) -> None:
    with receiving() as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        poison = emit_one(conn, {"custom_fields": nested(500)})
        healthy = emit_one(conn)
        async with running_relay(db_url, ladder=(0.0, 0.0, 0.0)) as relay:
            tally = await relay.run_once()
            again = await relay.run_once()

    assert (tally.claimed, tally.delivered, tally.failed) == (2, 1, 1)
    assert again.claimed == 0  # nothing comes back
    rows = by_event(conn)
    assert rows[healthy]["status"] == "delivered"
    failed = rows[poison]
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["last_error"].startswith("not sent: RecursionError")
    [attempt] = attempts(conn, failed["id"])
    assert attempt["error"] == failed["last_error"]
    assert [r.headers["X-Stover-Event-Id"] for r in receiver.requests] == [healthy]


async def test_an_event_over_the_payload_cap_fails_at_once(conn: Conn, db_url: str) -> None:
    with receiving() as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        big = emit_one(conn, {"note": "x" * 4096})
        small = emit_one(conn)
        async with running_relay(db_url, ladder=(0.0, 60.0), max_payload_bytes=2048) as relay:
            await drive(relay, lambda: len(receiver.requests) >= 1)
            assert (await relay.run_once()).claimed == 0  # nothing comes back
    rows = by_event(conn)
    assert rows[small]["status"] == "delivered"
    assert rows[big]["status"] == "failed"
    assert rows[big]["attempts"] == 1
    assert "over OUTBOX_MAX_PAYLOAD_BYTES (2,048)" in rows[big]["last_error"]


def test_relay_once_with_a_poison_event_ends_cleanly_and_holds_nothing(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    with receiving() as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        emit_one(conn, {"custom_fields": nested(500)})
        done = subprocess.run(
            outbox_cmd("relay", "--once"),
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["failed"] == 1
    held = conn.execute(
        "select count(*) from outbox.deliveries where status = 'pending'"
    ).fetchone()
    assert held == (0,)


@pytest.mark.parametrize("value", ["abc", "0", "1.5", "999999999999"])
def test_a_malformed_payload_cap_is_one_line_naming_the_variable(value: str) -> None:
    env = {**env_without_outbox(), "OUTBOX_MAX_PAYLOAD_BYTES": value}
    done = subprocess.run(
        outbox_cmd("endpoints", "list"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("outbox: error: OUTBOX_MAX_PAYLOAD_BYTES=")


MALFORMED_TYPES = [
    (
        "invoice.paid\r\nX-Injected: 1",
        "not sent: event type 'invoice.paid\\r\\nX-Injected: 1' holds a control character,"
        " which no HTTP header may carry",
    ),
    (
        "Invoice.Paid",
        "not sent: event type 'Invoice.Paid' is not a type such as deal.created"
        " (two to four lowercase words joined by dots, at most 256 characters)",
    ),
    ("invoice", "not sent: event type 'invoice' is not a type such as deal.created"),
    ("a." + "b" * 300, "not sent: event type 'a.bbbbb"),
]


@pytest.mark.parametrize(("event_type", "reason"), MALFORMED_TYPES)
async def test_a_malformed_event_type_fails_at_once(
    conn: Conn, db_url: str, event_type: str, reason: str
) -> None:
    # The table does not check a type's shape (0012 says why); the relay refuses it.
    with receiving() as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        poison = conn.execute(
            "insert into outbox.events (type, data) values (%s, '{}') returning id",
            [event_type],
        ).fetchone()
        assert poison is not None
        healthy = emit_one(conn)
        async with running_relay(db_url, ladder=(0.0, 60.0)) as relay:
            await drive(relay, lambda: len(receiver.requests) >= 1)
            assert (await relay.run_once()).claimed == 0  # nothing comes back
    rows = by_event(conn)
    assert rows[healthy]["status"] == "delivered"
    failed = rows[poison[0]]
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["last_error"].startswith(reason)
    assert [r.headers["X-Stover-Event-Id"] for r in receiver.requests] == [healthy]


async def test_a_ladder_start_written_by_hand_beyond_the_attempts_still_ends(
    conn: Conn, db_url: str
) -> None:
    # ladder_start is a column a confined account may write (it redelivers its own).
    add_endpoint(conn, "http://127.0.0.1:9/closed")  # nothing listens on port 9
    emit_one(conn)
    async with running_relay(db_url, ladder=(0.0, 0.0)) as relay:
        await relay.run_once()
        conn.execute("update outbox.deliveries set ladder_start = 100, next_attempt_at = now()")
        await drive(relay, lambda: deliveries(conn)[0]["status"] == "failed")

    # The ladder counts from the first attempt: two rungs, two attempts.
    [row] = deliveries(conn)
    assert (row["status"], row["attempts"]) == ("failed", 2)
