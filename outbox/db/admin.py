"""The operator's reads and writes on endpoints and deliveries, returned as plain dataclasses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg import errors
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from outbox import custom_headers
from outbox.db.connect import connect
from outbox.errors import OutboxError
from outbox.sqlfiles import queries

Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class EndpointSummary:
    """One row of `outbox endpoints list`."""

    id: str
    url: str
    enabled: bool
    event_types: list[str]
    description: str
    created_at: datetime
    account_id: str | None
    all_accounts: bool
    consecutive_failures: int  # failed attempts since the last success
    failing_since: datetime | None  # when the first of them started
    breaker_opened_at: datetime | None  # set while its circuit breaker is open
    probe_at: datetime | None  # while open: when the next probe may go
    probes: int  # while open: failed probes so far
    disabled_at: datetime | None
    disabled_reason: str | None
    header_names: list[str]  # its custom headers, by name only: values may be credentials
    rate_limit: int | None  # attempts started a second at most, across relays (None: no limit)
    pending: int
    failed: int


@dataclass(frozen=True)
class EndpointDetail:
    """An endpoint with its secret and its deliveries counted by status."""

    id: str
    url: str
    enabled: bool
    event_types: list[str]
    description: str
    created_at: datetime
    updated_at: datetime
    account_id: str | None
    all_accounts: bool
    consecutive_failures: int
    failing_since: datetime | None
    last_failure_at: datetime | None
    breaker_opened_at: datetime | None
    probe_at: datetime | None
    probes: int
    disabled_at: datetime | None
    disabled_reason: str | None
    secret: str = field(repr=False)
    pending: int
    failed: int
    delivered: int
    header_names: list[str]  # its custom headers, by name only: values may be credentials
    rate_limit: int | None
    previous_secret: str | None = field(repr=False)  # while a rotation's overlap lasts
    previous_secret_until: datetime | None
    ordered: bool = False  # one attempt at a time per record, in the record's order


@dataclass(frozen=True)
class Delivery:
    """A delivery with the type and time of its event."""

    id: int
    status: str
    attempts: int
    ladder_start: int
    event_id: str
    event_type: str
    event_created_at: datetime
    endpoint_id: str
    account_id: str | None
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    record: str | None = None  # the record its event is about
    sequence: int | None = None  # the event's place among the record's events
    ordered: bool = False  # written for an ordered endpoint
    waiting_for: int | None = None  # held: the delivery of the same record it waits for


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt, with the first 200 characters of the receiver's answer."""

    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_head: str | None
    response_length: int


@dataclass(frozen=True)
class Deletion:
    """What deleting an endpoint found; `deleted` is False when pending deliveries stopped it."""

    pending: int
    deliveries: int
    deleted: bool


@dataclass(frozen=True)
class Redelivery:
    """The outcome of requeueing deliveries by id."""

    requeued: list[int]
    already_pending: list[int]


@dataclass(frozen=True)
class Replay:
    """The outcome of replaying a window of events to one endpoint."""

    requeued: int
    created: int
    already_pending: int
    endpoint_enabled: bool


def _sql(name: str) -> LiteralString:
    return queries("admin")[name]


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    primary = diag.message_primary or str(exc).strip().splitlines()[0]
    return f"{primary}. {diag.message_hint}" if diag.message_hint else primary


@contextlib.contextmanager
def session(url: str) -> Iterator[Connection]:
    """A connection whose database errors come out as one-line OutboxErrors."""
    try:
        with connect(url) as conn:
            yield conn
    except errors.CheckViolation as exc:
        raise OutboxError(_message(exc)) from None
    except (errors.UndefinedTable, errors.InvalidSchemaName, errors.UndefinedFunction) as exc:
        raise OutboxError(
            f"the outbox schema is missing or out of date ({_message(exc)}); run `outbox migrate`"
        ) from None
    except psycopg.Error as exc:
        raise OutboxError(f"database error: {_message(exc)}") from None


def known_event_types(conn: Connection) -> list[str]:
    """Every registered event type, sorted."""
    return [name for (name,) in conn.execute(_sql("event_types_list")).fetchall()]


def endpoint_exists(conn: Connection, endpoint_id: str) -> bool:
    row = conn.execute(_sql("endpoint_exists"), {"endpoint_id": endpoint_id}).fetchone()
    return bool(row and row[0])


