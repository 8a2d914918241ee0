"""The least-privilege roles: a relay and a writer can do their work with them, and no more."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support import outbox_cmd, wait_until

from tests.cli.test_deliveries_cli import emit
from tests.cli.test_prune_cli import OLD, events
from tests.relay import add_endpoint as add_relay_endpoint
from tests.relay import receiving
from tests.relay.test_maintenance import delivered_one, maintenance_env, maintenance_lines, relay

from .conftest import connect_as
from .rows import fan_out

Conn = psycopg.Connection[Any]


def add_endpoint(conn: Conn) -> None:
    # Port 9 (discard) on loopback: nothing listens, so each attempt fails at once.
    conn.execute(
        "insert into outbox.endpoints (url, event_types) values ('http://127.0.0.1:9/x', '{*}')"
    )


def insert_contact(conn: Conn) -> None:
    conn.execute("insert into stover.contacts (first_name) values ('Ada')")


def test_a_writer_with_outbox_writer_writes_events_alone(
    conn: Conn, db_url: str, login: Any
) -> None:
    add_endpoint(conn)
    app = login("outbox_writer")
    conn.execute(f"grant usage on schema stover to {app}")
    conn.execute(f"grant insert, update on stover.contacts to {app}")
    with connect_as(db_url, app) as writer:
        insert_contact(writer)
        writer.execute("update stover.contacts set last_name = 'Lovelace'")
        writer.execute("select outbox.emit('test.ping', '{}')")
        # Capture writes events alone: the writer reads no endpoint and writes no delivery.
        for statement in (
            "select id from outbox.endpoints",
            "delete from outbox.deliveries",
            "insert into outbox.deliveries (event_id, endpoint_id) values ('evt_x', 'ep_x')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                writer.execute(statement)
    fan_out(conn)
    types = conn.execute(
        "select e.type, count(d.id) from outbox.events e "
        "join outbox.deliveries d on d.event_id = e.id group by e.type order by e.type"
    ).fetchall()
    assert types == [("contact.created", 1), ("contact.updated", 1), ("test.ping", 1)]


def test_a_writer_without_outbox_writer_cannot_write_captured_tables(
    conn: Conn, db_url: str, login: Any
) -> None:
    add_endpoint(conn)
    app = login()
    conn.execute(f"grant usage on schema stover to {app}")
    conn.execute(f"grant insert on stover.contacts to {app}")
    with connect_as(db_url, app) as writer, pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_contact(writer)


def test_a_relay_with_outbox_relay_delivers_and_may_touch_nothing_else(
    conn: Conn, db_url: str, cli_env: dict[str, str], login: Any
) -> None:
    add_endpoint(conn)
    # A rate limit: the relay's claim takes its slots too.
    conn.execute("update outbox.endpoints set rate_limit = 100")
    insert_contact(conn)
    sidecar = login("outbox_relay")
    env = {
        **cli_env,
        "DATABASE_URL": make_conninfo(db_url, user=sidecar),
        "OUTBOX_RETRY_LADDER": "0,0",
    }
    done = subprocess.run(
        outbox_cmd("relay", "--once"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["failed"] == 1
    row = conn.execute("select status, attempts from outbox.deliveries").fetchone()
    assert row == ("failed", 2)
    with connect_as(db_url, sidecar) as relay:
        for statement in (
            "select * from stover.contacts",
            "update outbox.endpoints set url = 'http://127.0.0.1:9/y'",
            "update outbox.endpoints set secret = 'whsec_AAAA'",
            """update outbox.endpoints set headers = '{"X-A": "b"}'""",
            "update outbox.endpoints set rate_limit = null",
            "delete from outbox.events",
            "delete from outbox.deliveries",
            "insert into outbox.events (type, data) values ('contact.created', '{}')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                relay.execute(statement)


def test_a_relay_with_outbox_relay_leaves_retention_to_a_role_that_may_delete(
    conn: Conn, cli_env: dict[str, str], login: Any, tmp_path: Path
) -> None:
    old = emit(conn, "deal.created", OLD)
    sidecar = login("outbox_relay")
    env = {
        **maintenance_env(cli_env),
        "DATABASE_URL": make_conninfo(cli_env["DATABASE_URL"], user=sidecar),
    }
    log = tmp_path / "relay.log"
    with receiving() as receiver, relay(env, log):
        add_relay_endpoint(conn, receiver.url())
        delivered_one(conn, receiver)
        wait_until(lambda: len(maintenance_lines(log)) >= 2, what="the maintenance lines")
    (line,) = [r for r in maintenance_lines(log) if r["level"] == "warning"]
    # It hosts the auto-disable sweep, which the role may run.
    [hosted] = [r for r in maintenance_lines(log) if r["event"] == "maintenance hosted"]
    assert list(hosted["jobs"]) == ["outbox.disable_failing"]
    assert line["job"] == "outbox.retention"
    assert line["lacking"] == ["DELETE on outbox.deliveries", "DELETE on outbox.events"]
    assert old in events(conn)
