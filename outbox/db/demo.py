"""The demo's own rows in the outbox: its endpoint, its progress, and the audit queries it shows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import psycopg

from outbox.db import admin
from outbox.db.connect import with_timeout
from outbox.errors import OutboxError
from outbox.sqlfiles import queries

Q = queries("demo")
DESCRIPTION = "outbox demo"
_ENDPOINT_ID = re.compile(r"^ep_[0-9a-z]+$")
AUDITS = (
    ("audit_by_status", "Deliveries to the demo endpoint by status"),
    ("audit_most_attempts", "Every attempt of the delivery that needed the most tries"),
    ("audit_by_type", "Events by type: how many were delivered, and how many needed retries"),
)


@dataclass(frozen=True)
class Progress:
    """Where the demo endpoint's deliveries stand."""

    captured: int
    delivered: int
    first_try: int
    retrying: int
    pending: int
    failed: int
    attempts: int
    p50_s: float | None  # event created to delivered, over delivered deliveries
    p95_s: float | None
    waiting: int = 0  # committed events not fanned out yet (any endpoint's)


@dataclass(frozen=True)
class Audit:
    """One audit query as people can copy it, with its result."""

    title: str
    sql: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def create_endpoint(url: str, receiver_url: str, secret: str) -> str:
    """Switch off endpoints left by interrupted demo runs, then add this run's; returns its id."""
    with admin.session(url) as conn:
        conn.execute(Q["demo_leftovers_disable"], {"description": DESCRIPTION})
        return admin.create_endpoint(
            conn,
            url=receiver_url,
            event_types=["*"],
            description=DESCRIPTION,
            enabled=True,
            secret=secret,
        )


def finish(url: str, endpoint_id: str, *, keep: bool) -> None:
    """Kept: switch the endpoint off, so later writes queue nothing for a receiver that is gone.
    Not kept: delete it with its deliveries and attempts."""
    with admin.session(url) as conn:
        if keep:
            admin.set_endpoint_enabled(conn, endpoint_id, enabled=False)
        else:
            admin.delete_endpoint(conn, endpoint_id, allow_pending=True)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


class Watch:
    """A connection kept open to read the demo's progress again and again."""

    def __init__(self, url: str, endpoint_id: str) -> None:
        self.url = url
        self.endpoint_id = endpoint_id
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> Watch:
        self._conn = await psycopg.AsyncConnection.connect(with_timeout(self.url), autocommit=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def read(self) -> Progress:
        if self._conn is None:
            raise RuntimeError("Watch.read outside `async with`")
        cur = await self._conn.execute(Q["demo_progress"], {"endpoint_id": self.endpoint_id})
        row = await cur.fetchone()
        if row is None:
            raise OutboxError("the progress query returned nothing")
        captured, delivered, first_try, retrying, pending, failed, attempts, p50, p95, waiting = row
        return Progress(
            captured=int(captured),
            delivered=int(delivered),
            first_try=int(first_try),
            retrying=int(retrying),
            pending=int(pending),
            failed=int(failed),
            attempts=int(attempts),
            p50_s=_seconds(p50),
            p95_s=_seconds(p95),
            waiting=int(waiting),
        )


def audit_sql(name: str, endpoint_id: str) -> str:
    """The query as printed: the endpoint id written in, so it runs as pasted into psql."""
    if not _ENDPOINT_ID.match(endpoint_id):
        raise OutboxError(f"unexpected endpoint id {endpoint_id!r}")
    return Q[name].replace("%(endpoint_id)s", f"'{endpoint_id}'")


def audits(url: str, endpoint_id: str) -> list[Audit]:
    """Run the three audit queries against the demo endpoint's rows."""
    found: list[Audit] = []
    with admin.session(url) as conn:
        for name, title in AUDITS:
            cur = conn.execute(Q[name], {"endpoint_id": endpoint_id})
            columns = [column.name for column in cur.description or ()]
            found.append(Audit(title, audit_sql(name, endpoint_id), columns, cur.fetchall()))
    return found
