"""Upgrading a working installation from 0006 (capture wrote the deliveries) to fan-out keeps every
pending and retrying delivery and the whole audit history, fans nothing out twice, and a relay of
the new version delivers what the old one left as well as what is written after."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from support import env_without_outbox, running_receiver

from outbox.db import migrate
from outbox.db.store import Store
from outbox.sqlfiles import sql_dir

from .rows import fan_out

Conn = psycopg.Connection[Any]


def _migrations_up_to(tmp_path: Path, version: int) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        if int(path.name[:4]) <= version:
            shutil.copy(path, folder / path.name)
    return folder


def _relay_once(url: str) -> dict[str, int]:
    env = env_without_outbox()
    env.update(DATABASE_URL=url, OUTBOX_ALLOW_PRIVATE_NETWORKS="1", OUTBOX_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "outbox", "relay", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    tally: dict[str, int] = json.loads(done.stdout)
    return tally


def test_an_upgrade_from_0006_keeps_pending_work_and_history(
    empty_db_url: str, tmp_path: Path
) -> None:
    migrate.migrate(empty_db_url, folder=_migrations_up_to(tmp_path, 6))
    with running_receiver() as receiver, psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "insert into outbox.endpoints (url, event_types) values (%s, '{*}')", [receiver.url()]
        )
        conn.execute(
            "insert into stover.contacts (first_name) select 'c' || g from generate_series(1, 6) g"
        )
        # Under 0006 the capture statement wrote the deliveries: two delivered, two retrying
        # (one due now, one in an hour), two pending as written.
        conn.execute(
            "update outbox.deliveries set status = 'delivered', attempts = 1, delivered_at = now()"
            " where id in (select id from outbox.deliveries order by id limit 2)"
        )
        conn.execute(
            "insert into outbox.attempts (delivery_id, attempt, started_at, duration_ms,"
            " status_code) select id, 1, now(), 1.0, 200 from outbox.deliveries"
            " where status = 'delivered'"
        )
        conn.execute(
            "update outbox.deliveries set attempts = 1, last_status_code = 500,"
            " next_attempt_at = case when id % 2 = 0 then now() else now() + interval '1 hour' end"
            " where id in (select id from outbox.deliveries where status = 'pending'"
            " order by id limit 2)"
        )
        before = conn.execute(
            "select id, event_id, status, attempts from outbox.deliveries order by id"
        ).fetchall()
        assert len(before) == 6

        migrate.migrate(empty_db_url)

        after = conn.execute(
            "select id, event_id, status, attempts from outbox.deliveries order by id"
        ).fetchall()
        assert after == before
        assert fan_out(conn) == (0, 0)  # what 0006 captured is not fanned out again
        conn.execute("insert into stover.contacts (first_name) values ('after the upgrade')")

        tally = _relay_once(empty_db_url)
        # The new event and the three due pending deliveries; the one retrying in an hour waits.
        assert (tally["delivered"], tally["failed"]) == (4, 0)
        rows = conn.execute(
            "select status, count(*) from outbox.deliveries group by status order by status"
        ).fetchall()
        assert rows == [("delivered", 6), ("pending", 1)]
        per_event = conn.execute(
            "select count(*) from outbox.deliveries group by event_id having count(*) > 1"
        ).fetchall()
        assert per_event == []
        history = conn.execute("select count(*) from outbox.attempts").fetchone()
        assert history == (6,)  # two from before the upgrade, four now
    assert len(receiver.requests) == 4
    assert len({r.headers["X-Stover-Delivery-Id"] for r in receiver.requests}) == 4


def test_an_upgrade_to_accounts_leaves_a_single_account_installation_as_it_was(
    empty_db_url: str, tmp_path: Path
) -> None:
    migrate.migrate(empty_db_url, folder=_migrations_up_to(tmp_path, 7))
    with running_receiver() as receiver, psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "insert into outbox.endpoints (url, event_types) values (%s, '{*}')", [receiver.url()]
        )
        conn.execute("insert into stover.contacts (first_name) values ('fanned out before')")
        assert fan_out(conn) == (1, 1)
        # Committed under 0007 and not fanned out yet when the upgrade runs.
        conn.execute("insert into stover.contacts (first_name) values ('waiting')")
        conn.execute("select outbox.emit('app.thing', '{}')")

        migrate.migrate(empty_db_url)

        accounts = conn.execute(
            "select (select count(*) from outbox.events where account_id is not null),"
            " (select count(*) from outbox.endpoints where account_id is not null or all_accounts)"
        ).fetchone()
        assert accounts == (0, 0)
        conn.execute("insert into stover.contacts (first_name) values ('after the upgrade')")
        tally = _relay_once(empty_db_url)
        assert (tally["delivered"], tally["failed"]) == (4, 0)
        per_event = conn.execute(
            "select count(*), count(distinct event_id), count(account_id) from outbox.deliveries"
        ).fetchone()
        assert per_event == (4, 4, 0)
    assert len(receiver.requests) == 4


async def _next_due(url: str) -> float | None:
    """What an idle relay asks before it sleeps."""
    store = Store(url)
    await store.open()
    try:
        return await store.next_due()
    finally:
        await store.close()


def test_an_upgrade_to_the_input_rules_keeps_rows_written_under_looser_ones(
    empty_db_url: str, tmp_path: Path
) -> None:
    migrate.migrate(empty_db_url, folder=_migrations_up_to(tmp_path, 8))
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        nested = conn.execute(
            "insert into outbox.endpoints (url, event_types, description) values"
            " ('http://0x7f.1/', '{{deal.created,deal.updated}}', e'two\\nlines') returning id"
        ).fetchone()
        conn.execute("insert into outbox.events (type, data) values ('Odd Type', '[1]')")
        # A delivery parked at 'infinity' stopped every idle relay under 0008.
        conn.execute(
            "insert into outbox.deliveries (event_id, endpoint_id, next_attempt_at)"
            " values ('evt_parked', %s, 'infinity')",
            nested,
        )
        conn.execute(
            "insert into outbox.deliveries (event_id, endpoint_id, status, delivered_at)"
            " values ('evt_done', %s, 'delivered', '-infinity')",
            nested,
        )

        migrate.migrate(empty_db_url)

        # The array of arrays is the list fan-out matched; the rest of the row is as it was.
        row = conn.execute(
            "select url, event_types, description from outbox.endpoints where id = %s", nested
        ).fetchone()
        assert row == ("http://0x7f.1/", ["deal.created", "deal.updated"], "two\nlines")
        assert conn.execute("select type, data from outbox.events").fetchall() == [
            ("Odd Type", [1])
        ]
        listed = subprocess.run(
            [sys.executable, "-m", "outbox", "endpoints", "list", "--json"],
            env={**env_without_outbox(), "DATABASE_URL": empty_db_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        parked = conn.execute(
            "select next_attempt_at::text, delivered_at::text from outbox.deliveries"
            " order by event_id desc"
        ).fetchall()
        relayed = _relay_once(empty_db_url)
        due = asyncio.run(_next_due(empty_db_url))
    assert listed.returncode == 0, listed.stderr
    [endpoint] = json.loads(listed.stdout)
    assert endpoint["event_types"] == ["deal.created", "deal.updated"]
    # Still last and first, now moments the relay can read; "not yet" is still NULL.
    assert parked == [
        ("9999-12-30 00:00:00+00", None),
        (parked[1][0], "0001-01-02 00:00:00+00"),
    ]
    assert relayed["claimed"] == 0
    assert due is not None
    assert due > 1e9


def test_an_upgrade_during_an_import_in_parts_keeps_its_numbers_and_pending_work(
    empty_db_url: str, tmp_path: Path
) -> None:
    """0017 rebuilds event_records' key in another collation while a large transaction is half
    fanned out: the parts after it carry the numbers given before, every event gets exactly one
    delivery, and the deliveries pending or retrying stay as they were."""
    migrate.migrate(empty_db_url, folder=_migrations_up_to(tmp_path, 16))
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "insert into outbox.endpoints (url, event_types) values ('http://127.0.0.1:9/', '{*}')"
        )
        conn.execute("insert into stover.contacts (first_name) values ('before')")
        conn.execute(
            "insert into stover.contacts (first_name)"
            " select 'c' || g from generate_series(1, 100) g"
        )

        def step() -> tuple[int, int, bool]:
            row = conn.execute("select events, deliveries, more from outbox.fan_out(40)").fetchone()
            assert row is not None
            return int(row[0]), int(row[1]), bool(row[2])

        assert step() == (1, 1, True)  # the single row; the import is numbered by the next step
        assert step() == (0, 0, True)
        assert step() == (8, 8, True)  # under 0016, a fifth of a step
        conn.execute(
            "update outbox.deliveries set attempts = 1, last_status_code = 500,"
            " next_attempt_at = now() + interval '1 hour' where id = (select min(id) from"
            " outbox.deliveries)"
        )
        numbers = conn.execute(
            "select event_id, record, sequence from outbox.event_records"
        ).fetchall()
        pending = conn.execute(
            "select id, event_id, attempts, next_attempt_at from outbox.deliveries order by id"
        ).fetchall()
        assert len(numbers) == 101

        migrate.migrate(empty_db_url)

        collation = conn.execute(
            "select collation_name from information_schema.columns"
            " where table_schema = 'outbox' and table_name = 'event_records'"
            " and column_name = 'event_id'"
        ).fetchone()
        assert collation == ("C",)
        assert sorted(
            conn.execute("select event_id, record, sequence from outbox.event_records").fetchall()
        ) == sorted(numbers)
        assert (
            conn.execute(
                "select id, event_id, attempts, next_attempt_at from outbox.deliveries"
                " where id <= %s order by id",
                [pending[-1][0]],
            ).fetchall()
            == pending
        )
        taken = [step()]
        while taken[-1][2]:
            taken.append(step())
            assert len(taken) < 100, "fan-out never finished"
        assert all(t[:2] == (2, 2) for t in taken[:-1])  # now a twentieth of a step
        assert sum(t[0] for t in taken) == 100 - 8
        per_event = conn.execute(
            "select count(*), count(distinct event_id) from outbox.deliveries"
        ).fetchone()
        assert per_event == (101, 101)
        # Every delivery carries the number its event was given before the upgrade.
        mismatched = conn.execute(
            "select count(*) from outbox.deliveries d join outbox.event_records r"
            " on r.event_id = d.event_id where (d.record, d.sequence) <> (r.record, r.sequence)"
        ).fetchone()
        assert mismatched == (0,)
