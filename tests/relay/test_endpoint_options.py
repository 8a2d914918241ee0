"""Endpoints changed while a delivery is pending, and their own headers: the next attempt goes to
the new URL with the new headers, a changed subscription holds for events fanned out after it,
and a header's value reaches the receiver on every attempt and nothing else."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import Received, stop, wait_until

from outbox.db import admin
from outbox.db.store import Store
from tests.db.rows import fan_out

from . import (
    add_endpoint,
    attempts,
    check_request,
    drive,
    emit_one,
    header,
    only_delivery,
    receiving,
    relay_env,
    running_relay,
    start_logged_relay,
)

Conn = psycopg.Connection[Any]
TOKEN = "Bearer s3cr3t-t0ken-value"  # a stand-in credential no log or listing may hold
LADDER = (0.0,) * 10


def failing_until_told() -> tuple[dict[str, bool], Any]:
    """A behaviour answering 500 until `state["ok"]` is set, then 200."""
    state = {"ok": False}

    def behave(_: Received) -> tuple[int, bytes, float]:
        return (200, b"ok", 0.0) if state["ok"] else (500, b"not yet", 0.0)

    return state, behave


def update(db_url: str, endpoint_id: str, **changes: Any) -> None:
    """What `outbox endpoints update` does, by the function it calls."""
    with admin.session(db_url) as session:
        assert admin.update_endpoint(session, endpoint_id, admin.EndpointChanges(**changes))


async def test_each_change_holds_for_the_next_attempt_of_a_pending_delivery(
    conn: Conn, db_url: str
) -> None:
    state, behave = failing_until_told()
    with receiving(behaviours={"/old": behave, "/new": behave}) as receiver:
        endpoint = add_endpoint(conn, receiver.url("/old"))
        emit_one(conn)
        async with running_relay(db_url, ladder=LADDER) as relay:
            await relay.run_once()
            assert [r.path for r in receiver.requests] == ["/old"]

            update(db_url, endpoint.id, url=receiver.url("/new"))
            await relay.run_once()
            assert [r.path for r in receiver.requests] == ["/old", "/new"]

            update(db_url, endpoint.id, set_headers={"Authorization": TOKEN, "X-Tenant": "acme"})
            await relay.run_once()
            assert header(receiver.requests[-1], "Authorization") == TOKEN
            assert header(receiver.requests[-1], "X-Tenant") == "acme"

            update(db_url, endpoint.id, rate_limit=5, rate_limit_given=True)
            # The relay takes up rate limits when it next looks at its endpoints (each second).
            await drive(relay, lambda: len(receiver.requests) >= 4)
            paced = conn.execute(
                "select rate_next_at is not null from outbox.endpoints where id = %s",
                [endpoint.id],
            ).fetchone()
            assert paced == (True,)  # the attempt took a slot of the limit

            update(db_url, endpoint.id, description="moved", event_types=["deal.*"])
            emit_one(conn)  # test.ping: no longer subscribed
            state["ok"] = True
            await relay.run_once()

    delivery = only_delivery(conn)  # the new event got none
    assert (delivery["endpoint_id"], delivery["status"]) == (endpoint.id, "delivered")
    made = attempts(conn, delivery["id"])
    assert [a["attempt"] for a in made] == [1, 2, 3, 4, 5]
    paths = [r.path for r in receiver.requests]
    assert paths == ["/old"] + ["/new"] * 4
    for request in receiver.requests[2:]:
        check_request(request, endpoint.secret)
        assert header(request, "Authorization") == TOKEN


def test_headers_go_on_every_attempt_and_into_no_log_line_or_listing(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    answers = itertools.chain([500], itertools.repeat(200))
    with receiving(behaviours={"/hook": lambda _: (next(answers), b"", 0.0)}) as receiver:
        endpoint = add_endpoint(conn, receiver.url("/hook"))
        conn.execute(
            "update outbox.endpoints set headers = %s where id = %s",
            [json.dumps({"Authorization": TOKEN}), endpoint.id],
        )
        emit_one(conn)
        env = {**relay_env(cli_env, ladder="0,0"), "OUTBOX_LOG_LEVEL": "debug"}
        log = tmp_path / "relay.log"
        relay = start_logged_relay(env, log)
        try:
            wait_until(lambda: len(receiver.requests) >= 2, timeout=30, what="two attempts")
            wait_until(
                lambda: only_delivery(conn)["status"] == "delivered", timeout=30, what="recorded"
            )
        finally:
            stop(relay)
    assert [header(r, "Authorization") for r in receiver.requests] == [TOKEN, TOKEN]
    delivery_id = str(only_delivery(conn)["id"])
    shown = [
        subprocess.run(
            [sys.executable, "-m", "outbox", *words],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for words in (
            ("deliveries", "show", delivery_id),
            ("endpoints", "show", endpoint.id, "--json"),
            ("endpoints", "list"),
        )
    ]
    assert "attempt" in log.read_text()
    for text in [log.read_text()] + [run.stdout + run.stderr for run in shown]:
        assert TOKEN not in text
    assert json.loads(shown[1].stdout)["header_names"] == ["Authorization"]


@pytest.mark.parametrize("walk", [False, True], ids=["each", "walk"])
async def test_claims_hand_a_limited_endpoint_slots_a_rate_apart(
    conn: Conn, db_url: str, walk: bool
) -> None:
    endpoint = add_endpoint(conn, "http://127.0.0.1:9/limited")
    conn.execute("update outbox.endpoints set rate_limit = 4 where id = %s", [endpoint.id])
    if walk:  # past 100 enabled endpoints the claim walks the pending index
        conn.execute(
            "insert into outbox.endpoints (url, event_types)"
            " select 'http://127.0.0.1:9/idle' || g, '{deal.*}' from generate_series(1, 100) g"
        )
    for _ in range(10):
        emit_one(conn)
    fan_out(conn)
    lease = timedelta(seconds=45)
    store = Store(db_url)
    await store.open()
    try:
        first = await store.claim(64, lease.total_seconds())
        second = await store.claim(64, lease.total_seconds())
    finally:
        await store.close()
    assert store.walking == walk
    # A second's worth at 4 a second, from the claim's now(), a quarter of a second apart.
    assert sorted(c.slot[0] for c in first if c.slot) == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert all(c.slot is not None for c in first + second)
    # The claim's now() is its lease less the lease's length: the slots in absolute time never
    # come closer than 1/4 s, across claims too.
    slots = sorted(c.lease - lease + timedelta(seconds=c.slot[0]) for c in first + second if c.slot)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 0.25 - 1e-6
    row = conn.execute(
        "select rate_next_at from outbox.endpoints where id = %s", [endpoint.id]
    ).fetchone()
    assert row is not None
    assert row[0] == slots[-1] + timedelta(seconds=0.25)
