"""The relay's cache of rendered bodies is bounded in bytes, not only in count: a stream of 1 MiB
events keeps at most BODIES_KEPT_BYTES of them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from outbox.config import Settings
from outbox.db.store import Claimed
from outbox.relay import attempts


def claimed(n: int, size: int) -> Claimed:
    return Claimed(
        delivery_id=n,
        attempts=0,
        ladder_start=0,
        lease=datetime.now(UTC),
        event_id=f"evt_{n:028x}",
        event_type="big.event",
        event_created_at=datetime.now(UTC),
        data_json='{"blob": "' + "x" * size + '"}',
        previous_json=None,
        endpoint_id="ep_x",
        url="http://127.0.0.1:9/",
        secret="whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    )


def test_bodies_kept_stay_under_the_byte_bound() -> None:
    work = attempts.Attempts(cast(Any, None), Settings(), lambda: datetime.now(UTC))
    for n in range(200):
        body = work._body(claimed(n, 1_048_576))
        assert len(body) > 1_048_576
        kept = sum(len(b) for b in work._bodies.values())
        assert kept <= attempts.BODIES_KEPT_BYTES
    # A body asked for again while kept is the same object, not a second rendering.
    again = work._body(claimed(199, 1_048_576))
    assert again is work._bodies[claimed(199, 0).event_id]
