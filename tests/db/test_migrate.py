"""The migrator applies each file once, even with eight of it racing, refuses edited or misnamed
files, and its command reports pending work and failures in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox.db import migrate
from outbox.errors import OutboxError
from outbox.sqlfiles import sql_dir

FILES = sorted(path.name for path in (sql_dir() / "migrations").glob("*.sql"))
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"


def outbox_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(DATABASE_URL=url, OUTBOX_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    return env


def run_outbox(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox", *args],
        env={**outbox_env(url), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select version from outbox.schema_migrations order by version")
        return [version for (version,) in rows.fetchall()]


def schema_of(url: str) -> dict[str, list[Any]]:
    """What the migrations build, read from the catalog: relations, columns, constraints,
    functions, triggers and the registered event types."""
    queries = {
        "relations": "select c.oid::regclass::text, c.relkind from pg_class c"
        " join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname in ('outbox', 'stover') order by 1",
        "columns": "select attrelid::regclass::text, attname, format_type(atttypid, atttypmod)"
        " from pg_attribute a join pg_class c on c.oid = a.attrelid"
        " join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname in ('outbox', 'stover') and attnum > 0 and not attisdropped"
        " order by 1, 2",
        "constraints": "select conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " from pg_constraint where connamespace in"
        " (select oid from pg_namespace where nspname in ('outbox', 'stover')) order by 1, 2",
        "functions": "select p.oid::regprocedure::text from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname in ('outbox', 'stover') order by 1",
        "triggers": "select tgrelid::regclass::text, tgname from pg_trigger t"
        " join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname in ('outbox', 'stover') and not tgisinternal order by 1, 2",
        "event_types": "select name from outbox.event_types order by 1",
    }
    with psycopg.connect(url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in queries.items()}


def test_second_run_applies_nothing(empty_db_url: str) -> None:
    first = migrate.migrate(empty_db_url)
    assert [m.path.name for m in first] == FILES
    assert migrate.migrate(empty_db_url) == []
    assert migrate.pending(empty_db_url) == []
    assert applied_versions(empty_db_url) == [m.version for m in first]


def test_concurrent_migrators_apply_each_file_exactly_once(empty_db_url: str, db_url: str) -> None:
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "outbox", "migrate"],
            env=outbox_env(empty_db_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [(racer.communicate(timeout=60), racer.returncode) for racer in racers]
    assert [code for _, code in results] == [0] * 8, [err for (_, err), _ in results]
    applied_lines = [
        line for (out, _), _ in results for line in out.splitlines() if line.startswith("applied ")
    ]
    assert sorted(applied_lines) == [f"applied {name}" for name in FILES]
    assert applied_versions(empty_db_url) == [int(name[:4]) for name in FILES]
    # The raced database matches one built by a single migrator (the suite's template).
    assert schema_of(empty_db_url) == schema_of(db_url)


def test_edited_landed_migration_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(sql_dir() / "migrations", folder)
    migrate.migrate(empty_db_url, folder=folder)
    edited = folder / FILES[-1]
    edited.write_text(edited.read_text() + "\n-- a later thought\n")
    with pytest.raises(OutboxError, match="edited") as refused:
        migrate.migrate(empty_db_url, folder=folder)
    assert FILES[-1] in str(refused.value)
    assert "\n" not in str(refused.value)
    with pytest.raises(OutboxError, match="edited"):
        migrate.pending(empty_db_url, folder=folder)


def test_command_refuses_a_database_whose_migration_differs_from_the_file(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("update outbox.schema_migrations set checksum = 'f00d' where version = 2")
    result = run_outbox(db_url, "migrate")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "edited" in errors[0]
    assert FILES[1] in errors[0]


def test_migration_unknown_to_this_version_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(sql_dir() / "migrations", folder)
    migrate.migrate(empty_db_url, folder=folder)
    (folder / FILES[-1]).unlink()
    with pytest.raises(OutboxError, match="upgrade stover-outbox"):
        migrate.migrate(empty_db_url, folder=folder)


MISNAMED = ["4_later.sql", "0004-later.sql", "0004_Later.sql", "00004_later.sql", "later.sql"]


def test_misnamed_migration_file_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    for n, name in enumerate(MISNAMED):
        folder = tmp_path / f"migrations{n}"
        shutil.copytree(sql_dir() / "migrations", folder)
        (folder / name).write_text("select 1;\n")
        with pytest.raises(OutboxError, match=r"NNNN_snake_name\.sql") as refused:
            migrate.migrate(empty_db_url, folder=folder)
        assert name in str(refused.value)
    # Refused before touching the database.
    with psycopg.connect(empty_db_url) as conn:
        row = conn.execute("select to_regnamespace('outbox') is null").fetchone()
    assert row == (True,)


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(sql_dir() / "migrations", folder)
    (folder / f"{FILES[0][:4]}_duplicate.sql").write_text("select 1;\n")
    with pytest.raises(OutboxError, match="share a version"):
        migrate.available(folder)


def test_check_lists_pending_files_then_reports_up_to_date(empty_db_url: str) -> None:
    before = run_outbox(empty_db_url, "migrate", "--check")
    assert before.returncode == 1, before.stderr
    assert before.stdout.splitlines() == [
        *(f"pending {name}" for name in FILES),
        "pending pgqueuer's tables (outbox.pgqueuer_log, outbox.pgqueuer_schedules)",
    ]
    assert applied_versions_or_none(empty_db_url) is None

    done = run_outbox(empty_db_url, "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"applied {name}" for name in FILES]

    after = run_outbox(empty_db_url, "migrate", "--check")
    assert after.returncode == 0, after.stderr
    assert after.stdout == ""


def test_unreachable_database_is_one_line_error() -> None:
    result = run_outbox(UNREACHABLE, "migrate")
    assert result.returncode not in (0, None)
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "127.0.0.1:1" in errors[0]
    assert result.stdout == ""
    # Apart from the error, stderr holds at most the notice naming the database.
    others = [line for line in result.stderr.splitlines() if line not in errors]
    assert all(line.startswith("database: ") for line in others), others


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("outbox: error:")]


def applied_versions_or_none(url: str) -> list[int] | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("select to_regclass('outbox.schema_migrations') is null").fetchone()
    if row == (True,):
        return None
    return applied_versions(url)
