"""JSON log lines: one object per line on stderr, stamped in UTC as ISO 8601 with microseconds,
from the project's loggers, the standard library's, and a relay's notices and fatal error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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


async def test_a_standard_library_warning_is_a_json_line_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json")
    # psycopg.pool warns at each failed connection attempt; nothing listens on port 1.
    pool = AsyncConnectionPool(
        "postgresql://postgres@127.0.0.1:1/x?connect_timeout=1",
        min_size=1,
        open=False,
        reconnect_timeout=0.5,
    )
    await pool.open(wait=False)
    with pytest.raises(PoolTimeout):
        await pool.wait(timeout=1.0)
    await pool.close()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    warnings = [line for line in lines if line.get("logger") == "psycopg.pool"]
    assert warnings, lines
    for line in warnings:
        assert line["level"] == "warning"
        assert "connect" in line["event"]
        assert STAMP.match(line["timestamp"])


def test_a_relay_that_cannot_reach_its_database_writes_only_json_lines() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(
        DATABASE_URL="postgresql://stover:hunter2@127.0.0.1:1/stover",
        OUTBOX_LOG_FORMAT="json",
    )
    done = subprocess.run(
        [sys.executable, "-m", "outbox", "relay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["level"] for line in lines] == ["info", "error"], done.stderr
    assert lines[0]["event"].startswith("database: DATABASE_URL (")
    assert "cannot reach the database" in lines[1]["event"]
    assert "hunter2" not in done.stderr
