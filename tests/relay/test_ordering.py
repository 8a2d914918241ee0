"""An ordered endpoint gets each record's events one at a time, in the record's order, through a
real `outbox relay` and a real receiver: retries hold back only their own record, and a delivery
that fails for good lets the next one go."""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
from support import Received, stop, wait_until

from tests.cli.test_endpoints_cli import outbox

from . import add_endpoint, receiving, relay_env, start_logged_relay

Conn = psycopg.Connection[Any]
STAGES = ("lead", "qualified", "proposal", "negotiation", "closed_won")
# created, then per move deal.updated and deal.stage_changed, and deal.closed_won at the end
EVENTS_PER_DEAL = 1 + 2 * (len(STAGES) - 1) + 1
NEXT_STAGE = (
    "case stage when 'lead' then 'qualified' when 'qualified' then 'proposal'"
    " when 'proposal' then 'negotiation' when 'negotiation' then 'closed_won' end"
)


def record_of(request: Received) -> tuple[str, int]:
    record = json.loads(request.body)["record"]
    return str(record["key"]), int(record["sequence"])


class Flaky:
    """Answers 500 to about a third of requests (seeded), and keeps the bodies it accepted."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.accepted: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: Received) -> tuple[int, bytes, float]:
        with self.lock:
            if self.random.random() < 1 / 3:
                return 500, b"not now", 0.0
            self.accepted.append(json.loads(request.body))
        return 200, b"ok", 0.0


def add_deals(conn: Conn, n: int) -> list[int]:
    rows = conn.execute(
        "insert into stover.deals (name, amount, currency, stage)"
        " select 'Deal ' || g, 1000.5, 'EUR', 'lead' from generate_series(1, %s) g returning id",
        [n],
    ).fetchall()
    return [int(row[0]) for row in rows]


def move_all_to_the_end(db_url: str, deals: list[int], writers: int) -> None:
    """`writers` threads each move randomly chosen deals one stage on, racing for the same rows,
    until every deal is closed_won. Each transaction takes its xid before it writes, so a writer
    that waited for another's row lock often commits later with the lower xid."""

    def write(seed: int) -> None:
        pick = random.Random(seed)
        with psycopg.connect(db_url) as conn:
            for _ in range(len(deals) * len(STAGES) * writers):  # bounded
                open_deals = [
                    int(r[0])
                    for r in conn.execute(
                        "select id from stover.deals where stage <> 'closed_won'"
                    ).fetchall()
                ]
                conn.commit()
                if not open_deals:
                    return
                conn.execute("select pg_current_xact_id()")
                conn.execute(
                    f"update stover.deals set stage = {NEXT_STAGE}"
                    " where id = %s and stage <> 'closed_won'",
                    [pick.choice(open_deals)],
                )
                conn.commit()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def delivered_count(conn: Conn) -> int:
    row = conn.execute("select count(*) from outbox.deliveries where status = 'delivered'")
    found = row.fetchone()
    assert found is not None
    return int(found[0])


