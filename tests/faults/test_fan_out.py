"""Fan-out under real concurrency and real kills: writers committing and rolling back beside three
relay processes, and a relay killed with SIGKILL in the middle of a fan-out step. Every committed
event reaches every subscribed endpoint, none of a rolled-back transaction does, and no event gets
a second delivery to one endpoint."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest
from support import running_receiver, stop, wait_until

from . import Conn, add_endpoint, all_delivered, relay_process, scalar, statuses

pytestmark = pytest.mark.slow

WRITERS = 8
TRANSACTIONS = 40  # per writer
RELAYS = 3


def _write(db_url: str, seed: int, committed: list[int], errors: list[BaseException]) -> None:
    """Transactions of one to three contacts, some with a savepoint rolled back, one in three
    rolled back whole; the ids of the contacts that committed go to `committed`."""
    rng = random.Random(seed)
    try:
        with psycopg.connect(db_url) as conn:
            for n in range(TRANSACTIONS):
                ids = []
                for i in range(rng.randint(1, 3)):
                    if rng.random() < 0.2:
                        conn.execute("savepoint s")
                        conn.execute("insert into stover.contacts (first_name) values ('dropped')")
                        conn.execute("rollback to savepoint s")
                    row = conn.execute(
                        "insert into stover.contacts (first_name) values (%s) returning id",
                        [f"w{seed}-{n}-{i}"],
                    ).fetchone()
                    assert row is not None
                    ids.append(int(row[0]))
                time.sleep(rng.random() * 0.01)  # hold the transaction open a little
                if rng.random() < 1 / 3:
                    conn.rollback()
                else:
                    conn.commit()
                    committed.extend(ids)
    except BaseException as exc:  # handed to the test
        errors.append(exc)


def test_writers_committing_and_rolling_back_beside_three_relays(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    committed: list[int] = []
    errors: list[BaseException] = []
    with running_receiver() as receiver:
        everything = add_endpoint(conn, receiver.url("/all"))
        contacts = add_endpoint(conn, receiver.url("/contacts"), ("contact.created",))
        add_endpoint(conn, receiver.url("/deals"), ("deal.*",))  # subscribed to none of them
        with ExitStack() as stack:
            for i in range(RELAYS):
                stack.enter_context(relay_process(cli_env, log=tmp_path / f"relay{i}.log"))
            writers = [
                threading.Thread(target=_write, args=(db_url, seed, committed, errors))
                for seed in range(WRITERS)
            ]
            for thread in writers:
                thread.start()
            for thread in writers:
                thread.join(120)
            assert errors == []
            total = 2 * len(committed)
            wait_until(lambda: all_delivered(conn, total), timeout=60, what="all delivered")
        requests = list(receiver.requests)

    assert statuses(conn) == {"delivered": total}
    rows = conn.execute(
        "select (e.data ->> 'id')::bigint, d.endpoint_id from outbox.deliveries d"
        " join outbox.events e on e.id = d.event_id"
    ).fetchall()
    per_pair = Counter(rows)
    assert max(per_pair.values()) == 1
    assert {contact for contact, _ in rows} == set(committed)
    assert {endpoint for _, endpoint in rows} == {everything, contacts}
    # Every committed contact reached both subscribed endpoints; nothing else was sent.
    got = Counter((r.path, r.headers["X-Stover-Event-Id"]) for r in requests)
    assert {path for path, _ in got} == {"/all", "/contacts"}
    assert len(got) == total
    assert scalar(conn, "select count(*) from outbox.events") == len(committed)


def _fanning_out(conn: Conn) -> bool:
    """Whether another backend of this database is running outbox.fan_out() right now."""
    return bool(
        scalar(
            conn,
            "select count(*) > 0 from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
            " and state = 'active' and query like '%%outbox.fan_out(%%'",
        )
    )


# Many steps (20 transactions of 1,000 events, 5,000 a step) and two endpoints: 40,000 deliveries
# through the test receiver, a minute or more while another suite shares the machine.
@pytest.mark.timeout(400)
def test_a_relay_killed_in_the_middle_of_a_fan_out_step_loses_and_doubles_nothing(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    endpoints, events = 2, 20_000
    with running_receiver() as receiver:
        for n in range(endpoints):
            add_endpoint(conn, receiver.url(f"/hook{n}"))
        for _ in range(events // 1000):  # many transactions: many steps
            conn.execute(
                "insert into stover.contacts (first_name)"
                " select 'c' || g from generate_series(1, 1000) g"
            )
        with relay_process(cli_env, log=tmp_path / "victim.log") as victim:
            wait_until(lambda: _fanning_out(conn), timeout=30, what="a fan-out step running")
            os.killpg(victim.pid, signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
        # Its step either committed whole or left nothing; a relay started now does the rest.
        mid = scalar(conn, "select count(*) from outbox.deliveries")
        assert mid % endpoints == 0
        assert mid < events * endpoints, "the relay fanned out everything before the kill"
        with relay_process(cli_env, log=tmp_path / "survivor.log") as survivor:
            wait_until(
                lambda: all_delivered(conn, events * endpoints), timeout=300, what="all delivered"
            )
            assert stop(survivor) == 0
        requests = list(receiver.requests)

    assert statuses(conn) == {"delivered": events * endpoints}
    pairs = scalar(conn, "select count(distinct (event_id, endpoint_id)) from outbox.deliveries")
    assert pairs == events * endpoints
    received = {(r.path, r.headers["X-Stover-Event-Id"]) for r in requests}
    assert len(received) == events * endpoints
