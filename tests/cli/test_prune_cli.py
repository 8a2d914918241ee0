"""`outbox prune` as a real process: what it removes, what it keeps, and its errors."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from outbox.ages import parse_age
from outbox.errors import ConfigError

from .test_deliveries_cli import delivery_of, emit, set_state
from .test_endpoints_cli import Conn, add_endpoint, assert_one_line_error, outbox

OLD = timedelta(days=40)


def add_attempt(conn: Conn, delivery_id: int, attempt: int, status_code: int) -> None:
    conn.execute(
        "insert into outbox.attempts (delivery_id, attempt, started_at, duration_ms, status_code)"
        " values (%s, %s, now() - interval '40 days', 12.5, %s)",
        [delivery_id, attempt, status_code],
    )


def events(conn: Conn) -> set[str]:
    return {row[0] for row in conn.execute("select id from outbox.events").fetchall()}


def deliveries_of(conn: Conn, event_id: str) -> list[str]:
    rows = conn.execute(
        "select status from outbox.deliveries where event_id = %s order by id", [event_id]
    ).fetchall()
    return [row[0] for row in rows]


def attempts_count(conn: Conn) -> int:
    row = conn.execute("select count(*) from outbox.attempts").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def history(conn: Conn) -> dict[str, str]:
    """Old events delivered, failed, and still retrying on one of two endpoints; a new one."""
    first, _ = add_endpoint(conn, "https://a.example.com/in", ["*"])
    second, _ = add_endpoint(conn, "https://b.example.com/in", ["contact.*"])
    made = {
        "delivered": emit(conn, "deal.created", OLD),
        "failed": emit(conn, "deal.updated", OLD),
        "retrying": emit(conn, "contact.created", OLD),
        "new": emit(conn, "deal.created"),
    }
    delivered = delivery_of(conn, made["delivered"], first)
    set_state(conn, delivered, "delivered", 2)
    add_attempt(conn, delivered, 1, 500)
    add_attempt(conn, delivered, 2, 200)
    failed = delivery_of(conn, made["failed"], first)
    set_state(conn, failed, "failed", 5)
    add_attempt(conn, failed, 1, 503)
    # Delivered to one endpoint, still pending for the other: the whole event stays.
    set_state(conn, delivery_of(conn, made["retrying"], first), "delivered", 1)
    add_attempt(conn, delivery_of(conn, made["retrying"], first), 1, 200)
    set_state(conn, delivery_of(conn, made["retrying"], second), "pending", 3)
    set_state(conn, delivery_of(conn, made["new"], first), "delivered", 1)
    add_attempt(conn, delivery_of(conn, made["new"], first), 1, 200)
    return made


def test_prune_removes_old_finished_events_with_deliveries_and_attempts(
    cli_env: dict[str, str], conn: Conn, history: dict[str, str]
) -> None:
    run = outbox(cli_env, "prune", "--older-than", "30d", "--json")

    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert (report["events"], report["deliveries"], report["kept"]) == (2, 2, 1)
    assert report["dry_run"] is False
    assert events(conn) == {history["retrying"], history["new"]}
    assert deliveries_of(conn, history["delivered"]) == []
    assert deliveries_of(conn, history["failed"]) == []
    assert deliveries_of(conn, history["retrying"]) == ["delivered", "pending"]
    assert deliveries_of(conn, history["new"]) == ["delivered"]
    # The three attempts of the pruned deliveries went with them; two remain.
    assert attempts_count(conn) == 2

    again = outbox(cli_env, "prune", "--older-than", "30d")
    assert again.code == 0, again.err
    assert again.out.startswith("removed 0 events created before ")
    assert "kept 1 with a delivery still pending" in again.out


def test_dry_run_counts_the_same_and_removes_nothing(
    cli_env: dict[str, str], conn: Conn, history: dict[str, str]
) -> None:
    run = outbox(cli_env, "prune", "--older-than", "30d", "--dry-run")

    assert run.code == 0, run.err
    assert run.out.startswith("would remove 2 events created before ")
    assert "and 2 deliveries with their attempts; kept 1 with a delivery still pending" in run.out
    assert events(conn) == set(history.values())
    assert attempts_count(conn) == 5


def test_an_age_longer_than_the_history_removes_nothing(
    cli_env: dict[str, str], conn: Conn, history: dict[str, str]
) -> None:
    run = outbox(cli_env, "prune", "--older-than", "60d", "--json")

    assert run.code == 0, run.err
    assert json.loads(run.out)["events"] == 0
    assert events(conn) == set(history.values())


def test_batches_walk_past_events_kept_for_pending_deliveries(
    cli_env: dict[str, str], conn: Conn
) -> None:
    """More kept events than a batch holds, then finished ones: a walk that picked the same
    oldest events again, or stopped at a batch with nothing removed, would miss the last."""
    endpoint, _ = add_endpoint(conn, "https://a.example.com/in", ["*"])
    retrying = [emit(conn, "deal.created", OLD) for _ in range(5)]
    finished = [emit(conn, "deal.updated", OLD) for _ in range(4)]
    for event_id in finished:
        set_state(conn, delivery_of(conn, event_id, endpoint), "delivered", 1)
    unsubscribed = emit(conn, "contact.created", OLD)  # no endpoint cared: nothing to keep
    conn.execute("delete from outbox.deliveries where event_id = %s", [unsubscribed])
    recent = emit(conn, "deal.created")

    run = outbox(cli_env, "prune", "--older-than", "1d", "--batch", "2", "--json")

    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert (report["events"], report["deliveries"], report["kept"]) == (5, 4, 5)
    assert events(conn) == {*retrying, recent}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--older-than", "0d"], "must be longer than zero"),
        (["--older-than", "thirty days"], "is not a duration"),
        (["--older-than", "30"], "is not a duration"),
        (["--older-than", "200000w"], "longer than 100 years"),
    ],
)
def test_bad_input_is_one_line_and_removes_nothing(
    cli_env: dict[str, str], conn: Conn, history: dict[str, str], args: list[str], needle: str
) -> None:
    run = outbox(cli_env, "prune", *args)

    assert_one_line_error(run, needle)
    assert events(conn) == set(history.values())


def test_bad_batch_size_is_a_usage_error(cli_env: dict[str, str]) -> None:
    run = outbox(cli_env, "prune", "--older-than", "30d", "--batch", "0")

    assert run.code == 2
    assert "--batch: '0' is not a number from 1 to 10000" in run.err
    assert "Traceback" not in run.err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("90m", 5400),
        ("12h", 43_200),
        ("30d", 2_592_000),
        ("1d12h", 129_600),
        ("2W", 1_209_600),
    ],
)
def test_ages(text: str, seconds: int) -> None:
    assert parse_age(text, "--older-than") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "d", "1.5d", "-1d", "1d 2h", "1y"])
def test_not_ages(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_age(text, "--older-than")
