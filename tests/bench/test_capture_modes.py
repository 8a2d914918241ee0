"""The capture bench's comparison triggers write what they claim to: the floor, the contract's
least (each event and its delivery to the one endpoint), the reference one unindexed row, and each
mode leaves the others' triggers off."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from outbox.db.benchdb import BenchDb, Capture

INSERT = "insert into stover.contacts (first_name, email) values ('Ada', 'ada@example.com')"


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from outbox.events), (select count(*) from outbox.deliveries),"
        " (select count(*) from bench_reference)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@pytest.mark.parametrize(
    ("mode", "written"),
    [("outbox", (1, 2, 0)), ("floor", (1, 1, 0)), ("reference", (0, 0, 1)), ("off", (0, 0, 0))],
)
def test_each_capture_mode_writes_only_its_own_rows(
    db_url: str, mode: Capture, written: tuple[int, int, int]
) -> None:
    with BenchDb(db_url) as db:
        first = db.add_endpoint("http://127.0.0.1:9/first")
        db.add_endpoint("http://127.0.0.1:9/second")  # the outbox fans out to both
        db.install_references()
        db.capture(mode)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(INSERT)
        assert _counts(conn) == written
        if mode == "floor":
            row = conn.execute(
                "select e.type, d.endpoint_id, d.status from outbox.events e"
                " join outbox.deliveries d on d.event_id = e.id"
            ).fetchone()
            assert row == ("contact.created", first, "pending")
