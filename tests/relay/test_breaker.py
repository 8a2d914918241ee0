"""An endpoint's circuit breaker end to end, with two real relays and receivers on loopback: a
receiver that fails every attempt gets one probe at a time, spaced by the rule, while a healthy
endpoint beside it gets everything at once; the first success closes the breaker, the held
deliveries go on from the rung they were on, and an operator's endpoint is told."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg.rows import dict_row
from support import Received, env_without_outbox, outbox_cmd, stop, wait_until

from outbox.db.store import Store

from . import (
    Endpoint,
    Receiver,
    add_endpoint,
    check_request,
    emit_one,
    header,
    receiving,
    relay_env,
    start_logged_relay,
)
from .test_delivery import UNREACHABLE_DB, refusal, run_relay_cli

Conn = psycopg.Connection[Any]
AFTER = 3  # OUTBOX_BREAKER_AFTER
FIRST, LONGEST = 0.3, 1.2  # OUTBOX_BREAKER_PROBE_INTERVAL
RUNG = 1.0  # every rung after the first: longer than any gap between two relays recording
LADDER = [0.0] + [RUNG] * 11
FAILING_ANSWER_S = 0.2  # how long the failing receiver takes to say 500


@dataclass
class Counting(Receiver):
    """Also keeps, for each request, how many requests of its path were being answered when it
    arrived, itself included."""

    arrivals: list[tuple[Received, int]] = field(default_factory=list)
    _answering: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # aiohttp keeps it for the handler's own read
        with self._lock:
            self._answering[request.path] += 1
            got = Received(request.path, dict(request.headers), body, time.time())
            self.arrivals.append((got, self._answering[request.path]))
        try:
            return await super()._handle(request)
        finally:
            with self._lock:
                self._answering[request.path] -= 1


def breaker(conn: Conn, endpoint_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "select enabled, consecutive_failures, failing_since, breaker_opened_at, probe_at,"
            " probes from outbox.endpoints where id = %s",
            [endpoint_id],
        ).fetchone()
    assert row is not None
    return row


def statuses(conn: Conn, endpoint_id: str) -> dict[str, int]:
    rows = conn.execute(
        "select status, count(*) from outbox.deliveries where endpoint_id = %s group by status",
        [endpoint_id],
    ).fetchall()
    return {status: int(n) for status, n in rows}


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_an_open_breaker_sends_one_probe_at_a_time_and_the_first_success_closes_it(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    recovered = threading.Event()

    def failing(_: Received) -> tuple[int, bytes, float]:
        return (200, b"ok", 0.0) if recovered.is_set() else (500, b"down", FAILING_ANSWER_S)

    env = {
        **relay_env(cli_env, ladder=",".join(map(str, LADDER))),
        "OUTBOX_BREAKER_AFTER": str(AFTER),
        "OUTBOX_BREAKER_PROBE_INTERVAL": f"{FIRST},{LONGEST}",
    }
    with receiving(Counting, behaviours={"/failing": failing}) as receiver:
        assert isinstance(receiver, Counting)
        # A query string (where tokens live) that operational events must not show.
        bad = add_endpoint(
            conn, receiver.url("/failing?token=s3cret"), event_types=["*", "outbox.*"]
        )
        good = add_endpoint(conn, receiver.url("/healthy"))
        add_endpoint(conn, receiver.url("/ops"), event_types=["outbox.*"])
        for n in range(8):
            emit_one(conn, {"n": n})
        relays = [start_logged_relay(env, tmp_path / f"relay{i}.log") for i in range(2)]
        try:
            wait_until(lambda: breaker(conn, bad.id)["breaker_opened_at"] is not None, 30, "open")
            receiver.wait_count(8, "/healthy")
            # While it is open, new events reach the healthy endpoint at once, and wait for the
            # failing one.
            for n in range(8, 16):
                emit_one(conn, {"n": n})
            receiver.wait_count(16, "/healthy")
            wait_until(lambda: statuses(conn, good.id) == {"delivered": 16}, 30, "healthy done")
            assert breaker(conn, bad.id)["breaker_opened_at"] is not None
            wait_until(lambda: breaker(conn, bad.id)["probes"] >= 3, 30, "three failed probes")
            recovered.set()
            wait_until(lambda: statuses(conn, bad.id) == {"delivered": 16}, 30, "all delivered")
            receiver.wait_count(1, "/ops")
        finally:
            codes = [stop(relay) for relay in relays]
        failing_requests = [(r, busy) for r, busy in receiver.arrivals if r.path == "/failing"]
        ops = receiver.on("/ops")
        healthy = receiver.on("/healthy")

    assert codes == [0, 0]
    state = breaker(conn, bad.id)
    assert (state["breaker_opened_at"], state["probe_at"], state["consecutive_failures"]) == (
        None,
        None,
        0,
    )

    # The operator's endpoint is told, once; the endpoint it is about and `*` subscribers are not.
    [told] = [json.loads(r.body) for r in ops]
    assert told["type"] == "outbox.endpoint.recovered"
    data = told["data"]
    assert data["endpoint_id"] == bad.id
    assert data["url"] == receiver.url("/failing")
    assert bad.secret not in ops[0].body.decode()
    assert data["failed_probes"] >= 3
    assert not [r for r, _ in failing_requests if b'"outbox.' in r.body]
    assert not [r for r in healthy if b'"outbox.' in r.body]
    assert all(header(r, "X-Stover-Attempt") == "1" for r in healthy)

    # While the breaker was open, the failing endpoint got probes alone: the failed ones and the
    # one that succeeded, each while no other request of it was being answered, spaced by the
    # rule (the first FIRST after opening, then twice as far after each failed probe, at most
    # LONGEST).
    opened, closed = stamp(data["breaker_opened_at"]), stamp(data["recovered_at"])
    probes = [(r, busy) for r, busy in failing_requests if opened <= r.at <= closed]
    assert len(probes) == data["failed_probes"] + 1
    assert [busy for _, busy in probes] == [1] * len(probes)
    assert probes[0][0].at - opened >= FIRST
    for k, (earlier, later) in enumerate(itertools.pairwise(probes), start=1):
        assert later[0].at - earlier[0].at >= min(FIRST * 2**k, LONGEST)
    # Before it opened: the first attempt of each of the first 8 deliveries, and nothing else.
    before = [r for r, _ in failing_requests if r.at < opened]
    assert len(before) == 8
    assert {header(r, "X-Stover-Attempt") for r in before} == {"1"}

    # No rung skipped or spent by waiting: each delivery's attempts are numbered 1, 2, ... as the
    # receiver saw them and as they are recorded, each at least its rung after the one before.
    by_delivery: dict[str, list[Received]] = defaultdict(list)
    for r, _ in failing_requests:
        by_delivery[header(r, "X-Stover-Delivery-Id")].append(r)
    assert len(by_delivery) == 16
    for delivery_id, requests in by_delivery.items():
        numbers = [int(header(r, "X-Stover-Attempt")) for r in requests]
        assert numbers == list(range(1, len(requests) + 1)), delivery_id
        recorded = conn.execute(
            "select array_agg(attempt order by attempt), max(attempt) from outbox.attempts"
            " where delivery_id = %s",
            [int(delivery_id)],
        ).fetchone()
        assert recorded == (numbers, len(numbers))
        for n, (earlier, later) in enumerate(itertools.pairwise(requests), start=1):
            assert later.at - earlier.at >= LADDER[n]
    # Once it closed, every delivery but the one the last probe delivered went once more, and
    # that attempt succeeded: 8 first attempts, the probes, and 15 after.
    after = [r for r, _ in failing_requests if r.at > closed]
    assert len(after) == 16 - 1
    assert all(by_delivery[header(r, "X-Stover-Delivery-Id")][-1] is r for r in after)
    assert len(failing_requests) == len(before) + len(probes) + len(after)


async def test_a_probe_lost_with_its_relay_is_taken_again_when_its_lease_ends(
    conn: Conn, db_url: str
) -> None:
    """A relay that dies holding the probe leaves probe_at at its lease's end; another relay
    probes then, and not before."""
    endpoint = add_endpoint(conn, "http://127.0.0.1:9/hook")
    emit_one(conn)
    emit_one(conn)
    conn.execute("select outbox.fan_out()")
    conn.execute(
        "update outbox.endpoints set consecutive_failures = 10, failing_since = now(),"
        " last_failure_at = now(), breaker_opened_at = now(), probe_at = now() where id = %s",
        [endpoint.id],
    )
    store = Store(db_url)
    await store.open()
    try:
        (probe,) = await store.claim(10, lease=30.0)
        assert probe.probe
        assert await store.claim(10, lease=30.0) == []
        # The relay holding it is gone and its lease has run out (the clock moved on).
        conn.execute(
            "update outbox.endpoints set probe_at = now() - interval '1 second' where id = %s",
            [endpoint.id],
        )
        conn.execute(
            "update outbox.deliveries set next_attempt_at = now() - interval '1 second'"
            " where id = %s",
            [probe.delivery_id],
        )
        again = await store.claim(10, lease=30.0)
    finally:
        await store.close()
    assert [(c.probe, c.attempts) for c in again] == [(True, 0)]


def account_event(conn: Conn, account: str, n: int) -> None:
    conn.execute("select outbox.emit('test.ping', %s::jsonb, %s)", [json.dumps({"n": n}), account])


def deliveries_of_operational_events(conn: Conn) -> list[tuple[str, str]]:
    rows = conn.execute(
        "select d.endpoint_id, e.type from outbox.deliveries d"
        " join outbox.events e on e.id = d.event_id"
        " where e.type like 'outbox.%%' order by e.id, d.endpoint_id"
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def test_an_endpoint_failing_for_days_is_disabled_and_the_operator_is_told_not_the_endpoint(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with receiving(default=lambda _: (500, b"down", 0.0)) as receiver:
        dead = add_account_endpoint(conn, receiver.url("/dead?sig=abc"), ["*", "outbox.*"])
        ops = add_account_endpoint(conn, receiver.url("/ops"), ["outbox.*"])
        add_account_endpoint(conn, receiver.url("/everything"), ["*"])
        add_account_endpoint(conn, receiver.url("/other"), ["outbox.*"], "globex")
        receiver.behaviours["/ops"] = lambda _: (200, b"ok", 0.0)
        receiver.behaviours["/everything"] = lambda _: (200, b"ok", 0.0)
        for n in range(3):
            account_event(conn, "acme", n)
        # Every attempt fails (a one-rung ladder, no breaker in the way)...
        drained = subprocess.run(
            outbox_cmd("relay", "--once"),
            env={**relay_env(cli_env, ladder="0"), "OUTBOX_BREAKER_AFTER": "1000"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert drained.returncode == 0, drained.stderr
        assert json.loads(drained.stdout)["failed"] == 3
        # ... and, the clock moved on, the first of them was six days ago.
        conn.execute(
            "update outbox.endpoints set failing_since = failing_since - interval '6 days'"
            " where id = %s",
            [dead.id],
        )
        env = {**relay_env(cli_env, ladder="0"), "OUTBOX_DISABLE_SCHEDULE": "* * * * * *"}
        relay = start_logged_relay(env, tmp_path / "relay.log")
        try:
            receiver.wait_count(1, "/ops")
            enabled = subprocess.run(
                outbox_cmd("endpoints", "enable", dead.id),
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert enabled.returncode == 0, enabled.stderr
            receiver.wait_count(2, "/ops")
        finally:
            assert stop(relay) == 0
        told = receiver.on("/ops")
        to_dead = receiver.on("/dead")

    assert [json.loads(r.body)["type"] for r in told] == [
        "outbox.endpoint.disabled",
        "outbox.endpoint.enabled",
    ]
    for request in told:
        check_request(request, ops.secret)
        assert dead.secret not in request.body.decode()
    disabled, reenabled = (json.loads(r.body)["data"] for r in told)
    assert disabled["endpoint_id"] == reenabled["endpoint_id"] == dead.id
    assert disabled["url"] == reenabled["url"] == receiver.url("/dead")
    assert disabled["account_id"] == "acme"
    assert disabled["reason"].startswith("every attempt failed for 5 days: 3 in a row since")
    assert disabled["consecutive_failures"] == 3
    assert reenabled["disabled_reason"] == disabled["reason"]
    assert reenabled["disabled_at"] == disabled["disabled_at"]
    # The endpoint they are about got neither, nor did `*` or another account's operator.
    assert [json.loads(r.body)["type"] for r in to_dead] == ["test.ping"] * 3
    assert deliveries_of_operational_events(conn) == [
        (ops.id, "outbox.endpoint.disabled"),
        (ops.id, "outbox.endpoint.enabled"),
    ]


def add_account_endpoint(conn: Conn, url: str, types: list[str], account: str = "acme") -> Endpoint:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types, account_id) values (%s, %s, %s)"
        " returning id, secret",
        [url, types, account],
    ).fetchone()
    assert row is not None
    return Endpoint(row[0], row[1])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OUTBOX_BREAKER_AFTER", "0"),
        ("OUTBOX_BREAKER_AFTER", "abc"),
        ("OUTBOX_BREAKER_PROBE_INTERVAL", "300,5"),
        ("OUTBOX_DISABLE_AFTER", "-1d"),
        ("OUTBOX_DISABLE_AFTER", "abc"),
    ],
)
def test_a_bad_breaker_or_disable_setting_stops_the_relay_in_one_line(
    variable: str, value: str
) -> None:
    env = {**env_without_outbox(), "DATABASE_URL": UNREACHABLE_DB, variable: value}
    done = run_relay_cli(env)
    assert done.returncode == 2
    assert f"{variable}={value!r}" in refusal(done)
