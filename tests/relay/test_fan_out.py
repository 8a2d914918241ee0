"""The relay fans committed events out itself: a transaction left open holds back only its own
events, which arrive once it commits, each event exactly once."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import psycopg

from outbox.relay.fanout import Pace

from . import add_endpoint, drive, receiving, running_relay

Conn = psycopg.Connection[Any]


async def test_a_transaction_left_open_delays_only_its_own_deliveries(
    conn: Conn, db_url: str
) -> None:
    with receiving() as receiver, psycopg.connect(db_url) as held:
        add_endpoint(conn, receiver.url("/hook"))
        held.execute("insert into stover.contacts (first_name) values ('opened first')")
        for n in range(200):
            conn.execute("insert into stover.contacts (first_name) values (%s)", [f"c{n}"])
        async with running_relay(db_url) as relay:
            await drive(relay, lambda: len(receiver.requests) >= 200)
            names = [json.loads(r.body)["data"]["first_name"] for r in receiver.requests]
            assert "opened first" not in names
            held.commit()
            await drive(relay, lambda: len(receiver.requests) >= 201)
            await relay.run_once()  # and nothing more comes
        requests = list(receiver.requests)

    assert len(requests) == 201
    assert json.loads(requests[-1].body)["data"]["first_name"] == "opened first"
    per_event = Counter(r.headers["X-Stover-Event-Id"] for r in requests)
    assert set(per_event.values()) == {1}


async def test_a_transaction_larger_than_a_step_arrives_whole_and_later_events_pass_it(
    conn: Conn, db_url: str
) -> None:
    large = Pace().max_events + 1_000  # found by one step, written in parts by the next ones
    with receiving() as receiver:
        add_endpoint(conn, receiver.url("/hook"))
        conn.execute(
            "insert into stover.contacts (first_name) select 'import ' || g"
            " from generate_series(1, %s) g",
            [large],
        )
        conn.execute("insert into stover.contacts (first_name) values ('after the import')")
        async with running_relay(db_url) as relay:
            await drive(relay, lambda: len(receiver.requests) >= large + 1, deadline_s=120.0)
            await relay.run_once()  # and nothing more comes
        requests = list(receiver.requests)

    assert len(requests) == large + 1
    per_event = Counter(r.headers["X-Stover-Event-Id"] for r in requests)
    assert set(per_event.values()) == {1}
    names = [json.loads(r.body)["data"]["first_name"] for r in requests]
    # The later write went out with the import's first parts, long before its last.
    assert names.index("after the import") < names.index(f"import {large}")
