"""One attempt: the signed request for a claimed delivery, and its result from what the receiver
did, counted, logged and handed to the observer."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import orjson
import structlog

from outbox import payload, retry, signing
from outbox.config import Settings
from outbox.db.store import Claimed, Result
from outbox.sender import Outcome, Sender

log = structlog.get_logger("outbox.relay")

# Rendered bodies kept for the retries and the other endpoints of an event: at most this many,
# and at most this many bytes (4,096 one-MiB events would otherwise be 4 GiB of relay memory).
BODIES_KEPT = 4096
BODIES_KEPT_BYTES = 32 * 1_048_576


# What RFC 9110 forbids in a header value, and aiohttp refuses to send: control characters but
# horizontal tab.
_HEADER_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The shape outbox.emit() requires of a type (the table does not check it: see 0012).
_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*){1,3}")
MAX_TYPE_LENGTH = 256


class UnsendableError(ValueError):
    """An event that cannot be sent as it is, whatever the receiver; the message says why."""


class PayloadTooLargeError(UnsendableError):
    """An event whose body is over OUTBOX_MAX_PAYLOAD_BYTES."""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class Tally:
    """What a stretch of relay work did."""

    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    def add(self, result: Result) -> None:
        self.claimed += 1
        if result.status == "delivered":
            self.delivered += 1
        elif result.status == "failed":
            self.failed += 1
        else:
            self.retrying += 1


class Observer(Protocol):
    """Receives every attempt's outcome (metrics hook into this)."""

    def attempt(self, claimed: Claimed, result: Result, latency_s: float | None) -> None: ...


def decide(
    claimed: Claimed, outcome: Outcome, ladder: Sequence[float], now: datetime
) -> tuple[str, float]:
    """The delivery's status after this attempt, and the delay before the next one."""
    if outcome.ok:
        return "delivered", 0.0
    # Redelivery sets ladder_start to the attempts made so far; one written by hand outside
    # 0..attempts counts as 0, so the ladder still ends.
    start = claimed.ladder_start if 0 <= claimed.ladder_start <= claimed.attempts else 0
    made = claimed.attempts + 1 - start
    retry_after = retry.parse_retry_after(outcome.retry_after, now)
    delay = retry.next_delay(ladder, made, retry_after)
    if delay is None:
        return "failed", 0.0
    return "pending", delay


async def slot_reached(c: Claimed) -> None:
    """Wait for a rate-limited delivery's slot: its endpoint's limit lets its attempt start then."""
    delay = c.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


@functools.lru_cache(maxsize=1024)
def custom_headers(text: str) -> tuple[tuple[str, str], ...]:
    """An endpoint's own headers from the claim's JSON text (cached: endpoints repeat)."""
    parsed = orjson.loads(text)
    return tuple((str(name), str(value)) for name, value in parsed.items())


def audit_text(body: bytes) -> str | None:
    """The response body as text fit for a PostgreSQL column (no NUL), or None when empty."""
    if not body:
        return None
    return body.decode("utf-8", "replace").replace("\x00", "\ufffd")


