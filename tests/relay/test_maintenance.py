"""Scheduled maintenance hosted by real relay processes: retention removes what `outbox prune`
would and keeps the rest; `--no-maintenance`, an installation without pgqueuer's tables and a
role that may not delete each leave it unhosted with a line saying so, while the relay delivers;
a bad setting stops the relay at start with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgqueuer.adapters.persistence import schema_ddl
from support import outbox_cmd, stop, wait_until

from outbox.config import load
from outbox.db import scheduler
from outbox.relay import maintenance
from tests.cli.test_deliveries_cli import delivery_of, emit, set_state
from tests.cli.test_prune_cli import OLD, add_attempt, attempts_count, deliveries_of, events
from tests.db.rows import fan_out

from . import add_endpoint, emit_one, log_records, receiving, start_logged_relay

Conn = psycopg.Connection[Any]

EVERY_SECOND = "* * * * * *"
OLD_BULK = 2500  # more than one retention batch (1,000 events)


def maintenance_env(cli_env: dict[str, str], schedule: str = EVERY_SECOND) -> dict[str, str]:
    return {**cli_env, "OUTBOX_RETENTION_SCHEDULE": schedule}


@contextmanager
def relay(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A relay process, SIGTERMed at the end of the block (killed if it will not stop)."""
    proc = start_logged_relay(env, log, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop(proc)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def runs(log: Path) -> list[dict[str, Any]]:
    return log_records(log, "maintenance job done")


def pruned(log: Path) -> list[dict[str, Any]]:
    return [r for r in runs(log) if r["job"] == "outbox.retention"]


def maintenance_lines(log: Path) -> list[dict[str, Any]]:
    return [r for r in log_records(log) if "maintenance" in r["event"]]


def delivered_one(conn: Conn, receiver: Any) -> None:
    """An event delivered by the relay under test: it runs and delivers."""
    emit_one(conn)
    receiver.wait_count(1, timeout=30)


@pytest.fixture
def history(conn: Conn) -> dict[str, Any]:
    """Old events delivered (more than a batch of them), failed, and delivered to one endpoint
    but still pending for a disabled one; a young one delivered."""
    first = add_endpoint(conn, "http://127.0.0.1:9/in").id
    waiting = add_endpoint(conn, "http://127.0.0.1:9/later", event_types=("contact.*",)).id
    made: dict[str, Any] = {
        "failed": emit(conn, "deal.updated", OLD),
        "retrying": emit(conn, "contact.created", OLD),
        "young": emit(conn, "deal.created"),
    }
    bulk = conn.execute(
        "select outbox.emit('deal.created', '{}'::jsonb) from generate_series(1, %s)", [OLD_BULK]
    ).fetchall()
    fan_out(conn)
    made["bulk"] = [event_id for (event_id,) in bulk]
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")  # as backdate_event does
        conn.execute(
            "update outbox.events set created_at = now() - %s::interval where id = any(%s)",
            [OLD, made["bulk"]],
        )
    conn.execute(
        "update outbox.deliveries set status = 'delivered', attempts = 1, delivered_at = now()"
        " where event_id = any(%s)",
        [made["bulk"]],
    )
    failed = delivery_of(conn, made["failed"], first)
    set_state(conn, failed, "failed", 5)
    add_attempt(conn, failed, 1, 503)
    set_state(conn, delivery_of(conn, made["retrying"], first), "delivered", 1)
    add_attempt(conn, delivery_of(conn, made["retrying"], first), 1, 200)
    set_state(conn, delivery_of(conn, made["retrying"], waiting), "pending", 3)
    # Disabled, so its pending delivery waits (the relay under test claims nothing of it).
    conn.execute("update outbox.endpoints set enabled = false where id = %s", [waiting])
    young = delivery_of(conn, made["young"], first)
    set_state(conn, young, "delivered", 1)
    add_attempt(conn, young, 1, 200)
    return made


def test_a_relay_removes_what_prune_would_and_keeps_young_and_pending_events(
    conn: Conn, cli_env: dict[str, str], history: dict[str, Any], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    with relay(maintenance_env(cli_env), log):
        wait_until(lambda: any(r["events"] for r in pruned(log)), timeout=60, what="a pruning run")

    # The relay's other jobs (disable_failing) may run meanwhile; they count other things.
    (first, *later) = [r for r in pruned(log) if r["events"]]
    assert later == []  # the first run removed every old event
    assert (first["events"], first["deliveries"], first["kept"]) == (OLD_BULK + 1, OLD_BULK + 1, 1)
    # (Disabling an endpoint in the fixture raised a young outbox.endpoint.disabled event.)
    operational = {
        r[0] for r in conn.execute("select id from outbox.events where type like 'outbox.%'")
    }
    assert events(conn) - operational == {history["retrying"], history["young"]}
    assert deliveries_of(conn, history["retrying"]) == ["delivered", "pending"]
    assert deliveries_of(conn, history["young"]) == ["delivered"]
    assert attempts_count(conn) == 2  # the failed delivery's attempt went with it


def test_retention_off_or_no_maintenance_hosts_nothing(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    old = emit(conn, "deal.created", OLD)  # no endpoint, no delivery: retention removes it
    with receiving() as receiver:
        add_endpoint(conn, receiver.url())
        quiet = [tmp_path / "flag.log", tmp_path / "off.log"]
        witness = tmp_path / "witness.log"
        env = maintenance_env(cli_env)
        with (
            relay(env, quiet[0], "--no-maintenance"),
            relay({**env, "OUTBOX_RETENTION": "off"}, quiet[1]),
        ):
            delivered_one(conn, receiver)
            wait_until(lambda: all(log_records(q, "relay started") for q in quiet), what="start")
            # A relay hosting the same schedule, beside them, runs it again and again.
            with relay(env, witness):
                wait_until(lambda: len(runs(witness)) >= 3, timeout=60, what="three runs")
    assert old not in events(conn)
    assert [r["event"] for r in maintenance_lines(quiet[0])] == [
        "maintenance not hosted (--no-maintenance)"
    ]
    # Retention off: the relay hosts the auto-disable sweep alone.
    [hosted] = log_records(quiet[1], "maintenance hosted")
    assert hosted["jobs"] == {"outbox.disable_failing": "* * * * *"}
    assert not [r for r in runs(quiet[1]) if r["job"] == "outbox.retention"]


def test_an_installation_without_pgqueuers_tables_delivers_without_maintenance(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    conn.execute(schema_ddl.render_uninstall(scheduler.settings()).encode())
    log = tmp_path / "relay.log"
    with receiving() as receiver, relay(maintenance_env(cli_env), log) as proc:
        add_endpoint(conn, receiver.url())
        delivered_one(conn, receiver)
        wait_until(lambda: maintenance_lines(log), what="the maintenance line")
        assert proc.poll() is None
    lines = maintenance_lines(log)
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "warning"
    assert "outbox.pgqueuer_schedules" in lines[0]["event"]
    assert "run `outbox migrate`" in lines[0]["event"]


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("OUTBOX_RETENTION", "30", "is not a duration"),
        ("OUTBOX_RETENTION", "10m", "must be at least 1h"),
        ("OUTBOX_RETENTION_SCHEDULE", "every night", "is not a cron expression"),
        ("OUTBOX_RETENTION_SCHEDULE", "0 0 30 2 *", "names no date that exists"),
    ],
)
def test_a_bad_setting_stops_the_relay_with_one_line(
    cli_env: dict[str, str], name: str, value: str, needle: str
) -> None:
    done = subprocess.run(
        outbox_cmd("relay"),
        env={**cli_env, name: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{name}={value!r}" in lines[0]
    assert needle in lines[0]


def test_the_auto_disable_sweep_is_a_scheduled_job_that_disables_what_fails_for_days(
    conn: Conn, db_url: str
) -> None:
    settings = load({"DATABASE_URL": db_url, "OUTBOX_RETENTION": "off"})
    [job] = maintenance.jobs(settings)
    assert (job.name, job.schedule, job.needs) == ("outbox.disable_failing", "* * * * *", ())
    dead = add_endpoint(conn, "http://127.0.0.1:9/dead").id
    alive = add_endpoint(conn, "http://127.0.0.1:9/alive").id
    conn.execute(
        "update outbox.endpoints set consecutive_failures = 40,"
        " failing_since = now() - interval '6 days', last_failure_at = now() where id = %s",
        [dead],
    )
    with scheduler.job_connection(db_url) as job_conn:
        counts = job.work(job_conn, threading.Event())
    assert counts == {"disabled": 1}
    enabled = dict(conn.execute("select id, enabled from outbox.endpoints").fetchall())
    assert enabled == {dead: False, alive: True}
    [(event_type,)] = conn.execute(
        "select type from outbox.events where type like 'outbox.%'"
    ).fetchall()
    assert event_type == "outbox.endpoint.disabled"
