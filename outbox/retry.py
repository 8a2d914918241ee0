"""When a failed delivery is tried next: the retry ladder and a receiver's Retry-After."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_AFTER_CAP = 3600.0  # seconds: the most a receiver's Retry-After can push an attempt back
_DELTA_SECONDS_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def next_delay(
    ladder: Sequence[float], attempts_made: int, retry_after: float | None = None
) -> float | None:
    """Seconds until the next attempt, or None when the ladder is exhausted and delivery failed.

    `attempts_made` counts the attempts so far, including the one that just failed; attempt N+1
    is due `ladder[N]` seconds after attempt N failed. A longer Retry-After is honoured up to
    `max(rung, RETRY_AFTER_CAP)`, so a receiver can slow us down but never stall a delivery.
    """
    if attempts_made < 0:
        raise ValueError(f"attempts_made must be 0 or more, not {attempts_made}")
    if attempts_made >= len(ladder):
        return None
    rung = ladder[attempts_made]
    if retry_after is None or math.isnan(retry_after) or retry_after <= rung:
        return rung
    return min(retry_after, max(rung, RETRY_AFTER_CAP))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks for: delta-seconds or an HTTP-date; None if unusable.

    A negative delta or a date in the past means "now", 0. Naive datetimes are taken as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS_RE.fullmatch(text):
        return max(0.0, float(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    seconds = (_as_utc(moment) - _as_utc(now)).total_seconds()
    return max(0.0, seconds)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
