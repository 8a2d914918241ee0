"""The capture bench's sides write what they claim to: the outbox its event row alone whatever the
number of endpoints, the floor one tiny row, the reference one unindexed row, PgQ one event in its
queue (where the server has PgQ), and each side leaves the others' triggers off."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from outbox.db.benchdb import BenchDb, Capture

INSERT = "insert into stover.contacts (first_name, email) values ('Ada', 'ada@example.com')"


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
    row = conn.execute(
        # The application's events: switching endpoints on and off raises outbox.endpoint.*.
        "select (select count(*) from outbox.events where type not like 'outbox.%'),"
        " (select count(*) from outbox.deliveries),"
        " (select count(*) from bench_reference), (select count(*) from bench_floor)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


@pytest.mark.parametrize(
    ("mode", "endpoints", "written"),
    [
        ("outbox", 1, (1, 0, 0, 0)),
        ("outbox", 10, (1, 0, 0, 0)),
        ("no_account", 1, (1, 0, 0, 0)),
        ("floor", 1, (0, 0, 0, 1)),
        ("reference", 1, (0, 0, 1, 0)),
        ("off", 1, (0, 0, 0, 0)),
    ],
)
def test_each_capture_mode_writes_only_its_own_rows(
    db_url: str, mode: Capture, endpoints: int, written: tuple[int, int, int, int]
) -> None:
    with BenchDb(db_url) as db:
        for n in range(10):
            db.add_endpoint(f"http://127.0.0.1:9/{n}")
        db.install_references()
        db.capture(mode)
        db.enable_endpoints(endpoints)
    with psycopg.connect(db_url, autocommit=True) as conn:
        enabled = conn.execute("select count(*) from outbox.endpoints where enabled").fetchone()
        assert enabled == (endpoints,)
        conn.execute(INSERT)
        assert _counts(conn) == written


@pytest.mark.parametrize(("mode", "account"), [("outbox", "1"), ("no_account", None)])
def test_the_account_sides_differ_only_in_the_events_account(
    db_url: str, mode: Capture, account: str | None
) -> None:
    """Both sides write one event for a row of account 1: the outbox's capture of the reference
    table with its account, the side without an account column with none."""
    with BenchDb(db_url) as db:
        db.add_endpoint("http://127.0.0.1:9/only")
        db.install_references()
        db.capture(mode)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "insert into stover.contacts (first_name, email, account_id)"
            " values ('Ada', 'ada@example.com', 1)"
        )
        rows = conn.execute(
            "select type, account_id from outbox.events where type not like 'outbox.%'"
        ).fetchall()
        assert rows == [("contact.created", account)]


def test_the_pgq_side_writes_one_event_into_its_queue_and_nothing_else(db_url: str) -> None:
    with BenchDb(db_url) as db:
        db.add_endpoint("http://127.0.0.1:9/only")
        if not db.install_references():
            pytest.skip("PgQ is not installed on this server")
        db.capture("pgq")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(INSERT)
        assert _counts(conn) == (0, 0, 0, 0)
        row = conn.execute("select count(*) from pgq.event_template").fetchone()
        assert row == (1,)
        with BenchDb(db_url) as db:
            db.capture("outbox")
        conn.execute(INSERT)
        assert _counts(conn) == (1, 0, 0, 0)
        assert conn.execute("select count(*) from pgq.event_template").fetchone() == (1,)
