"""A relay outlives a PostgreSQL restart in the middle of delivering: it logs a warning, reconnects
and finishes, with every delivery delivered. The restarted server is a dedicated embedded one,
never the machine's shared server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from support import Received, running_receiver, stop, wait_until

from . import (
    Server,
    add_contacts,
    add_endpoint,
    count,
    delivery_counts,
    duplicates,
    log_lines,
    relay_process,
)

pytestmark = pytest.mark.slow

BACKLOG = 1000


def delivered(url: str) -> int | None:
    return count(url, "select count(*) from outbox.deliveries where status = 'delivered'")


def slow_ok(_: Received) -> tuple[int, bytes, float]:
    return 200, b"ok", 0.02


def test_relay_survives_a_database_restart_mid_stream(
    dedicated_server: Server, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server = dedicated_server
    env = server.env
    log = tmp_path / "relay.log"
    with running_receiver(default=slow_ok) as receiver:
        with psycopg.connect(server.url, autocommit=True) as conn:
            add_endpoint(conn, receiver.url())
            add_contacts(conn, BACKLOG)
        with relay_process(env, "--concurrency", "10", log=log) as relay:
            receiver.wait_count(BACKLOG // 5)
            before = delivered(server.url)
            assert before is not None
            assert before < BACKLOG, "the relay finished before the restart"
            server.restart()
            restarted = time.monotonic()
            # Leases last 30 + 15 s: finishing sooner means nothing the relay held was dropped.
            wait_until(lambda: delivered(server.url) == BACKLOG, timeout=40, what="all delivered")
            finished = time.monotonic() - restarted
            assert relay.poll() is None, "the relay died with the database"
            assert stop(relay) == 0
        requests = list(receiver.requests)

    assert count(server.url, "select count(*) from outbox.deliveries") == BACKLOG
    assert len(delivery_counts(requests)) == BACKLOG
    lines = log_lines(log)
    assert any(line["level"] == "warning" for line in lines)
    assert not any(line["level"] == "error" for line in lines)
    record_property("duplicates", duplicates(requests))
    record_property("delivered_before_restart", before)
    record_property("seconds_to_finish_after_restart", round(finished, 1))
