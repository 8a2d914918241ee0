"""outbox.fan_out() by transaction snapshots: each committed event fanned out exactly once, in the
step after its transaction commits, whatever order transactions began and committed in; nothing
of a rolled-back transaction or savepoint; subscriptions as they stand at fan-out time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from .rows import count, fan_out, insert

Conn = psycopg.Connection[Any]


@pytest.fixture
def other(db_url: str) -> Iterator[Conn]:
    """A second connection, not in autocommit: a writer holding its transaction open."""
    with psycopg.connect(db_url) as connection:
        yield connection


def endpoint(conn: Conn, types: tuple[str, ...] = ("*",), *, enabled: bool = True) -> str:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types, enabled) values (%s, %s, %s) returning id",
        ["http://127.0.0.1:9/hook", list(types), enabled],
    ).fetchone()
    assert row is not None
    return str(row[0])


def step(conn: Conn, max_events: int = 10_000) -> tuple[int, int, bool]:
    row = conn.execute(
        "select events, deliveries, more from outbox.fan_out(%s)", [max_events]
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), bool(row[2])


def delivered_events(conn: Conn) -> list[str]:
    """Event ids with a delivery, one entry per delivery (a repeat is a duplicate)."""
    return [r[0] for r in conn.execute("select event_id from outbox.deliveries order by id")]


def contact_events(conn: Conn) -> dict[str, int]:
    """Each contact.created event's contact id, by event id."""
    rows = conn.execute(
        "select id, (data ->> 'id')::bigint from outbox.events where type = 'contact.created'"
    )
    return {str(event_id): int(contact) for event_id, contact in rows}


def test_a_transaction_left_open_holds_back_only_its_own_events(conn: Conn, other: Conn) -> None:
    endpoint(conn)
    # Opened first: its xid is older than every other writer's.
    late = insert(other, "stover.contacts", first_name="Late")
    early = [insert(conn, "stover.contacts", first_name=f"c{n}") for n in range(200)]

    assert step(conn) == (200, 200, False)
    by_event = contact_events(conn)
    assert sorted(by_event[e] for e in delivered_events(conn)) == sorted(early)

    assert step(conn) == (0, 0, False)
    other.commit()
    assert step(conn) == (1, 1, False)
    delivered = delivered_events(conn)
    assert len(delivered) == len(set(delivered)) == 201
    assert contact_events(conn)[delivered[-1]] == late
    assert step(conn) == (0, 0, False)


def test_a_rolled_back_savepoint_leaves_only_the_kept_events(conn: Conn) -> None:
    endpoint(conn)
    with conn.transaction():
        kept = insert(conn, "stover.contacts", first_name="Kept")
        conn.execute("savepoint import_row")
        insert(conn, "stover.contacts", first_name="Dropped")
        conn.execute("rollback to savepoint import_row")
        also = insert(conn, "stover.contacts", first_name="Also kept")
    with conn.transaction():
        insert(conn, "stover.contacts", first_name="Rolled back")
        conn.execute("select outbox.emit('test.gone', '{}')")
        raise psycopg.Rollback
    assert fan_out(conn) == (2, 2)
    assert sorted(contact_events(conn).values()) == sorted([kept, also])


def test_an_endpoint_gets_only_events_written_after_it_and_while_it_is_enabled(
    conn: Conn,
) -> None:
    insert(conn, "stover.contacts", first_name="Before")
    late = endpoint(conn)
    paused = endpoint(conn, enabled=False)
    insert(conn, "stover.contacts", first_name="After")
    assert fan_out(conn) == (2, 1)
    rows = conn.execute("select endpoint_id from outbox.deliveries").fetchall()
    assert rows == [(late,)]
    # Enabling it later sends nothing already fanned out (`outbox replay` does); its own
    # outbox.endpoint.enabled event reaches no one, as no endpoint subscribes to outbox.*.
    conn.execute("update outbox.endpoints set enabled = true where id = %s", [paused])
    assert fan_out(conn) == (1, 0)


def test_steps_are_bounded_and_together_fan_out_everything_once(conn: Conn) -> None:
    endpoint(conn)
    endpoint(conn, ("contact.created",))
    for _ in range(30):
        conn.execute(
            "insert into stover.contacts (first_name) select 'c' || g from generate_series(1, 10) g"
        )
    steps = []
    while True:
        events, _, more = step(conn, 25)
        steps.append(events)
        if not more:
            break
    assert sum(steps) == 300
    assert max(steps) <= 30  # at most the bound, rounded up to a whole transaction
    assert len(steps) >= 10
    delivered = delivered_events(conn)
    assert len(delivered) == 600
    assert len(set(delivered)) == 300
    assert step(conn) == (0, 0, False)


