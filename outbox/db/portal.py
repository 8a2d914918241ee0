"""Portal links in the database: revoking an account's links, and confining a transaction."""

from __future__ import annotations

from datetime import datetime
from typing import LiteralString

from outbox.db.admin import Connection
from outbox.sqlfiles import queries


def _sql(name: str) -> LiteralString:
    return queries("portal")[name]


def revoke(conn: Connection, account_id: str) -> datetime:
    """Refuse every link of the account made until now; returns when."""
    row = conn.execute(_sql("portal_revoke"), {"account_id": account_id}).fetchone()
    assert row is not None  # noqa: S101 - an upsert with RETURNING always returns its row
    revoked_at: datetime = row[0]
    return revoked_at


def revoked(conn: Connection, account_id: str, issued: datetime) -> bool:
    params = {"account_id": account_id, "issued": issued}
    row = conn.execute(_sql("portal_link_revoked"), params).fetchone()
    return bool(row and row[0])


def confine(conn: Connection, account_id: str) -> None:
    """The rest of the current transaction runs as outbox_account for this account alone."""
    conn.execute(_sql("portal_confine"), {"account_id": account_id})
