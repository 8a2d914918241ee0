"""The dashboard's reads: endpoint health over a window, hourly attempts, filtered deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import LiteralString

from psycopg.rows import class_row

from outbox.db.admin import Connection, Delivery
from outbox.sqlfiles import queries


@dataclass(frozen=True)
class Listed:
    """An endpoint as the list page shows it."""

    id: str
    url: str
    enabled: bool
    event_types: list[str]
    description: str
    account_id: str | None
    all_accounts: bool
    breaker_opened_at: datetime | None


@dataclass(frozen=True)
class EndpointPage:
    """One endpoint as its page shows it (the secret only ever masked)."""

    id: str
    url: str
    enabled: bool
    event_types: list[str]
    description: str
    account_id: str | None
    all_accounts: bool
    consecutive_failures: int
    breaker_opened_at: datetime | None
    probe_at: datetime | None
    probes: int
    disabled_at: datetime | None
    disabled_reason: str | None
    secret: str = field(repr=False)
    previous_secret_until: datetime | None
    pending: int


@dataclass(frozen=True)
class Hour:
    """One hour of an endpoint's window: the deliveries created in it and their attempts."""

    endpoint_id: str
    hour: int
    delivered: int
    retrying: int  # pending after at least one failed attempt
    failed: int
    attempts: int
    last_success: datetime | None

    @property
    def ok(self) -> int:
        """Attempts that answered 2xx."""
        return self.delivered

    @property
    def failed_attempts(self) -> int:
        return self.attempts - self.delivered


@dataclass(frozen=True)
class Health:
    """One endpoint's window: its hours added up, and the median attempt duration."""

    delivered: int
    retrying: int
    failed: int
    attempts: int
    last_success: datetime | None
    p50_ms: float | None

    @property
    def success_rate(self) -> float | None:
        return self.delivered / self.attempts if self.attempts else None


def health_of(hours: Sequence[Hour], p50_ms: float | None) -> Health:
    return Health(
        delivered=sum(h.delivered for h in hours),
        retrying=sum(h.retrying for h in hours),
        failed=sum(h.failed for h in hours),
        attempts=sum(h.attempts for h in hours),
        last_success=max((h.last_success for h in hours if h.last_success), default=None),
        p50_ms=p50_ms,
    )


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


def listed(conn: Connection) -> list[Listed]:
    with conn.cursor(row_factory=class_row(Listed)) as cur:
        return cur.execute(_sql("endpoints_listed")).fetchall()


def endpoint(conn: Connection, endpoint_id: str) -> EndpointPage | None:
    with conn.cursor(row_factory=class_row(EndpointPage)) as cur:
        return cur.execute(_sql("endpoint_page"), {"endpoint_id": endpoint_id}).fetchone()


def hours(conn: Connection, since: datetime, endpoint_id: str | None = None) -> list[Hour]:
    params = {"since": since, "endpoint_id": endpoint_id}
    with conn.cursor(row_factory=class_row(Hour)) as cur:
        return cur.execute(_sql("endpoint_hours"), params).fetchall()


def medians(
    conn: Connection, since: datetime, endpoint_id: str | None = None
) -> dict[str, float | None]:
    """Each endpoint's median attempt duration (ms) over its window's 200 newest deliveries."""
    params = {"since": since, "endpoint_id": endpoint_id}
    rows = conn.execute(_sql("endpoints_p50"), params).fetchall()
    return {str(endpoint): p50 for endpoint, p50 in rows}


def health(
    conn: Connection, since: datetime, endpoint_id: str | None = None
) -> tuple[dict[str, Health], dict[str, list[Hour]]]:
    """Every endpoint's (or one's) health over the window, and its hours for the chart."""
    by_endpoint: dict[str, list[Hour]] = {}
    for hour in hours(conn, since, endpoint_id):
        by_endpoint.setdefault(hour.endpoint_id, []).append(hour)
    p50 = medians(conn, since, endpoint_id)
    summed = {ep: health_of(by_endpoint.get(ep, []), value) for ep, value in p50.items()}
    return summed, by_endpoint


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
