"""Retention against concurrent operators: a prune that meets a redelivery or a replay of the
events it removes waits for them and leaves no delivery without its event, nor drops a
delivery that was put back to pending."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, LiteralString

import psycopg
import pytest

from outbox.db import retention
from outbox.sqlfiles import queries

from .rows import backdate_event, fan_out

Conn = psycopg.Connection[Any]


def one(conn: Conn, query: LiteralString, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def old_event(conn: Conn, event_type: str) -> str:
    event_id: str = one(conn, "select outbox.emit(%s, '{}'::jsonb)", [event_type])
    fan_out(conn)
    backdate_event(conn, event_id, "40 days")
    return event_id


def endpoint(conn: Conn, types: list[str]) -> str:
    endpoint_id: str = one(
        conn,
        "insert into outbox.endpoints (url, event_types) values (%s, %s) returning id",
        ["https://a.example.com/in", types],
    )
    return endpoint_id


@pytest.fixture
def operator(db_url: str) -> Iterator[Conn]:
    """A second connection, holding an operator's transaction open."""
    with psycopg.connect(db_url) as connection:
        yield connection


class Pruning:
    """`retention.prune` of events older than 30 days, on a connection and thread of its own."""

    def __init__(self, db_url: str) -> None:
        self.conn = psycopg.connect(db_url, autocommit=True)
        self.result: retention.Pruned | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            before = retention.cutoff(self.conn, timedelta(days=30))
            self.result = retention.prune(self.conn, before=before)
        except BaseException as exc:  # handed to the test in finish()
            self.error = exc

    def start_and_wait_until_blocked(self, watcher: Conn, timeout: float = 10.0) -> bool:
        """Start; True once the prune waits on a lock, False if it finished without waiting."""
        pid = self.conn.info.backend_pid
        self.thread.start()
        deadline = time.monotonic() + timeout
        while self.thread.is_alive() and time.monotonic() < deadline:
            if one(
                watcher,
                "select coalesce(bool_or(wait_event_type = 'Lock'), false)"
                " from pg_stat_activity where pid = %s",
                [pid],
            ):
                return True
            time.sleep(0.02)
        return False

    def finish(self) -> retention.Pruned:
        self.thread.join(timeout=30)
        self.conn.close()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def orphans(conn: Conn) -> int:
    return int(
        one(
            conn,
            "select count(*) from outbox.deliveries d"
            " where not exists (select 1 from outbox.events e where e.id = d.event_id)",
        )
    )


def prune_beside(
    operator: Conn, work: Callable[[Conn], object], watcher: Conn, db_url: str
) -> tuple[bool, retention.Pruned]:
    """Run `work` in a transaction left open on `operator`, start a prune, commit `work` once
    the prune waits on a lock (or has finished without waiting), and let the prune finish.
    Returns whether it waited, and what it removed."""
    work(operator)
    assert operator.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    pruning = Pruning(db_url)
    blocked = pruning.start_and_wait_until_blocked(watcher)
    operator.commit()
    return blocked, pruning.finish()


def test_a_prune_meeting_an_uncommitted_replay_leaves_no_delivery_without_its_event(
    conn: Conn, operator: Conn, db_url: str
) -> None:
    endpoint(conn, ["deal.*"])
    event_id = old_event(conn, "deal.created")
    conn.execute(
        "update outbox.deliveries set status = 'delivered' where event_id = %s", [event_id]
    )
    later = endpoint(conn, ["deal.*"])  # created after the event: the replay gives it a delivery

    def replay(c: Conn) -> None:
        c.execute(
            queries("admin")["endpoint_replay"],
            {
                "endpoint_id": later,
                "since": datetime(2000, 1, 1),
                "until": None,
                "subscribed": ["deal.*"],
                "types": None,
                "account_id": None,
                "all_accounts": False,
                "ordered": False,
            },
        )

    blocked, pruned = prune_beside(operator, replay, conn, db_url)

    assert blocked, "the prune did not wait for the replay holding the event"
    assert (pruned.events, pruned.deliveries) == (1, 1)
    assert orphans(conn) == 0
    assert one(conn, "select count(*) from outbox.events where id = %s", [event_id]) == 0


def test_a_prune_meeting_an_uncommitted_redelivery_keeps_the_event_and_its_delivery(
    conn: Conn, operator: Conn, db_url: str
) -> None:
    endpoint(conn, ["deal.*"])
    event_id = old_event(conn, "deal.created")
    conn.execute(
        "update outbox.deliveries set status = 'failed', next_attempt_at = null,"
        " attempts = 5 where event_id = %s",
        [event_id],
    )
    delivery_id = one(conn, "select id from outbox.deliveries where event_id = %s", [event_id])

    def redeliver(c: Conn) -> None:
        c.execute(queries("admin")["deliveries_requeue"], {"delivery_ids": [delivery_id]})

    blocked, pruned = prune_beside(operator, redeliver, conn, db_url)

    assert blocked, "the prune did not wait for the redelivery holding the delivery"
    assert (pruned.events, pruned.deliveries, pruned.kept) == (0, 0, 1)
    assert one(conn, "select status from outbox.deliveries where id = %s", [delivery_id]) == (
        "pending"
    )
    assert one(conn, "select count(*) from outbox.events where id = %s", [event_id]) == 1
