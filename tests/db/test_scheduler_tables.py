"""`outbox migrate` creates pgqueuer's tables for the relays' scheduler in schema outbox, with
pgqueuer's own statements: beside an application's pgqueuer, whatever PGQUEUER_* says, again
without change, and with what outbox_relay needs to schedule and nothing more."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pgqueuer.adapters.persistence import schema_ddl
from pgqueuer.domain.settings import DBSettings

from outbox.db import migrate, scheduler

from .conftest import connect_as
from .test_migrate import run_outbox

Conn = psycopg.Connection[Any]

PGQUEUER_TABLES = ["pgqueuer", "pgqueuer_log", "pgqueuer_schedules", "pgqueuer_statistics"]


def tables_in(conn: Conn, schema: str) -> list[str]:
    rows = conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relkind = 'r' and c.relname like 'pgqueuer%%'"
        " order by 1",
        [schema],
    ).fetchall()
    return [name for (name,) in rows]


def catalog(conn: Conn) -> dict[str, list[Any]]:
    """pgqueuer's objects in schema outbox as the catalog describes them."""
    queries = {
        "columns": "select attrelid::regclass::text, attname, format_type(atttypid, atttypmod),"
        " pg_get_expr(d.adbin, d.adrelid) from pg_attribute a"
        " join pg_class c on c.oid = a.attrelid"
        " left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum"
        " where c.relnamespace = 'outbox'::regnamespace and c.relname like 'pgqueuer%'"
        " and attnum > 0 and not attisdropped order by 1, 2",
        "indexes": "select indexdef from pg_indexes where schemaname = 'outbox'"
        " and tablename like 'pgqueuer%' order by 1",
        "triggers": "select tgrelid::regclass::text, tgname from pg_trigger"
        " where tgrelid = 'outbox.pgqueuer'::regclass and not tgisinternal",
        "enum": "select enumlabel from pg_enum"
        " where enumtypid = 'outbox.pgqueuer_status'::regtype order by enumsortorder",
        "persistence": "select relname, relpersistence from pg_class"
        " where relnamespace = 'outbox'::regnamespace and relname like 'pgqueuer%'"
        " and relkind = 'r' order by 1",
    }
    return {name: conn.execute(query).fetchall() for name, query in queries.items()}


def test_migrate_puts_pgqueuers_tables_in_schema_outbox_beside_an_applications_own(
    empty_db_url: str,
) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        # The application's pgqueuer, installed the way pgqueuer installs by default: in public.
        conn.execute(schema_ddl.render_install(DBSettings(db_schema="public")).encode())
        conn.execute("insert into public.pgqueuer_schedules (expression, entrypoint)"
                     " values ('* * * * *', 'app.job')")  # fmt: skip

        migrate.migrate(empty_db_url)

        assert tables_in(conn, "outbox") == PGQUEUER_TABLES
        assert tables_in(conn, "public") == PGQUEUER_TABLES
        app = conn.execute("select entrypoint from public.pgqueuer_schedules").fetchall()
        assert app == [("app.job",)]
        ours = conn.execute("select count(*) from outbox.pgqueuer_schedules").fetchone()
        assert ours == (0,)


def test_migrating_again_changes_nothing_and_keeps_the_schedules(db_url: str, conn: Conn) -> None:
    conn.execute(
        "insert into outbox.pgqueuer_schedules (expression, entrypoint, next_run)"
        " values ('15 3 * * *', 'outbox.retention', '2030-01-01T03:15:00Z')"
    )
    before = catalog(conn)
    assert migrate.migrate(db_url) == []
    assert catalog(conn) == before
    row = conn.execute("select entrypoint, next_run from outbox.pgqueuer_schedules").fetchone()
    assert row is not None
    assert row[0] == "outbox.retention"
    assert row[1].year == 2030


def test_pgqueuers_own_variables_do_not_move_or_rename_the_tables(empty_db_url: str) -> None:
    # What an application running its own pgqueuer might have set for its own tables.
    done = run_outbox(
        empty_db_url,
        "migrate",
        env={
            "PGQUEUER_SCHEMA": "public",
            "PGQUEUER_PREFIX": "app_",
            "QUEUE_TABLE": "jobs",
            "PGQUEUER_SCHEDULES_TABLE": "app_schedules",
            "PGQUEUER_DURABILITY": "volatile",
        },
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(empty_db_url) as conn:
        assert tables_in(conn, "outbox") == PGQUEUER_TABLES
        assert tables_in(conn, "public") == []
        # Every table logged: a crash loses no schedule.
        assert {kind for _, kind in catalog(conn)["persistence"]} == {"p"}


def test_an_installation_migrated_before_them_gets_them_from_migrate(
    db_url: str, conn: Conn
) -> None:
    conn.execute(schema_ddl.render_uninstall(scheduler.settings()).encode())

    check = run_outbox(db_url, "migrate", "--check")
    assert check.returncode == 1
    assert check.stdout.splitlines() == [
        "pending pgqueuer's tables (outbox.pgqueuer_log, outbox.pgqueuer_schedules)"
    ]
    assert "pgqueuer's tables pending; run `outbox migrate`" in check.stderr

    done = run_outbox(db_url, "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # no numbered migration was pending
    assert "pgqueuer" in done.stderr
    assert tables_in(conn, "outbox") == PGQUEUER_TABLES
    assert run_outbox(db_url, "migrate", "--check").returncode == 0


def test_outbox_relay_may_keep_schedules_and_nothing_else_of_pgqueuer(
    db_url: str, conn: Conn, login: Any
) -> None:
    sidecar = login("outbox_relay")
    with connect_as(db_url, sidecar) as relay:
        relay.execute(
            "insert into outbox.pgqueuer_schedules (expression, entrypoint)"
            " values ('15 3 * * *', 'outbox.retention')"
        )
        relay.execute("update outbox.pgqueuer_schedules set status = 'picked'")
        relay.execute("select * from outbox.pgqueuer_log")
        for statement in (
            "delete from outbox.pgqueuer_schedules",
            "select * from outbox.pgqueuer",
            "insert into outbox.pgqueuer_log (job_id, status, entrypoint, priority)"
            " values (1, 'queued', 'x', 0)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                relay.execute(statement)
