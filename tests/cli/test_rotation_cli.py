"""`outbox endpoints rotate-secret ID [--overlap AGE] [--json]` and `outbox.rotate_secret()`: a
new secret, the replaced one kept for the overlap, the secrets printed only by the rotation."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from .test_endpoints_cli import add_endpoint, assert_one_line_error, fields, outbox

Conn = psycopg.Connection[Any]


def secrets_of(conn: Conn, endpoint_id: str) -> tuple[Any, ...]:
    """(secret, previous_secret, how long the overlap has left)."""
    row = conn.execute(
        "select secret, previous_secret, previous_secret_until - now(), previous_secret_until"
        " from outbox.endpoints where id = %s",
        [endpoint_id],
    ).fetchone()
    assert row is not None
    return tuple(row[:3])


def state(conn: Conn, endpoint_id: str) -> tuple[Any, ...]:
    row = conn.execute(
        "select secret, previous_secret, previous_secret_until, updated_at from outbox.endpoints"
        " where id = %s",
        [endpoint_id],
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_default_overlap_keeps_the_replaced_secret_for_24_hours(
    cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint_id, old = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    rotated = outbox(cli_env, "endpoints", "rotate-secret", endpoint_id, "--json")
    assert rotated.code == 0, rotated.err
    document = json.loads(rotated.out)
    assert set(document) == {"id", "secret", "overlap_until"}
    new, previous, left = secrets_of(conn, endpoint_id)
    assert document["secret"] == new != old
    assert previous == old
    assert timedelta(hours=23, minutes=59) < left <= timedelta(hours=24)
    assert "accept either" in rotated.err
    # Neither secret shows anywhere but in the rotation's own output.
    shown = outbox(cli_env, "endpoints", "show", endpoint_id)
    listed = outbox(cli_env, "endpoints", "list")
    for text in (shown.out, shown.err, listed.out, listed.err, rotated.err):
        assert old not in text
        assert new not in text
    assert "the replaced secret signs too until" in fields(shown.out)["overlap until"]


def test_a_second_rotation_keeps_the_secret_it_replaces_and_drops_the_first(
    cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint_id, first = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    assert outbox(cli_env, "endpoints", "rotate-secret", endpoint_id, "--overlap", "2h").code == 0
    second = secrets_of(conn, endpoint_id)[0]
    again = outbox(cli_env, "endpoints", "rotate-secret", endpoint_id, "--overlap", "30m")
    assert again.code == 0, again.err
    third, previous, left = secrets_of(conn, endpoint_id)
    assert fields(again.out)["secret"] == third
    assert previous == second != first
    assert timedelta(minutes=29) < left <= timedelta(minutes=30)


def test_no_overlap_replaces_the_secret_at_once(cli_env: dict[str, str], conn: Conn) -> None:
    endpoint_id, old = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    assert outbox(cli_env, "endpoints", "rotate-secret", endpoint_id, "--overlap", "2h").code == 0
    rotated = outbox(cli_env, "endpoints", "rotate-secret", endpoint_id, "--overlap", "0")
    assert rotated.code == 0, rotated.err
    new, previous, left = secrets_of(conn, endpoint_id)
    assert fields(rotated.out)["secret"] == new != old
    assert (previous, left) == (None, None)
    assert "no longer signs anything" in rotated.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ep_does_not_exist"], "no endpoint with id"),
        (["{id}", "--overlap", "abc"], "--overlap 'abc' is not a duration"),
        (["{id}", "--overlap=-1h"], "--overlap '-1h' is not a duration"),
        (["{id}", "--overlap", ""], "--overlap '' is not a duration"),
        (["{id}", "--overlap", "200000d"], "longer than 100 years"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cli_env: dict[str, str], conn: Conn, args: list[str], needle: str
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    before = state(conn, endpoint_id)
    run = outbox(cli_env, "endpoints", "rotate-secret", *(a.format(id=endpoint_id) for a in args))
    assert_one_line_error(run, needle)
    assert state(conn, endpoint_id) == before


def test_the_sql_function_does_what_the_command_does(conn: Conn) -> None:
    endpoint_id, old = add_endpoint(conn, "https://hooks.example.com/in", ["*"])
    row = conn.execute(
        "select secret, overlap_until - now() from outbox.rotate_secret(%s, '90 minutes')",
        [endpoint_id],
    ).fetchone()
    assert row is not None
    new, left = row
    assert left == timedelta(minutes=90)
    assert secrets_of(conn, endpoint_id)[:2] == (new, old)
    row = conn.execute("select * from outbox.rotate_secret(%s, '0')", [endpoint_id]).fetchone()
    assert row is not None
    assert row[1] is None
    assert secrets_of(conn, endpoint_id) == (row[0], None, None)
    # The default overlap is 24 hours.
    conn.execute("select outbox.rotate_secret(%s)", [endpoint_id])
    assert secrets_of(conn, endpoint_id)[2] > timedelta(hours=23)
    for bad, message in (
        (["ep_nope", "1 hour"], "no endpoint with id 'ep_nope'"),
        ([endpoint_id, "-1 hour"], "is not a length of time from zero up"),
        ([endpoint_id, None], "is not a length of time from zero up"),
    ):
        before = state(conn, endpoint_id)
        with pytest.raises(psycopg.Error, match=message):
            conn.execute("select outbox.rotate_secret(%s, %s::interval)", bad)
        assert state(conn, endpoint_id) == before
    # The replaced secret must be a well-formed one; the pair is set together or not at all.
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "update outbox.endpoints set previous_secret = 'nope', previous_secret_until = now()"
            " where id = %s",
            [endpoint_id],
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "update outbox.endpoints set previous_secret_until = null where id = %s",
            [endpoint_id],
        )
