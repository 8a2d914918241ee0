"""The ladder spaces attempts as the seed promises; Retry-After can slow them, within a cap."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from outbox.retry import RETRY_AFTER_CAP, next_delay, parse_retry_after

LADDER = (0.0, 60.0, 300.0, 1800.0, 7200.0)


@pytest.mark.parametrize(
    ("attempts_made", "expected"),
    [
        (0, 0.0),  # attempt 1 goes right after commit
        (1, 60.0),
        (2, 300.0),
        (3, 1800.0),
        (4, 7200.0),
        (5, None),  # the fifth attempt failed: the delivery is failed
        (6, None),
    ],
)
def test_the_default_ladder(attempts_made: int, expected: float | None) -> None:
    assert next_delay(LADDER, attempts_made) == expected


@pytest.mark.parametrize(
    ("ladder", "attempts_made", "expected"),
    [
        ((), 0, None),
        ((0.0,), 1, None),
        ((0.0, 0.5), 1, 0.5),
        ((0.0, 1.0, 2.0), 2, 2.0),
        ((0.0, 1.0, 2.0), 3, None),
    ],
)
def test_other_ladders(
    ladder: tuple[float, ...], attempts_made: int, expected: float | None
) -> None:
    assert next_delay(ladder, attempts_made) == expected


@pytest.mark.parametrize(
    ("attempts_made", "retry_after", "expected"),
    [
        (1, None, 60.0),
        (1, 0.0, 60.0),  # a shorter Retry-After never hurries the ladder
        (1, 30.0, 60.0),
        (1, 60.0, 60.0),
        (1, 120.0, 120.0),
        (1, 3600.0, 3600.0),
        (1, 86400.0, RETRY_AFTER_CAP),
        (1, math.inf, RETRY_AFTER_CAP),
        (1, math.nan, 60.0),
        (4, 9000.0, 7200.0),  # a rung above the cap is the cap for that attempt
        (4, 3000.0, 7200.0),
        (5, 120.0, None),  # Retry-After cannot revive an exhausted ladder
    ],
)
def test_retry_after_is_honoured_up_to_the_cap(
    attempts_made: int, retry_after: float | None, expected: float | None
) -> None:
    assert next_delay(LADDER, attempts_made, retry_after) == expected


def test_a_negative_attempt_count_is_a_bug() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        next_delay(LADDER, -1)


NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("Wed, 21 Oct 2015 07:29:00 GMT", 60.0),
        ("Wed, 21 Oct 2015 08:28:00 +0100", 0.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date in the past means now
        ("Wed, 21 Oct 2015 07:30:00 -0000", 120.0),  # no zone: read as UTC
        ("", None),
        ("soon", None),
        ("12 minutes", None),
        ("+5", None),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_compares_dates_across_time_zones() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=9)))
    assert parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now) == 60.0


def test_parse_retry_after_reads_a_naive_now_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", naive) == 60.0
