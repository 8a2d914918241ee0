"""One-off test sends from the CLI: a signed sample delivery to an endpoint, made as a relay
attempt.

The send goes through the relay's own `Sender`, so it meets every rule a delivery meets: the
address actually connected to is checked (a name cannot be re-pointed at a private address
between a check and the connect), `OUTBOX_TIMEOUT` bounds the whole attempt, the answer is read
at most to the relay's cap, redirects are reported and not followed, and a failure is described
in the same words as in `outbox.attempts.error`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from outbox import payload, signing
from outbox.sender import Outcome, Sender


@dataclass(frozen=True)
class ProbeResult:
    """What the endpoint answered to the test send."""

    event_id: str
    status_code: int | None
    error: str | None
    duration_ms: float
    response_body: str

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def send_test(
    url: str,
    secret: str,
    event_type: str,
    *,
    timeout: float,
    allow_private_networks: bool,
    previous_secret: str | None = None,
    custom: Sequence[tuple[str, str]] = (),
) -> ProbeResult:
    """POST a signed sample event (data {"test": true}) exactly as the relay would send one,
    with the endpoint's own headers (`custom`)."""
    now = datetime.now(UTC)
    event_id = f"evt_test_{secrets.token_hex(8)}"
    body = payload.render_event(event_id, event_type, now, json.dumps({"test": True}), None)
    headers = signing.delivery_headers(
        secret=secret,
        event_id=event_id,
        event_type=event_type,
        delivery_id="test",
        attempt=1,
        body=body,
        timestamp=int(now.timestamp()),
        user_agent=signing.USER_AGENT,
        previous_secret=previous_secret,
        custom=custom,
    )
    outcome = asyncio.run(_send(url, body, headers, timeout, allow_private_networks))
    return ProbeResult(
        event_id=event_id,
        status_code=outcome.status_code,
        error=outcome.error,
        duration_ms=outcome.duration_ms,
        response_body=outcome.response_body.decode("utf-8", "replace"),
    )


async def _send(
    url: str, body: bytes, headers: dict[str, str], seconds: float, allow_private: bool
) -> Outcome:
    async with Sender(
        timeout=seconds,
        allow_private_networks=allow_private,
        max_connections=1,
        max_per_host=1,
        user_agent=signing.USER_AGENT,
    ) as sender:
        return await sender.send(url, body, headers)
