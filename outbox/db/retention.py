"""Retention: remove old events with their deliveries and attempts once nothing about them is
still pending, batch by batch, so the tables (and every VACUUM of them) stay the size of the
window an installation keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, LiteralString

import psycopg

from outbox.errors import OutboxError
from outbox.sqlfiles import queries

Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class Pruned:
    """What a prune removed (or, dry, would remove) so far."""

    cutoff: datetime
    dry_run: bool
    events: int = 0
    deliveries: int = 0  # their attempts go with them
    kept: int = 0  # events older than the cutoff kept because a delivery is still pending


def _sql(name: str) -> LiteralString:
    return queries("retention")[name]


def _one(conn: Connection, query: LiteralString, params: Any) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = conn.execute(query, params).fetchone()
    if row is None:
        raise OutboxError("the database returned no row")
    return row


def cutoff(conn: Connection, age: timedelta) -> datetime:
    """The database's now() minus `age`: the server's clock decides what is old, not ours."""
    when: datetime = _one(conn, "select now() - %s::interval", [age])[0]
    return when


def prune(
    conn: Connection,
    *,
    before: datetime,
    batch: int = 1000,
    dry_run: bool = False,
    progress: Callable[[Pruned], None] | None = None,
) -> Pruned:
    """Remove events created before `before` whose deliveries are all delivered or failed.

    Each batch is a transaction of its own: an interrupted prune keeps what it committed and
    loses nothing else. Events with a pending delivery are left, with all their deliveries, for
    a later run."""
    done = Pruned(cutoff=before, dry_run=dry_run)
    after = ""
    while True:
        with conn.transaction():
            rows = conn.execute(
                _sql("prune_batch"), {"after": after, "cutoff": before, "batch": batch}
            ).fetchall()
            old = [event_id for event_id, is_old in rows if is_old]
            if not old:
                # Ids follow insertion time: a batch with nothing old means the old events,
                # if any, are behind us.
                break
            params = {"event_ids": old}
            if dry_run:
                events, deliveries = _one(conn, _sql("prune_count"), params)
            else:
                deliveries = len(conn.execute(_sql("prune_deliveries"), params).fetchall())
                events = len(conn.execute(_sql("prune_events"), params).fetchall())
        done = replace(
            done,
            events=done.events + events,
            deliveries=done.deliveries + deliveries,
            kept=done.kept + len(old) - events,
        )
        if progress is not None:
            progress(done)
        if len(rows) < batch:
            break
        after = rows[-1][0]
    return done
