"""Fault-injection tests: real relay processes, real signals, real PostgreSQL, loopback receivers;
and the few helpers they share (writing a backlog, reading delivery state and relay logs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from support import Received, start_relay

Conn = psycopg.Connection[Any]


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
