"""What keeps the capture triggers cheap stays in the schema (migration 0005 says what each cost).

These are structural: the cost itself is measured by `outbox bench capture`, never by a test.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]

ID_COLUMNS = [
    ("events", "id"),
    ("endpoints", "id"),
    ("deliveries", "event_id"),
    ("deliveries", "endpoint_id"),
]


def test_tables_written_by_every_capture_have_no_table_check_constraint(conn: Conn) -> None:
    # A table CHECK is parsed from its stored text and planned again by every statement that
    # writes the table; the delivery status is checked by its domain instead.
    rows = conn.execute(
        """
        select conrelid::regclass::text, conname from pg_constraint
        where contype = 'c'
          and conrelid in ('outbox.events'::regclass, 'outbox.deliveries'::regclass)
        """
    ).fetchall()
    assert rows == []
    domain = conn.execute(
        """
        select t.typname, t.typtype from pg_attribute a join pg_type t on t.oid = a.atttypid
        where a.attrelid = 'outbox.deliveries'::regclass and a.attname = 'status'
        """
    ).fetchone()
    assert domain == ("delivery_status", "d")


@pytest.mark.parametrize(("table", "column"), ID_COLUMNS)
def test_id_columns_compare_bytewise(conn: Conn, table: str, column: str) -> None:
    row = conn.execute(
        """
        select collation_name from information_schema.columns
        where table_schema = 'outbox' and table_name = %s and column_name = %s
        """,
        [table, column],
    ).fetchone()
    assert row == ("C",)


def test_capture_functions_call_no_other_plpgsql_function(conn: Conn) -> None:
    # Each plpgsql call from a trigger costs a function start-up per statement.
    rows = conn.execute(
        """
        select p.proname, callee.proname
        from pg_proc p
        join pg_language l on l.lanname = 'plpgsql'
        join pg_proc callee on callee.pronamespace = 'outbox'::regnamespace
                           and callee.prolang = l.oid
        where p.pronamespace = 'outbox'::regnamespace and p.proname like 'capture\\_%%'
          and p.prosrc ~ ('outbox\\.' || callee.proname || '\\(')
        """
    ).fetchall()
    names = conn.execute(
        "select count(*) from pg_proc where pronamespace = 'outbox'::regnamespace "
        "and proname like 'capture\\_%%'"
    ).fetchone()
    assert names == (6,)
    assert rows == []


def test_events_are_indexed_by_time_with_brin(conn: Conn) -> None:
    # Events arrive in created_at order: a BRIN summary serves replay's time ranges, and costs a
    # capture nothing per row where a B-tree entry cost ~5% of a 100-row INSERT.
    row = conn.execute(
        """
        select am.amname from pg_class i join pg_am am on am.oid = i.relam
        where i.oid = 'outbox.events_created_at_idx'::regclass
        """
    ).fetchone()
    assert row == ("brin",)