class Attempts:
    """Prepares, sends and judges attempts; keeps the endpoints that answered 410 Gone."""

    def __init__(
        self,
        sender: Sender,
        settings: Settings,
        clock: Callable[[], datetime],
        observer: Observer | None = None,
    ) -> None:
        self.sender = sender
        self.settings = settings
        self.clock = clock
        self.observer = observer
        self.tally = Tally()
        self.gone: set[str] = set()  # endpoints to disable once their outcomes are recorded
        self._bodies: dict[str, bytes] = {}
        self._bodies_bytes = 0
        # Bound once: the module's lazy logger would rebuild itself on every attempt's line.
        self._log = log.bind()
        # A line per delivered attempt only at debug level: at info, successes are counted in
        # the periodic summary (their audit is in outbox.attempts either way), and failed or
        # retried attempts get a line each. Writing a line per success measured ~20 us of the
        # relay's CPU per delivery. structlog's generic BoundLogger cannot say which levels it
        # keeps; it then gets every line and filters them itself.
        try:
            self._log_delivered = bool(self._log.is_enabled_for(logging.DEBUG))
        except AttributeError:
            self._log_delivered = True

    async def attempt(self, c: Claimed) -> Result:
        """Send one delivery and work out its outcome (recording it is the caller's job). Every
        claimed delivery gets a result, whatever fails."""
        if c.slot is not None:
            await slot_reached(c)
        try:
            body, headers, started = self.prepare(c)
        except Exception as exc:
            return self.unsendable(c, exc)
        try:
            return self.finish(c, started, await self.sender.send(c.url, body, headers))
        except Exception as exc:
            return self.broken(c, started, exc)

    def prepare(self, c: Claimed) -> tuple[bytes, dict[str, str], datetime]:
        """The body and signed headers of `c`'s next attempt, and when that attempt starts.
        Raises when the event cannot be sent as it is (too large, or not renderable)."""
        body = self._body(c)
        cap = self.settings.max_payload_bytes
        if len(body) > cap:
            raise PayloadTooLargeError(
                f"the payload is {len(body):,} bytes, over OUTBOX_MAX_PAYLOAD_BYTES ({cap:,})"
            )
        started = self.clock()
        headers = signing.delivery_headers(
            secret=c.secret,
            event_id=c.event_id,
            event_type=c.event_type,
            delivery_id=str(c.delivery_id),
            attempt=c.attempts + 1,
            body=body,
            timestamp=int(started.timestamp()),
            user_agent=signing.USER_AGENT,
            previous_secret=c.previous_secret,
            custom=custom_headers(c.headers_json) if c.headers_json is not None else (),
        )
        return body, headers, started

    def finish(self, c: Claimed, started: datetime, outcome: Outcome) -> Result:
        """The attempt's result from what the receiver did; counted, logged and observed."""
        if outcome.ok:
            status, delay = "delivered", 0.0
        else:
            status, delay = decide(c, outcome, self.settings.retry_ladder, self.clock())
        result = Result(
            delivery_id=c.delivery_id,
            lease=c.lease,
            attempt=c.attempts + 1,
            status=status,
            delay=delay,
            started_at=started,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            error=outcome.error,
            response_body=audit_text(outcome.response_body),
            endpoint_id=c.endpoint_id,
            probe=c.probe,
            failing=c.failing,
        )
        if outcome.gone:
            self.gone.add(c.endpoint_id)
        self._report(c, result)
        return result

    def unsendable(self, c: Claimed, exc: Exception) -> Result:
        """The result of a delivery whose request cannot be made: the same event would fail the
        same way on every attempt, so it fails now, with the reason on record."""
        reason = str(exc) if isinstance(exc, UnsendableError) else _describe(exc)
        return self._conclude(c, self.clock(), "failed", 0.0, f"not sent: {reason}")

    def broken(self, c: Claimed, started: datetime, exc: Exception) -> Result:
        """The result of an attempt that failed inside the relay around the send: a failed
        attempt that follows the ladder like any other."""
        failure = Outcome(False, None, f"relay error: {_describe(exc)}", b"", 0.0, None, False)
        status, delay = decide(c, failure, self.settings.retry_ladder, self.clock())
        return self._conclude(c, started, status, delay, failure.error)

    def _conclude(
        self, c: Claimed, started: datetime, status: str, delay: float, error: str | None
    ) -> Result:
        result = Result(
            delivery_id=c.delivery_id,
            lease=c.lease,
            attempt=c.attempts + 1,
            status=status,
            delay=delay,
            started_at=started,
            duration_ms=0.0,
            status_code=None,
            error=error,
            response_body=None,
            endpoint_id=c.endpoint_id,
            probe=c.probe,
            failing=c.failing,
            # Failed before or around the send: the receiver's breaker learns nothing from it.
            sent=False,
        )
        self._report(c, result)
        return result

    def take_gone(self) -> list[str]:
        """The endpoints that answered 410 Gone since the last call."""
        gone, self.gone = sorted(self.gone), set()
        return gone

    def _body(self, c: Claimed) -> bytes:
        body = self._bodies.get(c.event_id)
        if body is None:
            # Only a plain INSERT into outbox.events can write such a type (emit() and attach()
            # take none): its X-Stover-Event-Type header would fail every attempt alike, and
            # no subscription but '*' could name it.
            if _HEADER_FORBIDDEN.search(c.event_type):
                raise UnsendableError(
                    f"event type {c.event_type[:100]!r} holds a control character,"
                    " which no HTTP header may carry"
                )
            if len(c.event_type) > MAX_TYPE_LENGTH or not _TYPE.fullmatch(c.event_type):
                raise UnsendableError(
                    f"event type {c.event_type[:100]!r} is not a type such as deal.created"
                    " (two to four lowercase words joined by dots, at most 256 characters)"
                )
            body = payload.render_event(
                c.event_id,
                c.event_type,
                c.event_created_at,
                c.data_json,
                c.previous_json,
                record=c.record,
                sequence=c.sequence,
            )
            if (
                len(self._bodies) >= BODIES_KEPT
                or self._bodies_bytes + len(body) > BODIES_KEPT_BYTES
            ):
                self._bodies.clear()
                self._bodies_bytes = 0
            self._bodies[c.event_id] = body
            self._bodies_bytes += len(body)
        return body

    def _report(self, c: Claimed, result: Result) -> None:
        self.tally.add(result)
        if self.observer is not None:
            latency = None
            if result.status == "delivered":
                latency = (self.clock() - c.event_created_at).total_seconds()
            self.observer.attempt(c, result, latency)
        status = result.status
        if status == "delivered":
            if not self._log_delivered:
                return
            emit = self._log.debug
        elif status == "failed":
            emit = self._log.warning
        else:
            emit = self._log.info
        outcome = "retrying" if status == "pending" else status
        emit(
            "attempt",
            delivery_id=c.delivery_id,
            event_id=c.event_id,
            event_type=c.event_type,
            endpoint_id=c.endpoint_id,
            attempt=result.attempt,
            outcome=outcome,
            status_code=result.status_code,
            error=result.error,
            duration_ms=round(result.duration_ms, 1),
            next_attempt_in=result.delay if outcome == "retrying" else None,
        )
