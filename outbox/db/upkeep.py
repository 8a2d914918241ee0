"""Upkeep of endpoints that the relays' scheduled maintenance runs: disabling those that keep
failing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from outbox.sqlfiles import queries

Q = queries("endpoints")


def disable_failing_endpoints(conn: psycopg.Connection[Any], after: timedelta) -> list[str]:
    """Disable every enabled endpoint whose attempts have all failed over a span of `after`
    (outbox.disable_failing_endpoints), recording when and why and raising its
    outbox.endpoint.disabled event; returns their ids. Safe to call from any number of processes
    at once, on an autocommit connection or inside the caller's transaction."""
    cur = conn.execute(Q["endpoints_disable_failing"], {"after": after})
    return [str(endpoint_id) for (endpoint_id,) in cur.fetchall()]
