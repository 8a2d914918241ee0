"""What an event's data holds does not depend on the writer's session settings: the same row
written under odd TimeZone, IntervalStyle, bytea_output, extra_float_digits and DateStyle is
captured exactly as under the defaults."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]
ODD = {
    "TimeZone": "Asia/Kolkata",
    "IntervalStyle": "iso_8601",
    "bytea_output": "escape",
    "extra_float_digits": "0",
    "DateStyle": "German, DMY",
}
ROW = (
    "insert into public.odd (id, i, b, f, d, t) values (%s, '1 day 02:00:03.5', '\\x00ff10',"
    " 0.1::float8 + 0.2::float8, '2024-01-15', '2024-01-15 10:30:00+00')"
)


@pytest.fixture
def odd_table(conn: Conn) -> None:
    conn.execute(
        "create table public.odd (id int primary key, i interval, b bytea, f float8, d date,"
        " t timestamptz)"
    )
    conn.execute("select outbox.attach('public.odd', 'odd', array['created', 'updated'])")


@pytest.mark.usefixtures("odd_table")
def test_odd_session_settings_change_nothing_in_the_data(conn: Conn, db_url: str) -> None:
    conn.execute(ROW, [1])
    with psycopg.connect(db_url, autocommit=True) as odd:
        for name, value in ODD.items():
            odd.execute("select set_config(%s, %s, false)", [name, value])
        odd.execute(ROW, [2])
        odd.execute("update public.odd set f = f * 3 where id = 2")
        # The writer's own settings are as it left them.
        for name, value in ODD.items():
            row = odd.execute("select current_setting(%s)", [name]).fetchone()
            assert row is not None
            assert row[0] == value or name == "DateStyle"
    rows = conn.execute(
        "select data - 'id', previous_attributes from outbox.events order by id"
    ).fetchall()
    assert rows[0][0] == rows[1][0]
    assert rows[0][0]["f"] == 0.30000000000000004
    assert rows[0][0]["i"] == "1 day 02:00:03.5"
    assert rows[0][0]["b"] == "\\x00ff10"
    assert rows[2][1] == {"f": 0.30000000000000004}


def test_ranges_are_written_in_iso_whatever_the_writers_datestyle(conn: Conn, db_url: str) -> None:
    conn.execute("create table public.stays (id int primary key, nights daterange, at tstzrange)")
    conn.execute("select outbox.attach('public.stays', 'stay', array['created'])")
    row = (
        "insert into public.stays values (%s, '[2024-01-15,2024-02-01)',"
        " '[2024-01-15 10:00+00,2024-01-16 10:00+00)')"
    )
    with psycopg.connect(db_url, autocommit=True) as writer:
        for number, style in enumerate(["ISO, MDY", "German", "SQL, DMY", "Postgres, YMD"]):
            writer.execute("select set_config('DateStyle', %s, false)", [style])
            writer.execute(row, [number])
        assert writer.execute("show DateStyle").fetchone() == ("Postgres, YMD",)
    rows = conn.execute("select data - 'id' from outbox.events order by id").fetchall()
    assert (
        rows
        == [
            (
                {
                    "nights": "[2024-01-15,2024-02-01)",
                    "at": '["2024-01-15 10:00:00+00","2024-01-16 10:00:00+00")',
                },
            )
        ]
        * 4
    )