def create_endpoint(
    conn: Connection,
    *,
    url: str,
    event_types: Sequence[str],
    description: str,
    enabled: bool,
    secret: str,
    account_id: str | None = None,
    all_accounts: bool = False,
    max_per_account: int | None = None,
    headers: Mapping[str, str] | None = None,
    rate_limit: int | None = None,
    ordered: bool = False,
) -> str:
    """Insert an endpoint; returns its id. An account holding `max_per_account` endpoints
    already gets no more (OutboxError)."""
    params = {
        "headers": Jsonb(dict(headers or {})),
        "rate_limit": rate_limit,
        "url": url,
        "event_types": list(event_types),
        "description": description,
        "enabled": enabled,
        "secret": secret,
        "account_id": account_id,
        "all_accounts": all_accounts,
        "ordered": ordered,
    }
    with conn.transaction():
        if account_id is not None and max_per_account is not None:
            conn.execute(_sql("account_endpoints_lock"), params)
            counted = conn.execute(_sql("account_endpoints_count"), params).fetchone()
            held = int(counted[0]) if counted else 0
            if held >= max_per_account:
                raise OutboxError(
                    f"account {account_id} already has {held} endpoints, the most allowed "
                    f"(OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT={max_per_account}); delete one first"
                )
        row = conn.execute(_sql("endpoint_insert"), params).fetchone()
    if row is None:
        raise OutboxError("the database returned no id for the new endpoint")
    return str(row[0])


def set_endpoint_ordered(conn: Connection, endpoint_id: str, *, ordered: bool) -> bool:
    """Switch an endpoint's ordering per record for the deliveries written from now on; False
    when there is no such endpoint."""
    params = {"endpoint_id": endpoint_id, "ordered": ordered}
    return conn.execute(_sql("endpoint_ordered_set"), params).fetchone() is not None


def _hold_ordered(conn: Connection, delivery_ids: list[int]) -> None:
    """Requeued deliveries of ordered endpoints wait their record's turn (same transaction)."""
    conn.execute(_sql("deliveries_hold_ordered"), {"delivery_ids": delivery_ids})


def list_endpoints(conn: Connection, *, account_id: str | None = None) -> list[EndpointSummary]:
    with conn.cursor(row_factory=class_row(EndpointSummary)) as cur:
        return cur.execute(_sql("endpoints_list"), {"account_id": account_id}).fetchall()


def get_endpoint(conn: Connection, endpoint_id: str) -> EndpointDetail | None:
    with conn.cursor(row_factory=class_row(EndpointDetail)) as cur:
        return cur.execute(_sql("endpoint_get"), {"endpoint_id": endpoint_id}).fetchone()


@dataclass(frozen=True)
class EndpointChanges:
    """What `update_endpoint` changes; None leaves a field as it is. `rate_limit` is written
    only when `rate_limit_given` (None then means no limit)."""

    url: str | None = None
    event_types: Sequence[str] | None = None
    description: str | None = None
    set_headers: Mapping[str, str] = field(default_factory=dict)
    remove_headers: Sequence[str] = ()
    rate_limit: int | None = None
    rate_limit_given: bool = False
    ordered: bool | None = None  # per-record order for the deliveries written from then on


def update_endpoint(conn: Connection, endpoint_id: str, changes: EndpointChanges) -> bool:
    """Change an endpoint in place, in one transaction checked by the table's rules (a refused
    value changes nothing). A changed URL is where the next attempt of every pending delivery
    goes; changed event types apply to the events fanned out from then on. False when there is
    no such endpoint; OutboxError when a header to remove is not the endpoint's."""
    params = {"endpoint_id": endpoint_id}
    with conn.transaction():
        row = conn.execute(_sql("endpoint_options_lock"), params).fetchone()
        if row is None:
            return False
        headers = None
        if changes.set_headers or changes.remove_headers:
            try:
                new = custom_headers.merged(
                    row[0], changes.set_headers, list(changes.remove_headers)
                )
            except KeyError as exc:
                raise OutboxError(
                    f"endpoint {endpoint_id} has no header {exc.args[0]!r} to remove"
                ) from None
            headers = Jsonb(new)
        conn.execute(
            _sql("endpoint_update"),
            {
                **params,
                "url": changes.url,
                "event_types": None if changes.event_types is None else list(changes.event_types),
                "description": changes.description,
                "headers": headers,
                "rate_limit": changes.rate_limit,
                "rate_limit_given": changes.rate_limit_given,
                "ordered": changes.ordered,
            },
        )
    return True


def endpoint_headers(conn: Connection, endpoint_id: str) -> dict[str, str]:
    """The endpoint's custom headers with their values, to send them; never to show."""
    row = conn.execute(_sql("endpoint_headers"), {"endpoint_id": endpoint_id}).fetchone()
    return {} if row is None else dict(row[0])


def set_endpoint_enabled(conn: Connection, endpoint_id: str, *, enabled: bool) -> int | None:
    """Enable or disable; returns its pending deliveries, or None when there is no such endpoint."""
    params = {"endpoint_id": endpoint_id, "enabled": enabled}
    with conn.transaction():
        row = conn.execute(_sql("endpoint_enabled_set"), params).fetchone()
        if row is not None and enabled:
            conn.execute(_sql("relays_wake"))
    return None if row is None else int(row[0])


def rotate_secret(
    conn: Connection, endpoint_id: str, overlap: timedelta
) -> tuple[str, datetime | None] | None:
    """Give the endpoint a new secret, the replaced one signing too for `overlap`; returns the
    new secret and when the overlap ends (None: no overlap), or None when there is no such
    endpoint."""
    params = {"endpoint_id": endpoint_id, "overlap": overlap}
    row = conn.execute(_sql("endpoint_secret_rotate"), params).fetchone()
    return None if row is None else (row[0], row[1])


