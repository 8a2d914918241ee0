"""Two relays host the same maintenance schedule: across both, each fire time is served by one
run."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from . import Conn, log_lines, relay_env, relay_process

pytestmark = pytest.mark.slow

PERIOD_S = 2
SCHEDULE = f"* * * * * */{PERIOD_S}"  # every second second: a sixth field gives seconds
RUNS = 8
RELAYS = 2


def runs(logs: list[Path]) -> list[dict[str, Any]]:
    """Every retention run either relay logged."""
    return [
        line
        for log in logs
        if log.exists()
        for line in log_lines(log)
        if line["event"] == "maintenance job done"
    ]


def test_two_relays_run_each_fire_time_of_a_schedule_once(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = relay_env(cli_env, RETENTION_SCHEDULE=SCHEDULE)
    logs = [tmp_path / f"relay{i}.log" for i in range(RELAYS)]
    with ExitStack() as stack:
        relays = [stack.enter_context(relay_process(env, log=log)) for log in logs]
        wait_until(lambda: len(runs(logs)) >= RUNS, timeout=90, what=f"{RUNS} runs")
        for proc in relays:
            proc.terminate()
        assert [proc.wait(20) for proc in relays] == [0] * RELAYS

    done = runs(logs)
    served = Counter(line["slot"] for line in done)
    doubled = {slot: n for slot, n in served.items() if n > 1}
    assert not doubled, doubled
    assert {line["job"] for line in done} == {"outbox.retention"}
    hosted = [line for log in logs for line in log_lines(log) if "hosted" in line["event"]]
    assert [line["event"] for line in hosted] == ["maintenance hosted"] * RELAYS
    # One schedule row for the job however many relays host it.
    rows = conn.execute("select entrypoint, expression from outbox.pgqueuer_schedules").fetchall()
    assert rows == [("outbox.retention", SCHEDULE)]