def steps(conn: Conn, max_events: int) -> list[tuple[int, int, bool]]:
    """Steps of `max_events` until one leaves nothing behind."""
    taken = [step(conn, max_events)]
    while taken[-1][2]:
        taken.append(step(conn, max_events))
        assert len(taken) < 100, "fan-out never finished"
    return taken


def test_a_transaction_larger_than_a_step_goes_in_parts_and_later_ones_pass_it(
    conn: Conn,
) -> None:
    endpoint(conn)
    conn.execute(
        "insert into stover.contacts (first_name) select 'c' || g from generate_series(1, 100) g"
    )
    last = conn.execute("select max(id) from stover.contacts").fetchone()
    assert last is not None
    conn.execute("update stover.contacts set first_name = 'later' where id = %s", [last[0]])
    taken = steps(conn, 40)
    # The step that finds the large transaction numbers its events; each later step writes the
    # next part, a twentieth of a step (2 events), and the update passes the 98 still waiting.
    assert taken[0] == (0, 0, True)
    assert taken[1] == (3, 3, True)
    assert all(t[:2] == (2, 2) for t in taken[2:-1])
    assert sum(t[0] for t in taken) == 101
    assert sorted(delivered_events(conn)) == sorted(
        r[0] for r in conn.execute("select id from outbox.events")
    )
    updated = conn.execute(
        "select d.id from outbox.deliveries d join outbox.events e on e.id = d.event_id"
        " where e.type = 'contact.updated'"
    ).fetchone()
    created = conn.execute(
        "select d.id from outbox.deliveries d join outbox.events e on e.id = d.event_id"
        " where e.type = 'contact.created' and (e.data ->> 'id')::bigint = %s",
        [last[0]],
    ).fetchone()
    assert updated is not None
    assert created is not None
    assert updated[0] < created[0]  # written before the large transaction's last part
    # and numbered after it: the record's order is the order of the writes
    rows = conn.execute(
        "select e.type, r.sequence from outbox.event_records r"
        " join outbox.events e on e.id = r.event_id where r.record = %s order by r.sequence",
        [f"contacts:{last[0]}"],
    ).fetchall()
    assert rows == [("contact.created", 1), ("contact.updated", 2)]
    assert count(conn, "outbox.fan_out_splits") == 0


def test_a_large_transaction_goes_whole_where_an_ordered_endpoint_could_get_it(
    conn: Conn,
) -> None:
    endpoint(conn)
    conn.execute(
        "insert into outbox.endpoints (url, event_types, ordered, enabled)"
        " values ('http://127.0.0.1:9/ordered', '{deal.*}', true, false)"
    )
    conn.execute(
        "insert into stover.contacts (first_name) select 'c' || g from generate_series(1, 50) g"
    )
    assert step(conn, 10)[:2] == (50, 50)  # all of it in one step
    assert count(conn, "outbox.fan_out_splits") == 0


def test_the_lag_counts_a_large_transactions_events_still_waiting(conn: Conn) -> None:
    endpoint(conn)
    conn.execute(
        "insert into stover.contacts (first_name) select 'c' || g from generate_series(1, 100) g"
    )
    assert step(conn, 40) == (0, 0, True)
    assert step(conn, 40) == (2, 2, True)
    row = conn.execute("select events from outbox.fan_out_lag()").fetchone()
    assert row == (98,)


def test_one_relay_steps_at_a_time_and_the_others_skip(conn: Conn, db_url: str) -> None:
    endpoint(conn)
    insert(conn, "stover.contacts", first_name="Ada")
    with psycopg.connect(db_url) as holder:
        assert step(holder) == (1, 1, False)  # its transaction still holds the cursor
        insert(conn, "stover.contacts", first_name="Bob")
        assert step(conn) == (0, 0, False)  # skipped, not blocked
        holder.commit()
    assert step(conn) == (1, 1, False)
    assert count(conn, "outbox.deliveries") == 2


def test_a_step_killed_before_commit_leaves_nothing_and_the_next_step_does_it_all(
    conn: Conn, db_url: str
) -> None:
    endpoint(conn)
    insert(conn, "stover.contacts", first_name="Ada")
    doomed = psycopg.connect(db_url)
    try:
        assert step(doomed) == (1, 1, False)  # written, not committed
        conn.execute("select pg_terminate_backend(%s, 10000)", [doomed.info.backend_pid])
    finally:
        with contextlib.suppress(psycopg.OperationalError):
            doomed.close()
    assert count(conn, "outbox.deliveries") == 0
    assert fan_out(conn) == (1, 1)


