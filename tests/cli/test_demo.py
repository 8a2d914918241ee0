"""`outbox demo` end to end: embedded or given database, piped output, repeated runs."""

from __future__ import annotations

import io
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import env_without_outbox, outbox_cmd

from outbox import demo
from outbox.db.demo import Progress

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # anything but newline


def run_demo(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        outbox_cmd("demo", "--duration", "4", "--rate", "10", *args),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def figure(stdout: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}\s+(\d+)$", stdout, re.MULTILINE)
    assert match, f"{label!r} not in the summary:\n{stdout}"
    return int(match[1])


def check_output(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Summary:" in result.stdout
    for stream in (result.stdout, result.stderr):
        assert not CONTROL.search(stream), "control codes in piped output"
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    # Every captured event ended delivered or failed before the demo gave its figures.
    captured = figure(result.stdout, "events captured")
    assert captured > 0
    assert figure(result.stdout, "delivered") + figure(
        result.stdout, "failed after 5 attempts"
    ) == (captured)
    assert result.stdout.count("\nselect ") == 3


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh working directory outside pytest's own temporary root: every pytest session that
    starts on the machine resets that root to mode 0700, which cuts an embedded server running
    as its own unprivileged user (pgserver does so under root) off from its data."""
    path = Path(tempfile.mkdtemp(prefix="outbox-demo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_on_the_embedded_database_when_no_database_url(workdir: Path) -> None:
    env = {k: v for k, v in env_without_outbox().items() if k != "DATABASE_URL"}
    result = run_demo(env, workdir)
    check_output(result)
    assert "embedded PostgreSQL" in result.stderr
    pgdata = workdir / ".outbox" / "pgdata"
    assert (pgdata / "PG_VERSION").exists()
    assert not (pgdata / "postmaster.pid").exists(), "the embedded server should stop at exit"


def test_demo_reports_each_run_alone_and_keeps_data_when_asked(
    cli_env: dict[str, str], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    first = run_demo(cli_env, tmp_path, "--keep")
    check_output(first)
    assert 'psql "$DATABASE_URL"' in first.stdout
    second = run_demo(cli_env, tmp_path, "--fail-rate", "0")
    check_output(second)
    assert figure(second.stdout, "delivered") == figure(second.stdout, "events captured")

    # The application's events: switching the kept run's endpoint off raised one of its own.
    events = conn.execute(
        "select count(*) from outbox.events where type not like 'outbox.%'"
    ).fetchone()
    assert events is not None
    captured = figure(first.stdout, "events captured") + figure(second.stdout, "events captured")
    assert events[0] == captured
    # The kept run's endpoint stays, switched off; the other run's is gone.
    endpoints = conn.execute("select enabled from outbox.endpoints").fetchall()
    assert endpoints == [(False,)]


def test_piped_progress_is_plain_lines_within_80_columns() -> None:
    stream = io.StringIO()
    ticker = demo.Ticker(stream, tty=False)
    progress = Progress(123456, 123000, 120000, 400, 456, 10, 130000, 0.034, 1.2)
    ticker.show("settling", 1234.0, progress, force=True)
    ticker.done()
    text = stream.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    assert not CONTROL.search(text)
    assert len(text.rstrip("\n")) <= 79


def test_ctrl_c_cuts_the_demo_short_but_still_reports_and_tidies_up(
    cli_env: dict[str, str], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    with subprocess.Popen(
        outbox_cmd("demo", "--duration", "600"),
        env=cli_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # ends at EOF should the demo die early
            if line.startswith("writing "):
                break
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Interrupted:" in stdout
    assert "events captured" in stdout
    left = conn.execute("select count(*) from outbox.endpoints").fetchone()
    assert left == (0,)
