"""JSON log lines: one object per line on stderr, stamped in UTC as ISO 8601 with microseconds."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog

from outbox import logs

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """configure() binds structlog to this test's captured stderr, closed after it: later tests
    in the process must not log into it."""
    yield
    structlog.reset_defaults()


def test_json_lines_carry_event_level_fields_and_a_current_utc_timestamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json")
    log = structlog.get_logger("test").bind()
    before = datetime.now(UTC)
    for n in range(3):
        log.info("attempt", n=n, outcome="delivered")
    after = datetime.now(UTC)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert (line["event"], line["level"], line["outcome"]) == ("attempt", "info", "delivered")
        assert STAMP.match(line["timestamp"])
        stamped = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before.replace(microsecond=0) <= stamped <= after
