"""Several relays on one database share the work without overlap: with no faults, every committed
event is fanned out once, and every delivery is sent exactly once and has exactly one attempt on
record."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from support import running_receiver, wait_until

from . import (
    Conn,
    add_contacts,
    add_endpoint,
    all_delivered,
    delivery_counts,
    log_lines,
    relay_process,
    scalar,
    statuses,
)

pytestmark = pytest.mark.slow

EVENTS = 1000
ENDPOINTS = 5
RELAYS = 3


def test_three_relays_send_every_delivery_exactly_once(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    total = EVENTS * ENDPOINTS
    with running_receiver() as receiver:
        for n in range(ENDPOINTS):
            add_endpoint(conn, receiver.url(f"/hook{n}"))
        add_contacts(conn, EVENTS)
        # Capture wrote the events alone: the relays fan them out.
        assert scalar(conn, "select count(*) from outbox.events") == EVENTS
        assert scalar(conn, "select count(*) from outbox.deliveries") == 0
        logs = [tmp_path / f"relay{i}.log" for i in range(RELAYS)]
        with ExitStack() as stack:
            relays = [stack.enter_context(relay_process(cli_env, log=log)) for log in logs]
            wait_until(lambda: all_delivered(conn, total), timeout=60, what="all delivered")
            for relay in relays:
                relay.terminate()
            assert [relay.wait(20) for relay in relays] == [0] * RELAYS
        requests = list(receiver.requests)

    sent = delivery_counts(requests)
    assert len(requests) == total
    assert max(sent.values()) == 1
    ids = {str(row[0]) for row in conn.execute("select id from outbox.deliveries").fetchall()}
    assert set(sent) == ids
    assert statuses(conn) == {"delivered": total}
    assert scalar(conn, "select count(*) from outbox.attempts") == total
    assert scalar(conn, "select count(distinct delivery_id) from outbox.attempts") == total
    # Each relay's own account adds up to the whole, with nothing counted twice.
    tallies = [
        line["delivered"]
        for log in logs
        for line in log_lines(log)
        if line.get("event") == "relay stopped"
    ]
    assert len(tallies) == RELAYS
    assert sum(tallies) == total
