"""The relay vacuums outbox.deliveries itself while outcomes are being recorded, when it may."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from support import stop, wait_until

from . import (
    add_endpoint,
    deliveries,
    emit_one,
    log_records,
    receiving,
    relay_env,
    start_logged_relay,
)

Conn = psycopg.Connection[Any]


def vacuum_count(conn: Conn) -> int:
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(
        "select vacuum_count from pg_stat_user_tables where relid = 'outbox.deliveries'::regclass"
    ).fetchone()
    assert row is not None
    return int(row[0])


def log_events(log: Path) -> list[str]:
    return [record["event"] for record in log_records(log)]


@contextmanager
def delivering(conn: Conn, env: dict[str, str], log: Path, vacuum_every: str) -> Iterator[None]:
    """A relay (`--vacuum-every vacuum_every`, stderr in `log`) that has delivered 20 events;
    stopped, and its clean exit checked, when the block ends."""
    with receiving() as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        relay = start_logged_relay(env, log, "--vacuum-every", vacuum_every)
        try:
            for _ in range(20):
                emit_one(conn)
            wait_until(
                lambda: all(d["status"] == "delivered" for d in deliveries(conn)), what="delivery"
            )
            yield
        finally:
            assert stop(relay) == 0


def test_the_relay_vacuums_deliveries_while_outcomes_are_recorded(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    before = vacuum_count(conn)
    with delivering(conn, relay_env(cli_env, ladder="0"), log, "0.2"):
        wait_until(lambda: vacuum_count(conn) > before, what="a VACUUM of outbox.deliveries")
        wait_until(lambda: "vacuumed outbox.deliveries" in log_events(log), what="its log line")


def test_vacuum_every_zero_leaves_the_table_to_autovacuum(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    before = vacuum_count(conn)
    with delivering(conn, relay_env(cli_env, ladder="0"), log, "0"):
        pass
    assert "vacuumed outbox.deliveries" not in log_events(log)
    assert vacuum_count(conn) == before


def test_a_relay_whose_role_may_not_vacuum_says_so_once_and_leaves_it_to_autovacuum(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    before = vacuum_count(conn)
    login = f"outbox_test_sidecar_{os.getpid()}"
    conn.execute(f"drop role if exists {login}")
    conn.execute(f"create role {login} login in role outbox_relay")
    try:
        env = {**relay_env(cli_env, ladder="0"), "DATABASE_URL": make_conninfo(db_url, user=login)}
        with delivering(conn, env, log, "0.2"):
            wait_until(
                lambda: any("leaving it to autovacuum" in e for e in log_events(log)),
                what="the log line saying why it does not vacuum",
            )
    finally:
        conn.execute(f"drop role {login}")
    assert "vacuumed outbox.deliveries" not in log_events(log)
    assert vacuum_count(conn) == before
