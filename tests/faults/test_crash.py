"""A relay killed with SIGKILL mid-stream loses nothing: its leases come due again and other relays
deliver them. A relay stopped with SIGTERM finishes and records its in-flight attempts, and hands
back the leases of what it could not finish so they are due at once."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from support import Received, running_receiver, stop, wait_until

from . import (
    Conn,
    add_contacts,
    add_endpoint,
    all_delivered,
    delivery_counts,
    duplicates,
    event_ids,
    log_lines,
    relay_env,
    relay_process,
    scalar,
    statuses,
)

pytestmark = pytest.mark.slow

BACKLOG = 2000


def slow_ok(_: Received) -> tuple[int, bytes, float]:
    """200 after a short pause, so a relay is mid-stream for a while."""
    return 200, b"ok", 0.01


def _hangs(request: Received) -> bool:
    """Every tenth delivery is one the receiver may leave hanging."""
    return int(request.headers["X-Stover-Delivery-Id"]) % 10 == 0


def _blocked_writes(conn: Conn, since: datetime | None = None) -> int:
    """Statements of the relay waiting for a lock (started after `since`, if given)."""
    return int(
        scalar(
            conn,
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
            " and wait_event_type = 'Lock' and query like '%%outbox.attempts%%'"
            " and (%s::timestamptz is null or query_start > %s::timestamptz)",
            [since, since],
        )
    )


def _recorded(conn: Conn) -> set[str]:
    """Deliveries recorded as delivered with their successful attempt."""
    rows = conn.execute(
        "select d.id from outbox.deliveries d"
        " join outbox.attempts a on a.delivery_id = d.id"
        " where d.status = 'delivered' and a.status_code = 200"
    ).fetchall()
    return {str(row[0]) for row in rows}


def _leased(conn: Conn) -> int:
    """Pending deliveries still under some relay's lease."""
    return int(
        scalar(
            conn,
            "select count(*) from outbox.deliveries"
            " where status = 'pending' and next_attempt_at > now()",
        )
    )


