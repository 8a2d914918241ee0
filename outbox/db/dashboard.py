"""The dashboard's reads: endpoint health over a window, hourly attempts, filtered deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

from psycopg.rows import class_row

from outbox.db.admin import Connection, Delivery
from outbox.sqlfiles import queries


@dataclass(frozen=True)
class Health:
    """One endpoint's deliveries created in the window, and their attempts."""

    endpoint_id: str
    delivered: int
    retrying: int  # pending after at least one failed attempt
    failed: int
    last_success: datetime | None
    attempts: int
    ok_attempts: int
    p50_ms: float | None

    @property
    def success_rate(self) -> float | None:
        return self.ok_attempts / self.attempts if self.attempts else None


@dataclass(frozen=True)
class Hour:
    """Attempts of one endpoint in one hour of the window, by outcome."""

    endpoint_id: str
    hour: int
    ok: int
    failed: int


@dataclass(frozen=True)
class TimelineAttempt:
    """One attempt on an endpoint's timeline."""

    delivery_id: int
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class EventBody:
    """What a delivery's request body is rendered from."""

    id: str
    type: str
    created_at: datetime
    data_json: str
    previous_json: str | None


def _sql(name: str) -> LiteralString:
    return queries("dashboard")[name]


def health(conn: Connection, since: datetime, endpoint_id: str | None = None) -> list[Health]:
    params = {"since": since, "endpoint_id": endpoint_id}
    with conn.cursor(row_factory=class_row(Health)) as cur:
        return cur.execute(_sql("endpoints_health"), params).fetchall()


def hourly(conn: Connection, since: datetime, endpoint_id: str | None = None) -> list[Hour]:
    params = {"since": since, "endpoint_id": endpoint_id}
    with conn.cursor(row_factory=class_row(Hour)) as cur:
        return cur.execute(_sql("attempts_hourly"), params).fetchall()


def deliveries(
    conn: Connection,
    endpoint_id: str,
    *,
    status: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[Delivery]:
    """An endpoint's deliveries, newest first; `event_type` may be exact, `prefix.*` or `*`."""
    params = {
        "endpoint_id": endpoint_id,
        "status": status,
        "event_type": event_type,
        "since": since,
        "limit": limit,
    }
    with conn.cursor(row_factory=class_row(Delivery)) as cur:
        return cur.execute(_sql("endpoint_deliveries"), params).fetchall()


def timeline(conn: Connection, endpoint_id: str, limit: int = 30) -> list[TimelineAttempt]:
    params = {"endpoint_id": endpoint_id, "limit": limit}
    with conn.cursor(row_factory=class_row(TimelineAttempt)) as cur:
        return cur.execute(_sql("endpoint_attempts_recent"), params).fetchall()


def event_body(conn: Connection, event_id: str) -> EventBody | None:
    with conn.cursor(row_factory=class_row(EventBody)) as cur:
        return cur.execute(_sql("event_for_body"), {"event_id": event_id}).fetchone()
