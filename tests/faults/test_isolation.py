"""One hanging endpoint does not hold up a healthy one: the relay caps what it has in flight to
each endpoint, so the healthy endpoint's deliveries go out while the hanging ones wait for their
timeout; stopped, the relay hands the hanging ones back, pending and due."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support import Received, running_receiver, wait_until

from . import Conn, add_contacts, add_endpoint, relay_env, relay_process, scalar

pytestmark = pytest.mark.slow

EVENTS = 200
TIMEOUT = 30.0


def hang(_: Received) -> None:
    """Never answer: the relay's timeout must end the attempt."""
    return


def delivered_to(conn: Conn, endpoint_id: str) -> int:
    return int(
        scalar(
            conn,
            "select count(*) from outbox.deliveries"
            " where endpoint_id = %s and status = 'delivered'",
            [endpoint_id],
        )
    )


def test_a_hanging_endpoint_does_not_delay_a_healthy_one(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = relay_env(cli_env, TIMEOUT=f"{TIMEOUT:g}")
    # Both endpoints live on one receiver (one host and port) under different paths, as hooks
    # of one service often do.
    with running_receiver(behaviours={"/hang": hang}) as receiver:
        hanging = add_endpoint(conn, receiver.url("/hang"))
        healthy = add_endpoint(conn, receiver.url("/ok"))
        add_contacts(conn, EVENTS)
        args = ("--concurrency", "20", "--per-endpoint", "5", "--grace", "1")
        with relay_process(env, *args, log=tmp_path / "relay.log") as relay:
            wait_until(
                lambda: delivered_to(conn, healthy) == EVENTS,
                timeout=TIMEOUT,
                what="every healthy delivery delivered",
            )
            hung = receiver.on("/hang")
            arrived = receiver.on("/ok")
            # The hanging endpoint never had more than its cap in flight, and none of those
            # attempts has ended yet: nothing about it is on record.
            assert len(hung) == 5
            assert (
                scalar(
                    conn,
                    "select count(*) from outbox.attempts a join outbox.deliveries d"
                    " on d.id = a.delivery_id where d.endpoint_id = %s",
                    [hanging],
                )
                == 0
            )
            first_hang = min(r.at for r in hung)
            assert len({r.headers["X-Stover-Delivery-Id"] for r in arrived}) == EVENTS
            assert max(r.at for r in arrived) < first_hang + TIMEOUT

            relay.send_signal(signal.SIGTERM)
            assert relay.wait(15) == 0

    rows = conn.execute(
        "select status, attempts, next_attempt_at <= now(), count(*)"
        " from outbox.deliveries where endpoint_id = %s group by 1, 2, 3",
        [hanging],
    ).fetchall()
    assert rows == [("pending", 0, True, EVENTS)]
