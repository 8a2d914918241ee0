"""What a batch of outcomes says of each endpoint: the breaker's input, as a table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outbox.db.store import Result
from outbox.relay.breaker import Verdict, verdicts

T0 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def at(second: int) -> datetime:
    return T0 + timedelta(seconds=second)


def outcome(
    endpoint_id: str,
    status: str,
    second: int,
    *,
    probe: bool = False,
    failing: bool = False,
    sent: bool = True,
) -> Result:
    return Result(
        delivery_id=second,
        lease=T0,
        attempt=1,
        status=status,
        delay=0.0,
        started_at=at(second),
        duration_ms=1.0,
        status_code=200 if status == "delivered" else 500,
        error=None,
        response_body=None,
        endpoint_id=endpoint_id,
        probe=probe,
        failing=failing,
        sent=sent,
    )


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        # Successes at endpoints with nothing on record: nothing to judge, nothing to write.
        ([outcome("ep_a", "delivered", 1), outcome("ep_b", "delivered", 2)], []),
        # Failures, pending a retry or final, counted with the first and latest start.
        (
            [outcome("ep_a", "pending", 3), outcome("ep_a", "failed", 1)],
            [Verdict("ep_a", False, 2, at(1), at(3), 0)],
        ),
        # A success at an endpoint that was failing ends its run.
        (
            [outcome("ep_a", "delivered", 1, failing=True)],
            [Verdict("ep_a", True, 0, None, None, 0)],
        ),
        # Only failures that started after the latest success stay in the run.
        (
            [
                outcome("ep_a", "pending", 1),
                outcome("ep_a", "delivered", 2),
                outcome("ep_a", "pending", 3),
                outcome("ep_a", "pending", 4, probe=True),
            ],
            [Verdict("ep_a", True, 2, at(3), at(4), 1)],
        ),
        # A probe is judged whatever its outcome; a failed one is counted as such.
        ([outcome("ep_a", "delivered", 1, probe=True)], [Verdict("ep_a", True, 0, None, None, 0)]),
        ([outcome("ep_a", "pending", 1, probe=True)], [Verdict("ep_a", False, 1, at(1), at(1), 1)]),
        # Attempts never sent (too large, an error inside the relay) say nothing of a receiver.
        ([outcome("ep_a", "failed", 1, sent=False, failing=True)], []),
        # Endpoints in id order, as their rows are locked.
        (
            [outcome("ep_b", "pending", 1), outcome("ep_a", "pending", 2)],
            [
                Verdict("ep_a", False, 1, at(2), at(2), 0),
                Verdict("ep_b", False, 1, at(1), at(1), 0),
            ],
        ),
    ],
)
def test_verdicts(batch: list[Result], expected: list[Verdict]) -> None:
    assert verdicts(batch) == expected
