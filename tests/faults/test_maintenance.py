"""Two relays host the same maintenance schedule: across both, each fire time is served by one
run. A relay stopped during a run lets the batch in hand commit, and no more."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import wait_until

from tests.cli.test_prune_cli import OLD
from tests.db.rows import fan_out

from . import Conn, add_endpoint, event_ids, log_lines, relay_env, relay_process, scalar

pytestmark = pytest.mark.slow

PERIOD_S = 2
SCHEDULE = f"* * * * * */{PERIOD_S}"  # every second second: a sixth field gives seconds
RUNS = 8
RELAYS = 2


def runs(logs: list[Path]) -> list[dict[str, Any]]:
    """Every retention run either relay logged."""
    return [
        line
        for log in logs
        if log.exists()
        for line in log_lines(log)
        if line["event"] == "maintenance job done"
    ]


def test_two_relays_run_each_fire_time_of_a_schedule_once(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = relay_env(cli_env, RETENTION_SCHEDULE=SCHEDULE)
    logs = [tmp_path / f"relay{i}.log" for i in range(RELAYS)]
    with ExitStack() as stack:
        relays = [stack.enter_context(relay_process(env, log=log)) for log in logs]
        wait_until(lambda: len(runs(logs)) >= RUNS, timeout=90, what=f"{RUNS} runs")
        for proc in relays:
            proc.terminate()
        assert [proc.wait(20) for proc in relays] == [0] * RELAYS

    done = runs(logs)
    # Each job's fire times, retention's every two seconds and the auto-disable sweep's every
    # minute, each served once.
    served = Counter((line["job"], line["slot"]) for line in done)
    doubled = {slot: n for slot, n in served.items() if n > 1}
    assert not doubled, doubled
    assert {line["job"] for line in done} <= {"outbox.retention", "outbox.disable_failing"}
    assert len([line for line in done if line["job"] == "outbox.retention"]) >= RUNS - 1
    hosted = [line for log in logs for line in log_lines(log) if "hosted" in line["event"]]
    assert [line["event"] for line in hosted] == ["maintenance hosted"] * RELAYS
    # One schedule row for the job however many relays host it.
    rows = conn.execute(
        "select entrypoint, expression from outbox.pgqueuer_schedules order by entrypoint"
    ).fetchall()
    assert rows == [("outbox.disable_failing", "* * * * *"), ("outbox.retention", SCHEDULE)]


def old_delivered_events(conn: Conn, n: int) -> list[str]:
    """`n` events 40 days old, each delivered to one endpoint, in id (and so batch) order."""
    add_endpoint(conn, "http://127.0.0.1:9/in")
    rows = conn.execute(
        "select outbox.emit('deal.created', '{}'::jsonb) from generate_series(1, %s)", [n]
    ).fetchall()
    fan_out(conn)
    ids = sorted(event_id for (event_id,) in rows)
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")  # events are append-only
        conn.execute(
            "update outbox.events set created_at = now() - %s::interval where id = any(%s)",
            [OLD, ids],
        )
    conn.execute("update outbox.deliveries set status = 'delivered', attempts = 1")
    return ids


def test_a_relay_stopped_during_retention_commits_the_batch_in_hand_and_stops(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    ids = old_delivered_events(conn, 2500)  # three batches of 1,000
    log = tmp_path / "relay.log"
    with psycopg.connect(db_url) as operator:
        # An operator's transaction holds a delivery of the second batch: the run waits there.
        operator.execute(
            "select id from outbox.deliveries where event_id = %s for update", [ids[1500]]
        )
        with relay_process(relay_env(cli_env, RETENTION_SCHEDULE="* * * * * *"), log=log) as proc:
            wait_until(lambda: job_waiting(conn), timeout=60, what="the run waiting on the lock")
            assert len(ids) - len(event_ids(conn)) == 1000  # the first batch committed
            proc.terminate()
            wait_until(lambda: stopped(log), what="the relay's own shutdown")
            # Delivery is done with; the process waits for the run's batch in hand.
            assert proc.poll() is None
            operator.rollback()
            assert proc.wait(20) == 0
    (line,) = [r for r in log_lines(log) if r["event"] == "maintenance job stopped with the relay"]
    assert (line["events"], line["deliveries"]) == (2000, 2000)
    assert event_ids(conn) == set(ids[2000:])
    # The stopped run never says done (the once-a-minute auto-disable sweep may, in between).
    done = [r for r in log_lines(log) if r["event"] == "maintenance job done"]
    assert not [r for r in done if r.get("job") == line["job"]], done


def job_waiting(conn: Conn) -> bool:
    return bool(
        scalar(
            conn,
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and application_name = 'outbox relay maintenance job'"
            " and wait_event_type = 'Lock'",
        )
    )


def stopped(log: Path) -> bool:
    return any(r["event"] == "relay stopped" for r in log_lines(log))
