"""The relay end to end against real receivers on loopback: what every request carries, how each
kind of answer is treated, the retry ladder in real time, and how `outbox relay` fails to start."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import structlog
import support
from support import (
    Received,
    env_without_outbox,
    outbox_cmd,
    start_relay,
    stop,
    wait_until,
)

from . import (
    SEED_TYPES,
    add_endpoint,
    attempts,
    check_request,
    deliveries,
    delivery,
    drive,
    emit_one,
    event_types,
    header,
    is_enabled,
    log_records,
    only_delivery,
    receiving,
    relay_env,
    running_relay,
    set_enabled,
    start_logged_relay,
    write_seed_events,
)

Conn = psycopg.Connection[Any]
# Types raised by an UPDATE; only these carry previous_attributes.
FROM_UPDATE = frozenset(
    {
        "contact.updated",
        "company.updated",
        "deal.updated",
        "deal.stage_changed",
        "deal.closed_won",
        "deal.closed_lost",
        "post.published",
    }
)
UNREACHABLE_DB = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1


def answers(*codes: int, body: bytes = b"") -> support.Behaviour:
    """A behaviour answering with `codes` in turn, then the last one for ever."""
    sequence = itertools.chain(codes, itertools.repeat(codes[-1]))
    return lambda _: (next(sequence), body, 0.0)


def hang_once() -> support.Behaviour:
    """A behaviour that leaves the first request unanswered and answers 200 after that."""
    calls = itertools.count()

    def behave(_: Received) -> tuple[int, bytes, float] | None:
        return None if next(calls) == 0 else (200, b"ok", 0.0)

    return behave


def run_relay_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        outbox_cmd("relay", *args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _notice(line: str) -> bool:
    """The line naming the database in use: a JSON record from a relay logging JSON, else text."""
    text = json.loads(line)["event"] if line.startswith("{") else line
    return str(text).startswith("database: ")


def problem_lines(stderr: str) -> list[str]:
    """stderr without the notice naming the database in use."""
    return [line for line in stderr.splitlines() if line and not _notice(line)]


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """What the one line a refused relay printed says: a JSON record's event once its settings
    are read (they name the log format), else a plain line; no traceback, nothing on stdout."""
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    [line] = problem_lines(done.stderr)
    if line.startswith("{"):
        record = json.loads(line)
        assert record["level"] == "error"
        return str(record["event"])
    return line


# -- the ladder, in real time, through a long-lived `outbox relay` ------------------------------


def test_a_failing_endpoint_gets_every_rung_of_the_ladder_then_the_delivery_fails(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    ladder = (0, 1, 2, 3, 4)
    log = tmp_path / "relay.log"
    with receiving(default=answers(500, body=b"boom: the database is on fire")) as receiver:
        endpoint = add_endpoint(conn, receiver.url("/hook"))
        emit_one(conn, {"name": "Zoë", "amount": 1000.5})
        proc = start_logged_relay(relay_env(cli_env, ladder=",".join(map(str, ladder))), log)
        try:
            receiver.wait_count(len(ladder), timeout=60)
            wait_until(lambda: only_delivery(conn)["status"] == "failed", 20, "delivery failed")
        finally:
            code = stop(proc)
        requests = list(receiver.requests)

    assert code == 0
    assert len(requests) == len(ladder)
    for earlier, later, rung in zip(requests, requests[1:], ladder[1:], strict=False):
        assert later.at - earlier.at >= rung
    assert {r.body for r in requests} == {requests[0].body}
    assert [header(r, "X-Stover-Attempt") for r in requests] == ["1", "2", "3", "4", "5"]
    row = only_delivery(conn)
    assert {header(r, "X-Stover-Delivery-Id") for r in requests} == {str(row["id"])}
    stamps = [int(header(r, "webhook-timestamp")) for r in requests]
    assert stamps == sorted(set(stamps)), "each attempt is signed afresh"
    for request, stamp in zip(requests, stamps, strict=True):
        assert stamp <= request.at
        check_request(request, endpoint.secret)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 5, 500)
    assert row["delivered_at"] is None
    recorded = attempts(conn, row["id"])
    assert [a["attempt"] for a in recorded] == [1, 2, 3, 4, 5]
    assert {a["status_code"] for a in recorded} == {500}
    assert {a["response_body"] for a in recorded} == {"boom: the database is on fire"}
    assert endpoint.secret not in log.read_text()


# -- what every request carries -----------------------------------------------------------------


async def test_every_seed_event_type_arrives_with_both_signatures_verifying(
    conn: Conn, db_url: str
) -> None:
    with receiving() as receiver:
        endpoint = add_endpoint(conn, receiver.url("/hook"))
        write_seed_events(conn)
        assert event_types(conn) == SEED_TYPES
        expected = {row["id"]: row["event_id"] for row in deliveries(conn)}
        delivered = 0
        async with running_relay(db_url) as relay:
            # A relay's first claim assumes events as large as the payload cap allows, so it
            # takes a few batches to drain the twenty-odd seed events.
            while (tally := await relay.run_once()).claimed:
                delivered += tally.delivered
        requests = list(receiver.requests)

    assert delivered == len(expected)
    assert len(requests) == len(expected)
    got: dict[int, dict[str, Any]] = {}
    for request in requests:
        body = check_request(request, endpoint.secret)
        assert header(request, "X-Stover-Attempt") == "1"
        assert ("previous_attributes" in body) == (body["type"] in FROM_UPDATE)
        got[int(header(request, "X-Stover-Delivery-Id"))] = body
    assert {delivery_id: body["id"] for delivery_id, body in got.items()} == expected
    assert {body["type"] for body in got.values()} == SEED_TYPES
    stored = dict(conn.execute("select id, data from outbox.events").fetchall())
    assert all(body["data"] == stored[body["id"]] for body in got.values())
    for row in deliveries(conn):
        assert row["status"] == "delivered"
        assert row["delivered_at"] is not None


# -- how each kind of answer is treated -----------------------------------------------------------


REDIRECTS = (301, 302, 303, 307, 308)
CLIENT_ERRORS = (400, 401, 403, 404, 422)
SUCCESSES = (200, 201, 202, 204)


def by_endpoint(conn: Conn) -> dict[str, dict[str, Any]]:
    """Each endpoint's one delivery."""
    rows = deliveries(conn)
    found = {row["endpoint_id"]: row for row in rows}
    assert len(found) == len(rows), "one delivery per endpoint expected"
    return found


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(conn: Conn, db_url: str) -> None:
    with receiving(behaviours={f"/moved/{code}": answers(code) for code in REDIRECTS}) as receiver:
        endpoints = {}
        for code in REDIRECTS:
            target = {"Location": receiver.url(f"/landing/{code}")}
            receiver.response_headers[f"/moved/{code}"] = target
            endpoints[code] = add_endpoint(conn, receiver.url(f"/moved/{code}")).id
        emit_one(conn)
        async with running_relay(db_url, ladder=(0, 0)) as relay:
            await relay.run_once()
            await relay.run_once()
        paths = [request.path for request in receiver.requests]

    assert sorted(paths) == sorted(f"/moved/{code}" for code in REDIRECTS for _ in range(2))
    rows = by_endpoint(conn)
    for code, endpoint_id in endpoints.items():
        row = rows[endpoint_id]
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 2, code)
        assert row["last_error"].startswith("redirect")


