"""Forward-only migrations from sql/migrations, tracked with checksums under an advisory lock, then
pgqueuer's tables for the relays' scheduled maintenance."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from outbox.db.connect import connect
from outbox.errors import OutboxError
from outbox.sqlfiles import sql_dir

# One fixed key for every migrator on a database: concurrent runs queue behind it.
LOCK_KEY = 0x0B0C_5707_E12A
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_TRACKING = b"""
create schema if not exists outbox;
create table if not exists outbox.schema_migrations (
    version    integer primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
);
"""


@dataclass(frozen=True)
class Migration:
    """One file of sql/migrations."""

    version: int
    name: str
    path: Path

    @property
    def sql(self) -> bytes:
        return self.path.read_bytes()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql).hexdigest()


def available(folder: Path | None = None) -> list[Migration]:
    """The migration files in version order; a misnamed file is an error, not a skip."""
    folder = folder or sql_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise OutboxError(f"migration file {path.name} is not named NNNN_snake_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise OutboxError("two migration files share a version number")
    return found


def _applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    exists = conn.execute("select to_regclass('outbox.schema_migrations') is not null").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("select version, name, checksum from outbox.schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def _verify(applied: dict[int, tuple[str, str]], files: list[Migration]) -> list[Migration]:
    """The files still to apply; refuses edited files and databases newer than this code."""
    by_version = {m.version: m for m in files}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise OutboxError(
                f"the database has migration {version:04d}_{name} which this version of "
                "stover-outbox does not know; upgrade stover-outbox"
            )
        if migration.checksum != checksum:
            raise OutboxError(
                f"migration {migration.path.name} was edited after it was applied "
                f"(checksum {checksum[:12]} in the database, {migration.checksum[:12]} on disk); "
                "landed migrations are never edited: add a new file instead"
            )
    return [m for m in files if m.version not in applied]


def pending(url: str, folder: Path | None = None) -> list[Migration]:
    """Migrations not yet applied to the database at `url` (raises if the history diverged)."""
    files = available(folder)
    with connect(url) as conn:
        return _verify(_applied(conn), files)


def scheduler_missing(url: str) -> list[str]:
    """The tables of the relays' scheduler that `outbox migrate` has yet to create."""
    from outbox.db import scheduler  # noqa: PLC0415 - see migrate()

    with connect(url) as conn:
        return scheduler.missing_tables(conn)


def migrate(url: str, folder: Path | None = None) -> list[Migration]:
    """Apply every pending migration, each in its own transaction, then create or upgrade
    pgqueuer's tables (which pgqueuer versions itself, so they are not a numbered file); returns
    the migrations applied."""
    # Imported here: pgqueuer takes a quarter of a second to load, and pending(), which every
    # relay calls at start, does not need it.
    from outbox.db import scheduler  # noqa: PLC0415

    files = available(folder)
    done: list[Migration] = []
    with connect(url) as conn:
        conn.execute("select pg_advisory_lock(%s)", [LOCK_KEY])
        try:
            conn.execute(_TRACKING)
            for migration in _verify(_applied(conn), files):
                with conn.transaction():
                    # The tracking row goes first: a concurrent migrator that slipped past the
                    # lock would fail on the primary key before running the file twice.
                    conn.execute(
                        "insert into outbox.schema_migrations (version, name, checksum) "
                        "values (%s, %s, %s)",
                        [migration.version, migration.name, migration.checksum],
                    )
                    try:
                        conn.execute(migration.sql)
                    except psycopg.Error as exc:
                        raise OutboxError(
                            f"migration {migration.path.name} failed: "
                            f"{str(exc).strip().splitlines()[0]}"
                        ) from None
                done.append(migration)
            try:
                scheduler.install(conn)
            except psycopg.Error as exc:
                raise OutboxError(
                    f"installing pgqueuer's tables failed: {str(exc).strip().splitlines()[0]}"
                ) from None
        finally:
            conn.execute("select pg_advisory_unlock(%s)", [LOCK_KEY])
    return done
