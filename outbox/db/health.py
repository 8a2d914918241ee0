"""What /metrics and /healthz read from the database: the backlog and the schema's state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors

from outbox.db.connect import with_timeout
from outbox.db.migrate import Migration
from outbox.errors import first_line
from outbox.sqlfiles import queries

Q = queries("metrics")


@dataclass(frozen=True)
class Backlog:
    """The deliveries still to send, as the gauges show them."""

    pending: int
    due: int
    oldest_due_age_s: float
    fan_out_events: int = 0  # committed events that have no deliveries yet
    fan_out_age_s: float = 0.0  # how long ago the oldest of them was written
    held: int = 0  # due, but held back by their endpoint's open circuit breaker
    # Endpoints whose circuit breaker is open, with how long it has been, in seconds.
    breakers_open: dict[str, float] = field(default_factory=dict)
    endpoints_disabled: int = 0


async def fan_out_lag(conn: psycopg.AsyncConnection[Any]) -> tuple[int, float]:
    """(events, oldest age in seconds) of the committed events not fanned out yet."""
    cur = await conn.execute(Q["fan_out_lag"])
    row = await cur.fetchone()
    return (0, 0.0) if row is None else (int(row[0]), float(row[1]))


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(with_timeout(url), autocommit=True)


async def backlog(url: str) -> Backlog | None:
    """Count pending, due and held deliveries and age the oldest due one, the fan-out's lag, the
    open circuit breakers and the disabled endpoints; None if the database fails."""
    try:
        async with await _connect(url) as conn:
            cur = await conn.execute(Q["backlog_measure"])
            row = await cur.fetchone()
            lag = await fan_out_lag(conn)
            cur = await conn.execute(Q["endpoints_breakers"])
            endpoints = await cur.fetchall()
    except psycopg.Error:
        return None
    pending, due, oldest, held = (0, 0, 0.0, 0) if row is None else row
    opened = {str(e): float(age) for e, age, _ in endpoints if e is not None}
    disabled = sum(int(n) for e, _, n in endpoints if e is None)
    return Backlog(
        int(pending), int(due), float(oldest), *lag, int(held), opened, endpoints_disabled=disabled
    )


async def lag(url: str) -> tuple[int, float] | None:
    """The fan-out's lag (fan_out_lag) on a connection of its own; None if the database fails."""
    try:
        async with await _connect(url) as conn:
            return await fan_out_lag(conn)
    except psycopg.Error:
        return None


async def readiness(url: str, migrations: Sequence[Migration]) -> str | None:
    """None when the database answers and has exactly `migrations` applied; else why not."""
    try:
        async with await _connect(url) as conn:
            cur = await conn.execute(Q["migrations_applied"])
            applied = {int(version): str(checksum) for version, checksum in await cur.fetchall()}
    except errors.UndefinedTable:
        return "schema not migrated: run `outbox migrate`"
    except psycopg.Error as exc:
        return f"database unreachable: {first_line(exc)}"
    return compare(applied, migrations)


def compare(applied: dict[int, str], migrations: Sequence[Migration]) -> str | None:
    """Why the applied versions and checksums differ from the migration files, or None."""
    known = {m.version: m for m in migrations}
    pending = [m.path.name for m in migrations if m.version not in applied]
    if pending:
        return f"{len(pending)} migration(s) pending ({pending[0]}…): run `outbox migrate`"
    unknown = sorted(set(applied) - set(known))
    if unknown:
        return f"the database has migration {unknown[0]:04d} this version does not know"
    edited = [m.path.name for m in migrations if applied[m.version] != m.checksum]
    if edited:
        return f"migration {edited[0]} differs from the one applied"
    return None
