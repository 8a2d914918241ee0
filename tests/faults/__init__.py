"""Fault-injection tests: real relay processes, real signals, real PostgreSQL, loopback receivers;
and the few helpers they share (a dedicated server a test may restart, writing a backlog, reading
delivery state and relay logs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pgserver._commands import POSTGRES_BIN_PATH
from support import Received, env_without_outbox, start_relay

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Server:
    """A dedicated embedded PostgreSQL that a test may stop and restart (the `dedicated_server`
    fixture), never the machine's shared server."""

    url: str
    pgdata: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for running `outbox` subprocesses against this server (add OUTBOX_*
        settings with relay_env)."""
        return {
            **env_without_outbox(),
            "DATABASE_URL": self.url,
            "OUTBOX_ALLOW_PRIVATE_NETWORKS": "1",
            "OUTBOX_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this server as the user it runs as (pgserver's `pgserver` under root)."""
        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args]
        user = "pgserver" if os.geteuid() == 0 else None
        # pg_ctl's server inherits its output handles, so they are files, not pipes a
        # subprocess.run could wait on for ever.
        with tempfile.TemporaryFile() as out:
            done = subprocess.run(
                command, stdout=out, stderr=out, user=user, timeout=60, check=False
            )
            out.seek(0)
            output = out.read().decode(errors="replace")
        assert done.returncode == 0, f"pg_ctl {' '.join(args)} failed: {output}"

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: smart, fast or immediate) and start it again."""
        # `restart` starts the server again with the options it last ran with (postmaster.opts:
        # no TCP listener, the same socket directory), so its URI stays valid.
        self.pg_ctl("-w", "-m", mode, "-l", str(self.pgdata / "log"), "restart")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        """Start the server after stop(). `restart` of a stopped server starts it, and with the
        options it last ran with, which `start` would not know."""
        self.pg_ctl("-w", "-l", str(self.pgdata / "log"), "restart")


def count(url: str, query: str, params: list[Any] | None = None) -> int | None:
    """One number from a fresh connection; None while the server is away."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(query, params).fetchone()
    except psycopg.OperationalError:
        return None
    assert row is not None
    return int(row[0])


@contextmanager
def relay_process(env: dict[str, str], *args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """support.start_relay, with the relay killed (process group and all) if still running at
    exit, so a failing test leaves no relay behind. Tests stop it themselves to check how."""
    proc = start_relay(env, *args, log_path=str(log))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def add_endpoint(conn: Conn, url: str, event_types: tuple[str, ...] = ("*",)) -> str:
    """A working endpoint the way users make one: a plain INSERT of url and event types."""
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types) values (%s, %s) returning id",
        [url, list(event_types)],
    ).fetchone()
    assert row is not None
    return str(row[0])


def add_contacts(conn: Conn, n: int) -> None:
    """Insert `n` contacts in one statement; the capture triggers raise one event each."""
    conn.execute(
        "insert into stover.contacts (first_name, last_name, email)"
        " select 'Ada', 'Fault ' || i, 'ada' || i || '@example.com'"
        " from generate_series(1, %s) as i",
        [n],
    )


def scalar(conn: Conn, query: str, params: list[Any] | None = None) -> Any:
    row = conn.execute(query, params or []).fetchone()
    assert row is not None
    return row[0]


def statuses(conn: Conn) -> dict[str, int]:
    """How many deliveries are in each status."""
    rows = conn.execute("select status, count(*) from outbox.deliveries group by status")
    return {str(status): int(n) for status, n in rows.fetchall()}


def all_delivered(conn: Conn, total: int) -> bool:
    return statuses(conn).get("delivered", 0) == total


def event_ids(conn: Conn) -> set[str]:
    return {str(row[0]) for row in conn.execute("select id from outbox.events").fetchall()}


def delivery_counts(requests: list[Received]) -> Counter[str]:
    """How many requests the receiver got per X-Stover-Delivery-Id."""
    return Counter(r.headers["X-Stover-Delivery-Id"] for r in requests)


def duplicates(requests: list[Received]) -> int:
    """Requests beyond the first for each delivery id."""
    return len(requests) - len(delivery_counts(requests))


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The relay's JSON log lines (other stderr lines, such as the database notice, skipped)."""
    found: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def relay_env(cli_env: dict[str, str], **outbox: str) -> dict[str, str]:
    """`cli_env` plus OUTBOX_* settings, e.g. relay_env(cli_env, TIMEOUT="1")."""
    return {**cli_env, **{f"OUTBOX_{name}": value for name, value in outbox.items()}}
