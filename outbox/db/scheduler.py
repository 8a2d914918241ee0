"""pgqueuer's tables in schema outbox: created by `outbox migrate` with pgqueuer's own statements,
and the connection and queries the relays' maintenance scheduler runs on."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from typing import Any

import psycopg
from pgqueuer import PsycopgDriver, Queries
from pgqueuer.adapters.persistence import qb, schema_ddl
from pgqueuer.domain.settings import DBSettings, Durability
from pgqueuer.domain.types import Channel
from psycopg.conninfo import make_conninfo

from outbox.db.connect import connect as connect_sync
from outbox.db.connect import with_timeout
from outbox.sqlfiles import queries

PGQUEUER_VERSION = version("pgqueuer")
AsyncConnection = psycopg.AsyncConnection[Any]
Q = queries("scheduler")
SCHEMA = "outbox"
# What the scheduler reads: it checks both are there before it starts.
TABLES = (f"{SCHEMA}.pgqueuer_log", f"{SCHEMA}.pgqueuer_schedules")


@functools.cache
def settings() -> DBSettings:
    """pgqueuer's object names, every one given: its settings otherwise come from PGQUEUER_* and
    bare QUEUE_TABLE-style variables, which an application running its own pgqueuer sets for its
    own tables. In schema outbox, like every object of the project, so they never meet an
    application's pgqueuer tables in public; the NOTIFY channel (database-wide) is ours too."""
    return DBSettings(
        prefix="",
        db_schema=SCHEMA,
        channel=Channel("outbox_pgqueuer"),
        function="fn_pgqueuer_changed",
        statistics_table="pgqueuer_statistics",
        queue_status_type="pgqueuer_status",
        queue_table="pgqueuer",
        queue_table_log="pgqueuer_log",
        trigger="tg_pgqueuer_changed",
        schedules_table="pgqueuer_schedules",
        durability=Durability.durable,
        widen_id=True,
    )


def install(conn: psycopg.Connection[Any]) -> None:
    """Create pgqueuer's objects in schema outbox, or bring them up to the installed pgqueuer's
    version, and grant outbox_relay what the scheduler needs.

    The statements are `pgq sql upgrade`'s: each behind IF NOT EXISTS or a guard, so re-running
    them changes nothing, and on an empty schema they build what `pgq install` builds. One per
    round trip on an autocommit connection, as pgqueuer runs them: a label added to its enum
    cannot be used in the transaction that added it. The caller serialises migrators."""
    for statement in schema_ddl.render_converge(settings()):
        # pgqueuer renders these from the names above, which its settings check are plain
        # identifiers; nothing in them comes from input.
        conn.execute(statement.encode())
    conn.execute(Q["grant_relay"])


def missing_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The scheduler's tables not in the database (all of them before `outbox migrate` ran)."""
    rows = conn.execute(Q["missing_tables"], {"tables": list(TABLES)}).fetchall()
    return [str(name) for (name,) in rows]


async def connect(url: str) -> AsyncConnection:
    """The scheduler's own connection: autocommit, which pgqueuer's psycopg driver requires, so
    each of its statements commits at once and holds no lock past itself."""
    return await psycopg.AsyncConnection.connect(
        with_timeout(url), autocommit=True, application_name="outbox relay maintenance"
    )


@contextlib.contextmanager
def job_connection(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A job run's own connection, named for pg_stat_activity."""
    with connect_sync(make_conninfo(url, application_name="outbox relay maintenance job")) as conn:
        yield conn


def scheduler_queries(conn: AsyncConnection) -> Queries:
    """pgqueuer's queries over `conn`, naming the tables in schema outbox."""
    names = settings()
    return Queries(
        PsycopgDriver(conn),
        qbe=qb.QueryBuilderEnvironment(names),
        qbq=qb.QueryQueueBuilder(names),
        qbs=qb.QuerySchedulerBuilder(names),
    )


async def unusable(conn: AsyncConnection) -> str | None:
    """Why the scheduler cannot run here as this role, or None when it can."""
    rows = await (await conn.execute(Q["missing_tables"], {"tables": list(TABLES)})).fetchall()
    if rows:
        missing = ", ".join(str(name) for (name,) in rows)
        return (
            f"{missing} missing (the database was migrated by an older version); "
            "run `outbox migrate`"
        )
    row = await (await conn.execute(Q["may_schedule"])).fetchone()
    if not row or not row[0]:
        user = (await (await conn.execute("select current_user")).fetchone() or ("?",))[0]
        return (
            f"role {user} may not use outbox.pgqueuer_schedules; run `outbox migrate`, which "
            "grants outbox_relay what the scheduler needs"
        )
    return None


async def lacking(conn: AsyncConnection, needs: Sequence[tuple[str, str]]) -> list[str]:
    """Which of the (table, privilege) pairs in `needs` this role does not hold."""
    if not needs:
        return []
    params = {"relations": [t for t, _ in needs], "privileges": [p for _, p in needs]}
    rows = await (await conn.execute(Q["lacking_privileges"], params)).fetchall()
    return [str(text) for (text,) in rows]