def delete_endpoint(conn: Connection, endpoint_id: str, *, allow_pending: bool) -> Deletion | None:
    """Delete an endpoint and its deliveries unless pending ones remain and that is not allowed.

    None when there is no such endpoint."""
    params = {"endpoint_id": endpoint_id}
    with conn.transaction():
        if conn.execute(_sql("endpoint_lock"), params).fetchone() is None:
            return None
        row = conn.execute(_sql("endpoint_deliveries_count"), params).fetchone()
        pending, total = (int(row[0]), int(row[1])) if row else (0, 0)
        if pending and not allow_pending:
            return Deletion(pending=pending, deliveries=total, deleted=False)
        conn.execute(_sql("endpoint_delete"), params)
    return Deletion(pending=pending, deliveries=total, deleted=True)


def list_deliveries(
    conn: Connection,
    *,
    endpoint_id: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    account_id: str | None = None,
    limit: int = 50,
) -> list[Delivery]:
    """Deliveries newest first; `event_type` may be an exact type, `prefix.*` or `*`."""
    params = {
        "endpoint_id": endpoint_id,
        "account_id": account_id,
        "status": status,
        "event_type": event_type,
        "limit": limit,
    }
    with conn.cursor(row_factory=class_row(Delivery)) as cur:
        return cur.execute(_sql("deliveries_list"), params).fetchall()


def get_delivery(conn: Connection, delivery_id: int) -> Delivery | None:
    with conn.cursor(row_factory=class_row(Delivery)) as cur:
        return cur.execute(_sql("delivery_get"), {"delivery_id": delivery_id}).fetchone()


def list_attempts(conn: Connection, delivery_id: int) -> list[Attempt]:
    with conn.cursor(row_factory=class_row(Attempt)) as cur:
        return cur.execute(_sql("attempts_list"), {"delivery_id": delivery_id}).fetchall()


def redeliver(conn: Connection, delivery_ids: Sequence[int]) -> Redelivery:
    """Requeue failed or delivered deliveries by id, due now, the ladder starting over.

    Raises OutboxError, changing nothing, when an id names no delivery."""
    ids = sorted(set(delivery_ids))
    with conn.transaction():
        found = dict(conn.execute(_sql("deliveries_status_lock"), {"delivery_ids": ids}).fetchall())
        unknown = [i for i in ids if i not in found]
        if unknown:
            listed = ", ".join(str(i) for i in unknown)
            raise OutboxError(f"no delivery with id {listed}")
        rows = conn.execute(_sql("deliveries_requeue"), {"delivery_ids": ids}).fetchall()
        if rows:
            _hold_ordered(conn, [r[0] for r in rows])
            conn.execute(_sql("relays_wake"))
    pending = [i for i, status in found.items() if status == "pending"]
    return Redelivery(requeued=sorted(r[0] for r in rows), already_pending=sorted(pending))


def redeliver_failed(
    conn: Connection, *, endpoint_id: str | None = None, since: datetime | None = None
) -> Redelivery:
    """Requeue every failed delivery (of one endpoint; last attempted at or after `since`)."""
    params = {"endpoint_id": endpoint_id, "since": since}
    with conn.transaction():
        rows = conn.execute(_sql("deliveries_failed_requeue"), params).fetchall()
        if rows:
            _hold_ordered(conn, [r[0] for r in rows])
            conn.execute(_sql("relays_wake"))
    return Redelivery(requeued=sorted(r[0] for r in rows), already_pending=[])


def replay(
    conn: Connection,
    *,
    endpoint_id: str,
    since: datetime,
    until: datetime | None = None,
    types: Sequence[str] | None = None,
    account_id: str | None = None,
) -> Replay | None:
    """Send an endpoint every subscribed event of a window again, in one transaction: the events
    fan-out would send it (its account's). With `account_id`, the endpoint must be that account's.

    None when there is no such endpoint."""
    with conn.transaction():
        lock = conn.execute(_sql("endpoint_share_lock"), {"endpoint_id": endpoint_id}).fetchone()
        if lock is None:
            return None
        subscribed, enabled, owner, all_accounts, ordered = lock
        if account_id is not None and owner != account_id:
            whose = "it has no account" if owner is None else f"it is account {owner}'s"
            raise OutboxError(f"endpoint {endpoint_id} is not account {account_id}'s ({whose})")
        params = {
            "account_id": owner,
            "all_accounts": all_accounts,
            "endpoint_id": endpoint_id,
            "since": since,
            "until": until,
            "subscribed": subscribed,
            "types": None if types is None else list(types),
            "ordered": ordered,
        }
        row = conn.execute(_sql("endpoint_replay"), params).fetchone()
        requeued, created, already_pending = (int(v) for v in row[:3]) if row else (0, 0, 0)
        if requeued or created:
            conn.execute(_sql("relays_wake"))
    return Replay(requeued, created, already_pending, endpoint_enabled=bool(enabled))
