"""What a batch of attempt outcomes says of each endpoint, the input of its circuit breaker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from outbox.db.store import Result


@dataclass(frozen=True, slots=True)
class Verdict:
    """One endpoint's attempts in a batch: whether one succeeded, and the failures that started
    after the latest success (all of them when none did)."""

    endpoint_id: str
    succeeded: bool
    failures: int
    first_failed: datetime | None
    last_failed: datetime | None
    probes_failed: int


def verdicts(results: Sequence[Result]) -> list[Verdict]:
    """The verdicts that can change an endpoint's breaker; none for a batch of successes at
    endpoints that had no failed attempts on record when claimed, which is what a healthy
    installation records, so it pays nothing for the breaker. Attempts that never reached a
    receiver (an event over the payload cap, an error inside the relay) say nothing of it."""
    judged: set[str] = set()
    for r in results:
        if r.sent and (r.status != "delivered" or r.failing or r.probe):
            judged.add(r.endpoint_id)
    if not judged:
        return []
    by_endpoint: dict[str, list[Result]] = {endpoint_id: [] for endpoint_id in sorted(judged)}
    for r in results:
        if r.sent and r.endpoint_id in by_endpoint:
            by_endpoint[r.endpoint_id].append(r)
    return [_verdict(endpoint_id, rs) for endpoint_id, rs in by_endpoint.items()]


def _verdict(endpoint_id: str, results: list[Result]) -> Verdict:
    successes = [r.started_at for r in results if r.status == "delivered"]
    latest = max(successes) if successes else None
    failed = [
        r for r in results if r.status != "delivered" and (latest is None or r.started_at > latest)
    ]
    starts = [r.started_at for r in failed]
    return Verdict(
        endpoint_id=endpoint_id,
        succeeded=latest is not None,
        failures=len(failed),
        first_failed=min(starts, default=None),
        last_failed=max(starts, default=None),
        probes_failed=sum(1 for r in failed if r.probe),
    )
