"""The relay's claim query keeps using the due index when a million deliveries are pending."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from outbox.sqlfiles import queries


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(_plan_nodes(child))
    return found


def test_claim_uses_the_due_index_over_a_million_pending(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "insert into outbox.endpoints (id, url, event_types) values "
        "('ep_on', 'http://127.0.0.1:9/on', '{*}'), ('ep_off', 'http://127.0.0.1:9/off', '{*}')"
    )
    conn.execute("update outbox.endpoints set enabled = false where id = 'ep_off'")
    # The planner ignores whether a table is WAL-logged; unlogged loads several times faster.
    conn.execute("alter table outbox.attempts set unlogged")
    conn.execute("alter table outbox.deliveries set unlogged")
    # A million pending deliveries: a tenth due now, the rest spread over the coming hours, as
    # a backlog of retries looks; a few already delivered.
    conn.execute(
        """
        insert into outbox.deliveries (event_id, endpoint_id, next_attempt_at, status)
        select 'evt_' || g,
               case when g % 10 = 0 then 'ep_off' else 'ep_on' end,
               case when g % 10 = 1 then now() - interval '1 second'
                    else now() + (g % 7200) * interval '1 second' end,
               case when g % 100 = 99 then 'delivered' else 'pending' end
        from generate_series(1, 1000000) g
        """
    )
    conn.execute("analyze outbox.deliveries")
    conn.execute("analyze outbox.endpoints")

    claim = queries("deliveries")["deliveries_claim"]
    with conn.transaction():
        row = conn.execute(
            "explain (format json) " + claim,
            {"limit": 100, "lease": 45.0, "busy": []},
        ).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    nodes = _plan_nodes(plan[0]["Plan"])
    scans = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes]

    on_deliveries = [s for s in scans if s[1] == "deliveries"]
    assert on_deliveries, scans
    assert all(kind != "Seq Scan" for kind, _, _ in on_deliveries), scans
    assert any(index == "deliveries_due_idx" for _, _, index in on_deliveries), scans
    # The LIMIT sits inside the materialized CTE, under the row locks: only LIMIT rows are locked.
    assert any(n["Node Type"] == "LockRows" for n in nodes), scans
