"""The dashboard's reads: an endpoint's 24-hour health and hourly attempts from its deliveries,
and its deliveries page found through the endpoint's index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from outbox.dashboard.views import window_start
from outbox.db import dashboard as reads
from outbox.sqlfiles import queries

Conn = psycopg.Connection[Any]


def endpoints_with_deliveries(conn: Conn, endpoints: int, per_endpoint: int) -> list[str]:
    ids = [
        r[0]
        for r in conn.execute(
            "insert into outbox.endpoints (url, event_types) "
            "select 'http://127.0.0.1:9/' || g, '{*}' from generate_series(1, %s) g returning id",
            [endpoints],
        ).fetchall()
    ]
    conn.execute(
        "insert into outbox.events (type, data) "
        "select 'contact.created', jsonb_build_object('id', g) from generate_series(1, %s) g",
        [per_endpoint],
    )
    conn.execute(
        "insert into outbox.deliveries (event_id, endpoint_id) "
        "select e.id, ep.id from outbox.events e cross join outbox.endpoints ep"
    )
    return ids


def test_health_counts_the_windows_deliveries_and_their_attempts(conn: Conn) -> None:
    (endpoint,) = endpoints_with_deliveries(conn, 1, 4)
    since = window_start()
    # Delivered at the 2nd attempt, failed after 3, retrying after 1, pending untried.
    conn.execute(
        """
        with numbered as (select id, row_number() over (order by id) as n from outbox.deliveries)
        update outbox.deliveries d
        set status = (array['delivered', 'failed', 'pending', 'pending'])[n],
            attempts = (array[2, 3, 1, 0])[n],
            delivered_at = case when n = 1 then now() end
        from numbered where numbered.id = d.id
        """
    )
    conn.execute(
        "insert into outbox.attempts (delivery_id, attempt, started_at, duration_ms, status_code) "
        "select d.id, a, now(), 10 * a, case when d.status = 'delivered' and a = d.attempts "
        "then 200 else 500 end "
        "from outbox.deliveries d cross join generate_series(1, d.attempts) a"
    )
    healths, hours = reads.health(conn, since, endpoint)
    health = healths[endpoint]
    assert (health.delivered, health.failed, health.retrying) == (1, 1, 1)
    assert health.attempts == 6
    assert health.success_rate == 1 / 6
    assert health.last_success is not None
    assert health.p50_ms == 15.0  # attempts of 10, 20, 10, 20, 30, 10 ms
    assert sum(h.ok for h in hours[endpoint]) == 1
    assert sum(h.failed_attempts for h in hours[endpoint]) == 5
    assert all(0 <= h.hour < 24 for h in hours[endpoint])
    # Two days back is outside the window.
    conn.execute("update outbox.deliveries set created_at = now() - interval '2 days'")
    healths, hours = reads.health(conn, since, endpoint)
    empty = healths[endpoint]
    assert (empty.delivered, empty.attempts, empty.p50_ms) == (0, 0, None)
    assert hours == {}


def test_an_endpoints_deliveries_page_walks_its_own_index(conn: Conn) -> None:
    ids = endpoints_with_deliveries(conn, 20, 500)
    conn.execute("analyze outbox.deliveries")
    conn.execute("analyze outbox.events")
    query = queries("dashboard")["endpoint_deliveries"]
    for status, since in ((None, None), ("failed", datetime.now(UTC) - timedelta(hours=1))):
        params = {
            "endpoint_id": ids[3],
            "status": status,
            "event_type": None,
            "since": since,
            "limit": 50,
        }
        plan = "\n".join(r[0] for r in conn.execute(b"explain " + query.encode(), params))
        assert "deliveries_endpoint_created_idx" in plan, plan
        assert "Seq Scan on deliveries" not in plan, plan