async def test_a_client_error_is_a_failed_attempt_and_is_retried(conn: Conn, db_url: str) -> None:
    refusals = {f"/refuse/{code}": answers(code, body=b'{"error":"no"}') for code in CLIENT_ERRORS}
    with receiving(behaviours=refusals) as receiver:
        endpoints = {
            code: add_endpoint(conn, receiver.url(f"/refuse/{code}")) for code in CLIENT_ERRORS
        }
        emit_one(conn)
        async with running_relay(db_url, ladder=(0, 0)) as relay:
            first = await relay.run_once()
            second = await relay.run_once()
        got = len(receiver.requests)

    assert (first.retrying, second.failed, got) == (5, 5, 10)
    rows = by_endpoint(conn)
    for code, endpoint in endpoints.items():
        row = rows[endpoint.id]
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 2, code)
        assert [a["response_body"] for a in attempts(conn, row["id"])] == ['{"error":"no"}'] * 2
        assert is_enabled(conn, endpoint)


async def test_a_success_after_failures_delivers(conn: Conn, db_url: str) -> None:
    recovering = {f"/ok/{code}": answers(500, 404, 302, code) for code in SUCCESSES}
    with receiving(behaviours=recovering) as receiver:
        endpoints = {code: add_endpoint(conn, receiver.url(f"/ok/{code}")).id for code in SUCCESSES}
        emit_one(conn)
        async with running_relay(db_url, ladder=(0, 0, 0, 0, 0)) as relay:
            tallies = [await relay.run_once() for _ in range(5)]
        got = len(receiver.requests)

    assert [t.claimed for t in tallies] == [4, 4, 4, 4, 0]
    assert got == 16
    rows = by_endpoint(conn)
    for code, endpoint_id in endpoints.items():
        row = rows[endpoint_id]
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 4, code)
        assert row["delivered_at"] is not None
        assert row["last_error"] is None
        assert [a["status_code"] for a in attempts(conn, row["id"])] == [500, 404, 302, code]