def test_fan_out_refuses_a_snapshot_older_than_its_lock(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read")
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="READ COMMITTED"):
            conn.execute("select * from outbox.fan_out()")


def test_events_are_append_only_and_deliveries_unique(conn: Conn) -> None:
    endpoint(conn)
    insert(conn, "stover.contacts", first_name="Ada")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="append-only"):
        conn.execute("update outbox.events set type = 'contact.updated'")
    fan_out(conn)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "insert into outbox.deliveries (event_id, endpoint_id)"
            " select event_id, endpoint_id from outbox.deliveries"
        )


def test_concurrent_writers_and_steppers_fan_out_each_committed_event_once(
    conn: Conn, db_url: str
) -> None:
    endpoint(conn)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with psycopg.connect(db_url) as c:
                for i in range(60):
                    insert(c, "stover.contacts", first_name=f"w{n}-{i}")
                    if i % 3 == 0:
                        c.rollback()
                    else:
                        c.commit()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    def steps() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                while not stop.is_set():
                    step(c, 7)
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    steppers = [threading.Thread(target=steps) for _ in range(2)]
    for thread in [*writers, *steppers]:
        thread.start()
    for thread in writers:
        thread.join(60)
    stop.set()
    for thread in steppers:
        thread.join(60)
    assert errors == []
    fan_out(conn)
    delivered = delivered_events(conn)
    assert len(delivered) == len(set(delivered)) == 4 * 40
    assert set(delivered) == set(contact_events(conn))


def _waiting_on_a_lock(conn: Conn, pid: int) -> bool:
    row = conn.execute(
        "select wait_event_type = 'Lock' from pg_stat_activity where pid = %s", [pid]
    ).fetchone()
    return bool(row and row[0])


def test_an_endpoint_deleted_during_a_step_is_left_no_delivery(conn: Conn, db_url: str) -> None:
    doomed = endpoint(conn)
    insert(conn, "stover.contacts", first_name="Ada")
    errors: list[BaseException] = []
    with psycopg.connect(db_url) as stepper, psycopg.connect(db_url, autocommit=True) as operator:
        assert step(stepper) == (1, 1, False)  # written, not committed: the delete cannot see it
        pid = operator.info.backend_pid

        def delete() -> None:
            try:
                operator.execute("delete from outbox.endpoints where id = %s", [doomed])
            except BaseException as exc:  # handed to the test below
                errors.append(exc)

        deleting = threading.Thread(target=delete)
        deleting.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(conn, pid):
            assert deleting.is_alive(), "the delete did not wait for the step"
            assert time.monotonic() < deadline, "the delete did not wait for the step"
            time.sleep(0.01)
        stepper.commit()
        deleting.join(10)
    assert errors == []
    assert count(conn, "outbox.endpoints") == 0
    assert count(conn, "outbox.deliveries") == 0


def _reads(conn: Conn) -> dict[str, tuple[int, int, int]]:
    """Sequential scans, rows they read and rows fetched through indexes, of events and
    event_records, as this backend has counted them and not yet reported."""
    return {
        str(r[0]): (int(r[1]), int(r[2]), int(r[3] or 0))
        for r in conn.execute(
            "select relname, seq_scan, seq_tup_read, idx_tup_fetch from pg_stat_xact_user_tables"
            " where schemaname = 'outbox' and relname in ('events', 'event_records')"
        )
    }


def test_a_part_reads_its_own_events_and_their_numbers_only(conn: Conn) -> None:
    """Each part of a large transaction reads its next events in id order and each one's number
    by its key, not the whole transaction nor every event's number. (With the statistics of an
    import not yet gathered, the planner read the whole transaction and sorted it to take a
    part's rows, and hashed every row of event_records to join the part's numbers.)"""
    endpoint(conn)
    conn.execute(
        "insert into stover.contacts (first_name) select 'c' || g from generate_series(1, 20000) g"
    )
    assert step(conn, 4_000) == (0, 0, True)  # numbers the 20,000; its parts come next
    with conn.transaction():
        # The counts a backend has not yet reported carry over from its earlier transactions:
        # what a step read is the difference.
        before = _reads(conn)
        assert step(conn, 4_000) == (200, 200, True)  # a twentieth of a step
        after = _reads(conn)
    read = {
        name: tuple(a - b for a, b in zip(after[name], before[name], strict=True)) for name in after
    }
    assert read["event_records"] == (0, 0, 200)
    assert read["events"][:2] == (0, 0)
    assert read["events"][2] <= 200 + 10  # the part, and what the step's other lookups touch
