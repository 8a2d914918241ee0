"""The relay vacuums outbox.deliveries itself while it drains a backlog, when it may."""

from __future__ import annotations

import os
import time
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
def delivering(
    conn: Conn,
    env: dict[str, str],
    log: Path,
    vacuum_every: str,
    *,
    backlog: int = 0,
    trickle: int = 0,
) -> Iterator[None]:
    """A relay (`--vacuum-every vacuum_every`, stderr in `log`) that has delivered `backlog`
    events written before it started, then `trickle` events written one at a time, each once
    the one before was delivered; stopped, and its clean exit checked, when the block ends.
    The receiver takes 20 ms an answer and the relay 8 at a time: a backlog of 200 drains
    for half a second at least, through several rounds of --vacuum-every."""

    def delivered(n: int) -> bool:
        # Counted, not just all delivered: until the relay fans an event out, it has no
        # delivery, and "all of none" would let the next event go before this one is delivered.
        rows = deliveries(conn)
        return len(rows) == n and all(d["status"] == "delivered" for d in rows)

    with receiving(default=lambda _: (200, b"ok", 0.02)) as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        if backlog:
            conn.execute(
                "select outbox.emit('test.ping', '{\"n\": 1}') from generate_series(1, %s)",
                [backlog],
            )
        relay = start_logged_relay(
            env, log, "--vacuum-every", vacuum_every, "--per-endpoint", "8", "--batch", "8"
        )
        try:
            wait_until(lambda: delivered(backlog), what="delivery of the backlog")
            for n in range(backlog + 1, backlog + trickle + 1):
                emit_one(conn)
                wait_until(lambda n=n: delivered(n), what="delivery")
            yield
        finally:
            assert stop(relay) == 0


# Claims come back full, or short only for the endpoint at its cap, until the end of the drain.
BACKLOG = 200


def test_the_relay_vacuums_deliveries_while_it_drains_a_backlog(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    before = vacuum_count(conn)
    with delivering(conn, relay_env(cli_env, ladder="0"), log, "0.2", backlog=BACKLOG):
        wait_until(lambda: vacuum_count(conn) > before, what="a VACUUM of outbox.deliveries")
        wait_until(lambda: "vacuumed outbox.deliveries" in log_events(log), what="its log line")


def test_a_relay_keeping_pace_with_a_trickle_leaves_the_table_to_autovacuum(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    before = vacuum_count(conn)
    with delivering(conn, relay_env(cli_env, ladder="0"), log, "0.1", trickle=20):
        time.sleep(0.5)  # five more chances to vacuum after the trickle's outcomes
    assert "vacuumed outbox.deliveries" not in log_events(log)
    assert vacuum_count(conn) == before


def test_vacuum_every_zero_leaves_the_table_to_autovacuum(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    before = vacuum_count(conn)
    with delivering(conn, relay_env(cli_env, ladder="0"), log, "0", backlog=BACKLOG):
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
        with delivering(conn, env, log, "0.2", backlog=BACKLOG):
            wait_until(
                lambda: any("leaving it to autovacuum" in e for e in log_events(log)),
                what="the log line saying why it does not vacuum",
            )
    finally:
        conn.execute(f"drop role {login}")
    assert "vacuumed outbox.deliveries" not in log_events(log)
    assert vacuum_count(conn) == before
