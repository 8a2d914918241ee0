"""Accounts under real concurrency: writers across 20 accounts (and rows and emit() calls without
one) committing and rolling back beside three relay processes. Every event reaches exactly its own
account's endpoint and the all-accounts feed, once each, and nothing else."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest
from support import running_receiver, wait_until

from . import Conn, all_delivered, relay_process, scalar, statuses

pytestmark = pytest.mark.slow

ACCOUNTS = 20
WRITERS = 6
TRANSACTIONS = 30  # per writer


def _write(db_url: str, seed: int, accounts: list[int], errors: list[BaseException]) -> None:
    """Transactions of one to three writes, each a contact of a random account (or none) or an
    emit() with a random account (or none); one in four rolled back."""
    rng = random.Random(seed)
    try:
        with psycopg.connect(db_url) as conn:
            for n in range(TRANSACTIONS):
                for i in range(rng.randint(1, 3)):
                    account = rng.choice([*accounts, None])
                    if rng.random() < 0.7:
                        conn.execute(
                            "insert into stover.contacts (first_name, account_id) values (%s, %s)",
                            [f"w{seed}-{n}-{i}", account],
                        )
                    else:
                        conn.execute(
                            "select outbox.emit('invoice.paid', '{}', account => %s)",
                            [None if account is None else str(account)],
                        )
                time.sleep(rng.random() * 0.005)
                if rng.random() < 0.25:
                    conn.rollback()
                else:
                    conn.commit()
    except BaseException as exc:  # handed to the test
        errors.append(exc)


def test_every_event_reaches_its_own_account_and_no_other(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    errors: list[BaseException] = []
    accounts = [
        int(r[0])
        for r in conn.execute(
            "insert into stover.accounts (name) select 'a' || g from generate_series(1, %s) g"
            " returning id",
            [ACCOUNTS],
        ).fetchall()
    ]
    with running_receiver() as receiver:
        for account in [*accounts, None]:
            path = f"/account/{account if account is not None else 'none'}"
            row = conn.execute(
                "insert into outbox.endpoints (url, event_types, account_id)"
                " values (%s, '{*}', %s) returning id",
                [receiver.url(path), None if account is None else str(account)],
            ).fetchone()
            assert row is not None
        conn.execute(
            "insert into outbox.endpoints (url, event_types, all_accounts)"
            " values (%s, '{*}', true)",
            [receiver.url("/all")],
        )
        with ExitStack() as stack:
            for i in range(3):
                stack.enter_context(relay_process(cli_env, log=tmp_path / f"relay{i}.log"))
            writers = [
                threading.Thread(target=_write, args=(db_url, seed, accounts, errors))
                for seed in range(WRITERS)
            ]
            for thread in writers:
                thread.start()
            for thread in writers:
                thread.join(120)
            assert errors == []
            events = scalar(conn, "select count(*) from outbox.events")
            assert events > 0
            wait_until(lambda: all_delivered(conn, 2 * events), timeout=90, what="all delivered")
        requests = list(receiver.requests)

    assert statuses(conn) == {"delivered": 2 * events}
    # In the tables: each delivery's event is its endpoint's account's, or the endpoint is the
    # all-accounts feed; each event has exactly its two.
    wrong = scalar(
        conn,
        "select count(*) from outbox.deliveries d"
        " join outbox.events e on e.id = d.event_id"
        " join outbox.endpoints ep on ep.id = d.endpoint_id"
        " where not ep.all_accounts and ep.account_id is distinct from e.account_id",
    )
    assert wrong == 0
    per_event = Counter(
        r[0] for r in conn.execute("select event_id from outbox.deliveries").fetchall()
    )
    assert len(per_event) == events
    assert set(per_event.values()) == {2}
    # At the receiver: every event at its own account's path (an account-less one at
    # /account/none) and at /all, once each.
    account_of: dict[str, str | None] = dict(
        conn.execute("select id, account_id from outbox.events").fetchall()
    )
    got = Counter((r.path, r.headers["X-Stover-Event-Id"]) for r in requests)
    want: Counter[tuple[str, str]] = Counter()
    for event_id, account in account_of.items():
        want[(f"/account/{account if account is not None else 'none'}", event_id)] += 1
        want[("/all", event_id)] += 1
    assert got == want
    assert scalar(conn, "select count(*) from outbox.events where account_id is null") > 0, (
        "no account-less event was written"
    )