def test_kill_9_mid_stream_loses_nothing(
    conn: Conn,
    cli_env: dict[str, str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    # The killed relay's leases last OUTBOX_TIMEOUT + 15 = 16 s; the survivors wait that out.
    env = relay_env(cli_env, TIMEOUT="1")
    with running_receiver(default=slow_ok) as receiver:
        add_endpoint(conn, receiver.url())
        add_contacts(conn, BACKLOG)
        with relay_process(env, "--concurrency", "50", log=tmp_path / "victim.log") as victim:
            receiver.wait_count(BACKLOG // 10)
            os.killpg(victim.pid, signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
        sent_by_victim = len(receiver.requests)
        assert sent_by_victim < BACKLOG, "the relay finished before it could be killed"
        held = _leased(conn)

        # The survivors' own timeout is longer: an attempt of theirs that timed out would be
        # retried a rung later and might arrive twice, blurring what the kill alone caused.
        survivor_env = relay_env(cli_env, TIMEOUT="10")
        with ExitStack() as stack:
            survivors = [
                stack.enter_context(relay_process(survivor_env, log=tmp_path / f"survivor{i}.log"))
                for i in range(2)
            ]
            wait_until(lambda: all_delivered(conn, BACKLOG), timeout=45, what="all delivered")
            codes = [stop(proc) for proc in survivors]
        requests = list(receiver.requests)

    assert codes == [0, 0]
    assert statuses(conn) == {"delivered": BACKLOG}
    assert {r.headers["X-Stover-Event-Id"] for r in requests} == event_ids(conn)
    delivered_ids = {
        str(row[0]) for row in conn.execute("select id from outbox.deliveries").fetchall()
    }
    assert set(delivery_counts(requests)) == delivered_ids
    # Every delivery has its successful attempt on record.
    assert _recorded(conn) == delivered_ids
    dupes = duplicates(requests)
    # Only what the victim held under lease can have been sent twice.
    assert dupes <= held
    record_property("duplicates", dupes)
    record_property("victim_requests", sent_by_victim)
    record_property("victim_leases_left", held)


def test_sigterm_records_in_flight_attempts_and_hands_back_the_rest(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Every tenth delivery hangs until the receiver is told to stop hanging; the rest answer fast.
    hanging = threading.Event()
    hanging.set()

    def answer(request: Received) -> tuple[int, bytes, float] | None:
        if hanging.is_set() and _hangs(request):
            return None
        return 200, b"ok", 0.005

    # A lease lasts 30 + 15 s: anything still leased when the relay exits would stay invisible
    # far longer than the checks below wait.
    env = relay_env(cli_env, TIMEOUT="30")
    log = tmp_path / "relay.log"
    with running_receiver(default=answer) as receiver:
        add_endpoint(conn, receiver.url())
        add_contacts(conn, BACKLOG)
        with relay_process(env, "--concurrency", "50", "--grace", "1", log=log) as relay:
            receiver.wait_for(lambda reqs: len(reqs) >= 200 and any(map(_hangs, reqs)))
            relay.send_signal(signal.SIGTERM)
            # Exits by itself once the 1 s grace has cut off the hanging attempts.
            assert relay.wait(15) == 0
        answered = {r.headers["X-Stover-Delivery-Id"] for r in receiver.requests if not _hangs(r)}
        hung = {r.headers["X-Stover-Delivery-Id"] for r in receiver.requests if _hangs(r)}

        # Every attempt that got its answer during the grace period is on record.
        assert answered <= _recorded(conn)
        # The cut-off attempts left no trace but a lease handed back: pending, due now.
        assert hung
        rows = conn.execute(
            "select id::text, status, attempts, next_attempt_at <= now()"
            " from outbox.deliveries where id = any(%s::bigint[])",
            [sorted(hung)],
        ).fetchall()
        assert {(status, attempts, due) for _, status, attempts, due in rows} == {
            ("pending", 0, True)
        }
        assert _leased(conn) == 0
        stopped = [line for line in log_lines(log) if line.get("event") == "relay stopped"]
        assert len(stopped) == 1
        assert stopped[0]["released"] == len(hung)

        # A new relay finishes the rest long before a lease (45 s) could have expired.
        hanging.clear()
        with relay_process(env, log=tmp_path / "successor.log") as successor:
            wait_until(lambda: all_delivered(conn, BACKLOG), timeout=30, what="all delivered")
            assert stop(successor) == 0


def test_sigterm_while_an_outcome_write_is_blocked_still_records_it(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Attempts are answered, but their outcomes cannot be written while this test holds a lock
    # on outbox.attempts: the relay is stopped with its recorder stuck mid-write, the way a slow
    # database leaves it. Every answered attempt must still end up on record.
    log = tmp_path / "relay.log"
    with running_receiver(default=slow_ok) as receiver:
        add_endpoint(conn, receiver.url())
        add_contacts(conn, BACKLOG)
        with (
            relay_process(cli_env, "--concurrency", "50", log=log) as relay,
            psycopg.connect(db_url, autocommit=True) as blocker,
        ):
            receiver.wait_count(100)
            with blocker.transaction():
                blocker.execute("lock table outbox.attempts in exclusive mode")
                wait_until(lambda: _blocked_writes(conn) > 0, what="an outcome write blocked")
                stopping = scalar(conn, "select clock_timestamp()")
                relay.send_signal(signal.SIGTERM)
                # Hold the lock until the relay has given up on the blocked write: it has either
                # exited or started its final write after being told to stop.
                wait_until(
                    lambda: relay.poll() is not None or _blocked_writes(conn, stopping) > 0,
                    what="the relay to reach its final write",
                )
            assert relay.wait(15) == 0
        answered = set(delivery_counts(receiver.requests))
    assert answered == _recorded(conn)
    assert _leased(conn) == 0
