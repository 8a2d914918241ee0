"""A database password never reaches a command's output, whatever is wrong with DATABASE_URL or
the database: one line, a non-zero exit, no traceback, and "***" where the password would be."""

from __future__ import annotations

import json
import subprocess

import pytest
from support import env_without_outbox, outbox_cmd

PASSWORD = "s3cret-Pa55"
# Every one of these sends nothing beyond loopback: port 1 refuses at once.
URLS = [
    f"postgres://u:{PASSWORD}@[::1/db",
    f"postgresql://u:{PASSWORD}@127.0.0.1:1/db?connect_timeout=abc",
    f"postgresql://u:{PASSWORD}@127.0.0.1:1/db?bogus_option=1",
    f"postgresql://u:{PASSWORD}@127.0.0.1:1/db?connect_timeout=2",
    f"host=127.0.0.1 port=1 user=u password={PASSWORD} connect_timeout=2",
]
COMMANDS = [("endpoints", "list"), ("relay", "--once"), ("migrate",), ("deliveries", "list")]


def run(url: str, *args: str, log_format: str = "console") -> subprocess.CompletedProcess[str]:
    env = {**env_without_outbox(), "DATABASE_URL": url, "OUTBOX_LOG_FORMAT": log_format}
    return subprocess.run(
        outbox_cmd(*args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_no_command_shows_the_password(url: str, command: tuple[str, ...]) -> None:
    done = run(url, *command)
    assert done.returncode != 0
    assert PASSWORD not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    problems = [line for line in done.stderr.splitlines() if not line.startswith("database: ")]
    assert len(problems) == 1, done.stderr
    assert problems[0].startswith("outbox: error: ")


@pytest.mark.parametrize("url", URLS[3:])
def test_a_json_relay_that_cannot_reach_its_database_writes_json_without_the_password(
    url: str,
) -> None:
    done = run(url, "relay", "--once", log_format="json")
    assert done.returncode != 0
    assert PASSWORD not in done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert records[-1]["level"] == "error"
