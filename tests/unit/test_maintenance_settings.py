"""The scheduled-maintenance settings: OUTBOX_RETENTION and OUTBOX_RETENTION_SCHEDULE, as values
and as errors naming the variable."""

from __future__ import annotations

from datetime import timedelta

import pytest

from outbox import config
from outbox.errors import ConfigError


def test_defaults_keep_thirty_days_pruned_nightly() -> None:
    settings = config.load({})
    assert settings.retention == timedelta(days=30)
    assert settings.retention_schedule == "15 3 * * *"


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("30d", timedelta(days=30)),
        ("1h", timedelta(hours=1)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(hours=36)),
        (" 90D ", timedelta(days=90)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_retention(text: str, age: timedelta | None) -> None:
    assert config.load({"OUTBOX_RETENTION": text}).retention == age


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is not a duration"),
        ("30", "is not a duration"),
        ("thirty days", "is not a duration"),
        ("-1d", "is not a duration"),
        ("0d", "must be longer than zero"),
        ("59m", "must be at least 1h"),
        ("30s", "must be at least 1h"),
        ("200000w", "longer than 100 years"),
        ("none", "is not a duration"),
    ],
)
def test_bad_retention_names_the_variable(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as bad:
        config.load({"OUTBOX_RETENTION": text})
    assert str(bad.value).startswith(f"OUTBOX_RETENTION={text!r} ")
    assert needle in str(bad.value)


@pytest.mark.parametrize(
    ("text", "schedule"),
    [
        ("15 3 * * *", "15 3 * * *"),
        ("  0   */6 * * 1-5 ", "0 */6 * * 1-5"),
        # A sixth field gives seconds, as pgqueuer's croniter reads it.
        ("* * * * * */2", "* * * * * */2"),
    ],
)
def test_schedule(text: str, schedule: str) -> None:
    assert config.load({"OUTBOX_RETENTION_SCHEDULE": text}).retention_schedule == schedule


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is not a cron expression"),
        ("daily", "is not a cron expression"),
        ("@daily", "is not a cron expression"),
        ("* * * *", "is not a cron expression"),
        ("* * * * * * *", "is not a cron expression"),
        ("61 * * * *", "is not a cron expression"),
        ("* * * * * 60", "is not a cron expression"),
        ("0 0 30 2 *", "names no date that exists"),
    ],
)
def test_bad_schedule_names_the_variable(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as bad:
        config.load({"OUTBOX_RETENTION_SCHEDULE": text})
    assert str(bad.value).startswith(f"OUTBOX_RETENTION_SCHEDULE={text!r} ")
    assert needle in str(bad.value)