def test_a_flaky_receiver_gets_each_deals_events_once_in_order_with_no_gaps(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    deals_n = 50
    flaky = Flaky(seed=20)
    with receiving(default=flaky) as receiver:
        endpoint = add_endpoint(conn, receiver.url(), event_types=["deal.*"])
        conn.execute("update outbox.endpoints set ordered = true where id = %s", [endpoint.id])
        deals = add_deals(conn, deals_n)
        # Twenty quick rungs: a third of attempts failing never exhausts them.
        env = relay_env(cli_env, ladder=",".join(["0"] + ["0.02"] * 19))
        relay = start_logged_relay(env, tmp_path / "relay.log")
        try:
            move_all_to_the_end(db_url, deals, writers=4)
            total = deals_n * EVENTS_PER_DEAL
            wait_until(lambda: delivered_count(conn) == total, timeout=90, what="all delivered")
        finally:
            assert stop(relay) == 0
    by_deal: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for body in flaky.accepted:
        by_deal[body["record"]["key"]].append(body)
    assert set(by_deal) == {f"deals:{d}" for d in deals}
    for key, bodies in by_deal.items():
        # In sequence order, no gaps, each event once.
        assert [b["record"]["sequence"] for b in bodies] == list(range(1, EVENTS_PER_DEAL + 1)), key
        assert len({b["id"] for b in bodies}) == EVENTS_PER_DEAL
        # And that order is the order of the writes: the stages as the record went through them.
        changes = [b["data"]["stage"] for b in bodies if b["type"] == "deal.stage_changed"]
        assert changes == list(STAGES[1:]), key
    assert len(receiver.requests) > len(flaky.accepted)  # failures did happen


def test_a_stuck_record_holds_back_only_its_own_events_and_the_audit_says_why(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    stuck = 0

    def answer(request: Received) -> tuple[int, bytes, float]:
        if json.loads(request.body)["data"]["id"] == stuck:
            return 500, b"stuck", 0.0
        return 200, b"ok", 0.0

    with receiving(default=answer) as receiver:
        endpoint = add_endpoint(conn, receiver.url(), event_types=["deal.*"])
        conn.execute("update outbox.endpoints set ordered = true where id = %s", [endpoint.id])
        deals = add_deals(conn, 5)
        stuck = deals[2]
        for _ in STAGES[1:]:
            conn.execute(f"update stover.deals set stage = {NEXT_STAGE}")
        # The stuck record's first delivery stays on the ladder for the whole test.
        env = relay_env(cli_env, ladder="0,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,30")
        relay = start_logged_relay(env, tmp_path / "relay.log")
        try:
            others = (len(deals) - 1) * EVENTS_PER_DEAL
            wait_until(lambda: delivered_count(conn) == others, timeout=60, what="others delivered")
            # Deliveries of a deal.created event are added before any of the updates' events.
            wait_until(
                lambda: (
                    sum(1 for r in receiver.requests if record_of(r)[0] == f"deals:{stuck}") >= 3
                ),
                timeout=30,
                what="the stuck record retried",
            )
        finally:
            assert stop(relay) == 0
    stuck_requests = [r for r in receiver.requests if record_of(r)[0] == f"deals:{stuck}"]
    assert {record_of(r)[1] for r in stuck_requests} == {1}  # only its first event was tried
    rows = conn.execute(
        "select id, sequence, next_attempt_at is null from outbox.deliveries"
        " where record = %s order by sequence",
        [f"deals:{stuck}"],
    ).fetchall()
    head, *held = rows
    assert head[2] is False
    assert len(held) == EVENTS_PER_DEAL - 1
    assert all(waiting for _, _, waiting in held)
    shown = outbox(cli_env, "deliveries", "show", str(held[0][0]))
    assert shown.code == 0, shown.err
    assert f"waiting for delivery {head[0]} of the same record" in shown.out
    assert f"deals:{stuck} #2, delivered in the record's order" in shown.out


def test_a_delivery_that_fails_for_good_lets_the_next_of_its_record_go(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with receiving(default=lambda _: (500, b"no", 0.0)) as receiver:
        endpoint = add_endpoint(conn, receiver.url(), event_types=["deal.*"])
        conn.execute("update outbox.endpoints set ordered = true where id = %s", [endpoint.id])
        [deal] = add_deals(conn, 1)
        conn.execute(f"update stover.deals set stage = {NEXT_STAGE}")
        relay = start_logged_relay(relay_env(cli_env, ladder="0,0.1"), tmp_path / "relay.log")
        try:
            wait_until(
                lambda: (
                    conn.execute(
                        "select count(*) = 3 from outbox.deliveries where status = 'failed'"
                    ).fetchone()
                    == (True,)
                ),
                timeout=30,
                what="three failed deliveries",
            )
        finally:
            assert stop(relay) == 0
    # Each one's first attempt started after the one before it had failed for good.
    rows = conn.execute(
        "select d.sequence, min(a.started_at), max(a.started_at), count(*)"
        " from outbox.deliveries d join outbox.attempts a on a.delivery_id = d.id"
        " where d.record = %s group by d.sequence order by d.sequence",
        [f"deals:{deal}"],
    ).fetchall()
    assert [(r[0], r[3]) for r in rows] == [(1, 2), (2, 2), (3, 2)]
    for before, after in itertools.pairwise(rows):
        assert after[1] > before[2]
    assert [record_of(r)[1] for r in receiver.requests] == [1, 1, 2, 2, 3, 3]


def test_endpoints_create_ordered_makes_an_ordered_endpoint(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    made = outbox(
        cli_env, "endpoints", "create", "http://127.0.0.1:9/hook", "--events", "deal.*",
        "--ordered", "--json",
    )  # fmt: skip
    assert made.code == 0, made.err
    endpoint_id = json.loads(made.out)["id"]
    row = conn.execute("select ordered from outbox.endpoints where id = %s", [endpoint_id])
    assert row.fetchone() == (True,)
    shown = outbox(cli_env, "endpoints", "show", endpoint_id)
    assert "ordered" in shown.out
    assert "per record" in shown.out
