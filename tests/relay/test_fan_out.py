"""The relay fans committed events out itself: a transaction left open holds back only its own
events, which arrive once it commits, each event exactly once."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import psycopg

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