async def test_retry_after_on_429_holds_the_next_attempt_back(conn: Conn, db_url: str) -> None:
    with receiving(
        behaviours={"/busy": answers(429, 200)},
        response_headers={"/busy": {"Retry-After": "3"}},
    ) as receiver:
        add_endpoint(conn, receiver.url("/busy"))
        emit_one(conn)
        async with running_relay(db_url, ladder=(0, 1, 1)) as relay:
            await drive(relay, lambda: only_delivery(conn)["status"] != "pending")
        requests = list(receiver.requests)

    assert len(requests) == 2
    assert requests[1].at - requests[0].at >= 3
    row = only_delivery(conn)
    assert (row["status"], row["attempts"]) == ("delivered", 2)
    assert [a["status_code"] for a in attempts(conn, row["id"])] == [429, 200]


async def test_410_gone_disables_the_endpoint_until_it_is_enabled_again(
    conn: Conn, db_url: str
) -> None:
    with receiving(default=answers(410, 200)) as receiver:
        endpoint = add_endpoint(conn, receiver.url("/gone"))
        emit_one(conn)
        async with running_relay(db_url, ladder=(0, 0, 0)) as relay:
            first = await relay.run_once()
            assert first.retrying == 1
            assert not is_enabled(conn, endpoint)
            row = only_delivery(conn)
            assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 410)
            due = conn.execute(
                "select next_attempt_at <= now() from outbox.deliveries where id = %s", [row["id"]]
            ).fetchone()
            assert due == (True,), "the retry is due at once; only the disabled endpoint holds it"
            assert (await relay.run_once()).claimed == 0
            assert await relay.store.next_due() is None
            emit_one(conn)
            assert len(deliveries(conn)) == 1, "a disabled endpoint gets no new deliveries"
            assert len(receiver.requests) == 1

            set_enabled(conn, endpoint, True)
            last = await relay.run_once()
        got = len(receiver.requests)

    assert (last.claimed, last.delivered, got) == (1, 1, 2)
    row = delivery(conn, row["id"])
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 2, 200)


def test_a_hanging_receiver_times_out_and_the_attempt_is_retried(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    with receiving(default=hang_once()) as receiver:
        add_endpoint(conn, receiver.url("/slow"))
        emit_one(conn)
        done = run_relay_cli(relay_env(cli_env, ladder="0,0", timeout="1"), "--once")
        got = len(receiver.requests)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"claimed": 2, "delivered": 1, "retrying": 1, "failed": 0}
    assert got == 2
    row = only_delivery(conn)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 2, 200)
    timed_out, answered = attempts(conn, row["id"])
    assert timed_out["error"].startswith("timeout")
    assert timed_out["status_code"] is None
    assert timed_out["duration_ms"] >= 990  # the 1 s timeout, less timer granularity
    assert (answered["status_code"], answered["error"]) == (200, None)


def test_a_disabled_endpoints_deliveries_wait_until_it_is_enabled(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    with receiving() as receiver:
        paused = add_endpoint(conn, receiver.url("/paused"))
        emit_one(conn)
        waiting = only_delivery(conn)  # fanned out while the endpoint was enabled
        set_enabled(conn, paused, False)
        proc = start_relay(relay_env(cli_env, ladder="0"))
        try:
            # A later delivery to a live endpoint is a barrier: the relay claims oldest first, so
            # once this one has been delivered it has passed the paused one over.
            live = add_endpoint(conn, receiver.url("/live"))
            emit_one(conn)
            wait_until(
                lambda: (
                    {row["status"] for row in deliveries(conn) if row["endpoint_id"] == live.id}
                    == {"delivered"}
                ),
                20,
                "the live endpoint's delivery",
            )
            assert receiver.on("/paused") == []
            held = delivery(conn, waiting["id"])
            assert (held["status"], held["attempts"]) == ("pending", 0)

            set_enabled(conn, paused, True)
            wait_until(
                lambda: delivery(conn, waiting["id"])["status"] == "delivered",
                20,
                "the paused endpoint's delivery after enabling it",
            )
        finally:
            code = stop(proc)
        got = receiver.on("/paused")

    assert code == 0
    assert len(got) == 1
    check_request(got[0], paused.secret)
    assert header(got[0], "X-Stover-Delivery-Id") == str(waiting["id"])


# -- logs ----------------------------------------------------------------------------------------


def test_attempt_log_lines_name_the_attempt_and_never_the_secret(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    with receiving(behaviours={"/down": answers(500)}) as receiver:
        up = add_endpoint(conn, receiver.url("/up"))
        down = add_endpoint(conn, receiver.url("/down"))
        event_id = emit_one(conn)
        env = {**relay_env(cli_env, ladder="0,0"), "OUTBOX_LOG_LEVEL": "debug"}
        done = run_relay_cli(env, "--once")

    assert done.returncode == 0, done.stderr
    for endpoint in (up, down):
        key = endpoint.secret.removeprefix("whsec_")
        assert key not in done.stderr
        assert key not in done.stdout
    records = [json.loads(line) for line in problem_lines(done.stderr)]
    logged = [r for r in records if r["event"] == "attempt"]
    ids = {row["endpoint_id"]: row["id"] for row in deliveries(conn)}
    assert sorted((r["endpoint_id"], r["attempt"], r["outcome"]) for r in logged) == sorted(
        [(up.id, 1, "delivered"), (down.id, 1, "retrying"), (down.id, 2, "failed")]
    )
    for record in logged:
        assert record["delivery_id"] == ids[record["endpoint_id"]]
        assert record["event_id"] == event_id
        assert isinstance(record["duration_ms"], int | float)
        assert record["duration_ms"] >= 0
    levels = {r["outcome"]: r["level"] for r in logged}
    assert levels == {"delivered": "debug", "retrying": "info", "failed": "warning"}


def test_at_info_level_successes_are_counted_in_a_summary_and_failures_get_a_line_each(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    with receiving(behaviours={"/down": answers(500)}) as receiver:
        add_endpoint(conn, receiver.url("/up"))
        add_endpoint(conn, receiver.url("/down"))
        for _ in range(3):
            emit_one(conn)
        relay = start_logged_relay(relay_env(cli_env, ladder="0"), log, "--summary-every", "0.2")
        try:
            wait_until(
                lambda: (
                    all(d["status"] != "pending" for d in deliveries(conn))
                    and len(deliveries(conn)) == 6
                ),
                what="every delivery settled",
            )
            wait_until(
                lambda: sum(r.get("delivered", 0) for r in log_records(log, "attempts")) == 3,
                what="the summaries to count the three deliveries",
            )
        finally:
            assert stop(relay) == 0

    assert [r["outcome"] for r in log_records(log, "attempt")] == ["failed"] * 3
    summaries = log_records(log, "attempts")
    assert sum(r["failed"] for r in summaries) == 3
    assert sum(r["retrying"] for r in summaries) == 0
    assert all(r["level"] == "info" and r["per_s"] > 0 for r in summaries)


async def test_a_relay_embedded_under_structlogs_generic_logger_logs_every_attempt(
    conn: Conn, db_url: str
) -> None:
    # An application's own structlog setup may use the generic BoundLogger, which cannot say
    # which levels it keeps: the relay then hands it every attempt's line to filter.
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.BoundLogger,
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        with receiving() as receiver:
            add_endpoint(conn, receiver.url("/hook"))
            event_id = emit_one(conn)
            async with running_relay(db_url) as relay:
                tally = await relay.run_once()
    finally:
        structlog.reset_defaults()

    assert tally.delivered == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    [line] = [r for r in lines if r["event"] == "attempt"]
    assert (line["event_id"], line["outcome"], line["level"]) == (event_id, "delivered", "debug")


# -- refusing to start ----------------------------------------------------------------------------


def test_relay_refuses_to_start_with_pending_migrations(empty_db_url: str) -> None:
    env = {**env_without_outbox(), "DATABASE_URL": empty_db_url, "OUTBOX_LOG_FORMAT": "json"}
    done = run_relay_cli(env)
    assert done.returncode != 0
    assert "outbox migrate" in refusal(done)


def test_relay_reports_an_unreachable_database_in_one_line() -> None:
    env = {**env_without_outbox(), "DATABASE_URL": UNREACHABLE_DB, "OUTBOX_LOG_FORMAT": "json"}
    done = run_relay_cli(env)
    assert done.returncode != 0
    assert "database" in refusal(done)


def test_relay_rejects_a_malformed_retry_ladder() -> None:
    env = {
        **env_without_outbox(),
        "DATABASE_URL": UNREACHABLE_DB,
        "OUTBOX_RETRY_LADDER": "1,,x",
    }
    done = run_relay_cli(env)
    assert done.returncode == 2
    assert "OUTBOX_RETRY_LADDER" in refusal(done)


def test_relay_rejects_an_unknown_log_level() -> None:
    env = {**env_without_outbox(), "DATABASE_URL": UNREACHABLE_DB, "OUTBOX_LOG_LEVEL": "loud"}
    done = run_relay_cli(env)
    assert done.returncode == 2
    assert "OUTBOX_LOG_LEVEL='loud'" in refusal(done)


def test_relay_rejects_a_negative_or_unreadable_vacuum_interval() -> None:
    env = {**env_without_outbox(), "DATABASE_URL": UNREACHABLE_DB}
    for value in ("-1", "soon", "inf"):
        done = run_relay_cli(env, "--vacuum-every", value)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert f"--vacuum-every: {value!r}" in done.stderr
        assert done.stdout == ""
