"""The relay's claim query: it keeps using the pending index when a million deliveries are
pending, and never reads the deliveries of endpoints it is not claiming for."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox.db.store import claim_statement
from outbox.db.turns import Turns
from outbox.sqlfiles import queries


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(_plan_nodes(child))
    return found


def test_claim_uses_the_pending_index_over_a_million_pending(conn: psycopg.Connection[Any]) -> None:
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

    # With rate limits too: an endpoint's due delivery is looked for in the index, not by a scan.
    for limits in (False, True):
        claim = claim_statement(walk=False, limits=limits)
        with conn.transaction():
            row = conn.execute(
                "explain (format json) " + claim,
                {"limit": 100, "lease": 45.0, "busy": [], **Turns().params()},
            ).fetchone()
        assert row is not None
        plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
        nodes = _plan_nodes(plan[0]["Plan"])
        scans = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes]

        on_deliveries = [s for s in scans if s[1] == "deliveries"]
        assert on_deliveries, scans
        assert all(kind != "Seq Scan" for kind, _, _ in on_deliveries), scans
        assert any(index == "deliveries_pending_idx" for _, _, index in on_deliveries), scans
        searched = {index for _, _, index in on_deliveries} - {None, "deliveries_pkey"}
        assert searched == {"deliveries_pending_idx"}, scans
        # The LIMIT sits inside the materialized CTE, under the row locks: only LIMIT rows are
        # locked.
        assert any(n["Node Type"] == "LockRows" for n in nodes), scans


def _rows_read(node: dict[str, Any]) -> int:
    """Rows the searching scans of outbox.deliveries in an EXPLAIN ANALYZE plan returned, over
    all loops, with those their filters removed: every scan but the lookups of claimed ids in
    the primary key."""
    read = 0
    for n in _plan_nodes(node):
        kind, index = n["Node Type"], n.get("Index Name")
        on_deliveries = n.get("Relation Name") == "deliveries" and kind != "Bitmap Heap Scan"
        bitmap = kind == "Bitmap Index Scan" and str(index).startswith("deliveries_")
        if (on_deliveries or bitmap) and "Scan" in kind and index != "deliveries_pkey":
            loops = n.get("Actual Loops", 1)
            read += (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * loops
    return read


@pytest.mark.parametrize("walk", [False, True], ids=["each-endpoint", "walk"])
def test_claim_never_reads_deliveries_of_disabled_or_skipped_endpoints(
    conn: psycopg.Connection[Any], walk: bool
) -> None:
    """Due deliveries of a disabled endpoint and of one at the relay's cap, older than any other,
    sit where a claim in due order across endpoints would start; the claim must not wade
    through them to reach the healthy endpoint's."""
    conn.execute(
        "insert into outbox.endpoints (id, url, event_types) values "
        "('ep_off', 'http://127.0.0.1:9/off', '{*}'),"
        " ('ep_busy', 'http://127.0.0.1:9/busy', '{*}'),"
        " ('ep_ok', 'http://127.0.0.1:9/ok', '{*}')"
    )
    conn.execute("update outbox.endpoints set enabled = false where id = 'ep_off'")
    conn.execute(
        """
        insert into outbox.deliveries (event_id, endpoint_id, next_attempt_at)
        select 'evt_' || g,
               case when g <= 10000 then 'ep_off' when g <= 20000 then 'ep_busy' else 'ep_ok' end,
               now() - interval '1 hour' + g * interval '1 millisecond'
        from generate_series(1, 20100) g
        """
    )
    conn.execute(
        "insert into outbox.events (id, type, data)"
        " select 'evt_' || g, 'deal.created', '{}' from generate_series(1, 20100) g"
    )
    conn.execute("analyze outbox.deliveries")
    params = {"limit": 50, "lease": 45.0, "busy": ["ep_busy"], **Turns().params()}
    claim = claim_statement(walk)

    with conn.transaction(force_rollback=True):
        row = conn.execute("explain (analyze, format json) " + claim, params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    # The claim's 50 and one probe per enabled endpoint not skipped; in due order across
    # endpoints it read the 20,000 ahead of them too.
    assert _rows_read(plan[0]["Plan"]) <= 60, json.dumps(plan)

    with conn.transaction(force_rollback=True):
        claimed = conn.execute(claim, params).fetchall()
    assert [r[9] for r in claimed] == ["ep_ok"] * 50
    # Oldest due first within the endpoint.
    assert [r[4] for r in claimed] == [f"evt_{g}" for g in range(20001, 20051)]


@pytest.mark.parametrize("walk", [False, True], ids=["each-endpoint", "walk"])
def test_a_claim_planned_on_empty_tables_looks_rows_up_by_key_once_they_fill(
    conn: psycopg.Connection[Any], walk: bool
) -> None:
    """PostgreSQL may keep a generic plan of the claim made before anything was written: it must
    not read whole tables once they hold rows, whether it asks each endpoint or walks the
    pending index for those with work."""
    claim = claim_statement(walk)
    names = ("limit", "lease", "busy", "after", "after_account", "afters")
    for n, name in enumerate(names, start=1):
        claim = claim.replace(f"%({name})s", f"${n}")
    conn.execute("set plan_cache_mode = force_generic_plan")
    conn.execute(f"prepare claim (integer, float8, text[], text, text, text) as {claim}")
    conn.execute(
        "insert into outbox.endpoints (id, url, event_types)"
        " values ('ep_1', 'http://127.0.0.1:9/', '{*}')"
    )
    with conn.transaction(force_rollback=True):
        conn.execute("execute claim (64, 45, '{}', '', '', '{}')")  # planned now, on empty tables
    conn.execute(
        "select outbox.emit('deal.created', jsonb_build_object('n', g))"
        " from generate_series(1, 2000) g"
    )

    with conn.transaction(force_rollback=True):
        row = conn.execute(
            "explain (analyze, format json) execute claim (64, 45, '{}', '', '', '{}')"
        ).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    scans = [
        (n["Node Type"], n.get("Relation Name"), n.get("Actual Rows"), n.get("Actual Loops"))
        for n in _plan_nodes(plan[0]["Plan"])
        if "Scan" in n["Node Type"]
    ]
    assert not [s for s in scans if s[0] == "Seq Scan" and s[1] in ("deliveries", "events")], scans
    # The 64 claimed and the walk's one step to the endpoint that has them.
    assert _rows_read(plan[0]["Plan"]) <= 64 + 1, scans


def _deliveries_probes(node: dict[str, Any]) -> int:
    """How many times the plan's scans of outbox.deliveries were started, over all loops."""
    return sum(
        n.get("Actual Loops", 1)
        for n in _plan_nodes(node)
        if n.get("Relation Name") == "deliveries" and "Scan" in n["Node Type"]
    )


def test_endpoints_with_nothing_pending_cost_the_claim_and_the_idle_probe_nothing(
    conn: psycopg.Connection[Any],
) -> None:
    """A thousand enabled endpoints, two with pending deliveries (one due, one waiting out a
    retry): the claim the relay uses past a hundred endpoints, and the idle relay's next-due
    probe, visit those two, not all thousand."""
    conn.execute(
        "insert into outbox.endpoints (id, url, event_types)"
        " select 'ep_' || lpad(g::text, 4, '0'), 'http://127.0.0.1:9/', '{*}'"
        " from generate_series(1, 1000) g"
    )
    conn.execute(
        """
        insert into outbox.deliveries (event_id, endpoint_id, next_attempt_at)
        select 'evt_' || g,
               case when g <= 50 then 'ep_0500' else 'ep_0900' end,
               case when g <= 50 then now() - interval '1 minute' else now() + interval '1 hour' end
        from generate_series(1, 55) g
        """
    )
    conn.execute(
        "insert into outbox.events (id, type, data)"
        " select 'evt_' || g, 'deal.created', '{}' from generate_series(1, 55) g"
    )
    conn.execute("analyze outbox.deliveries")
    conn.execute("analyze outbox.endpoints")
    deliveries = queries("deliveries")
    assert conn.execute(deliveries["endpoints_many"]).fetchone() == (True, False)  # no limits
    walk = claim_statement(walk=True)

    for after in ("", "ep_0700", "ep_0200"):
        params = {"limit": 64, "lease": 45.0, "busy": [], "after": after}
        with conn.transaction(force_rollback=True):
            row = conn.execute("explain (analyze, format json) " + walk, params).fetchone()
        assert row is not None
        plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
        # A step of the walk for each of the two and one past them each way, a probe of each
        # for due deliveries, the lookup of the claimed ids: a probe per endpoint made 1,000.
        assert _deliveries_probes(plan[0]["Plan"]) <= 10, (after, json.dumps(plan))
        with conn.transaction(force_rollback=True):
            claimed = conn.execute(walk, params).fetchall()
        assert [r[9] for r in claimed] == ["ep_0500"] * 50, after

    row = conn.execute(
        "explain (analyze, format json) " + deliveries["deliveries_next_due"]
    ).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    assert _deliveries_probes(plan[0]["Plan"]) <= 6, json.dumps(plan)
    due = conn.execute(deliveries["deliveries_next_due"]).fetchone()
    assert due is not None
    assert -70 < due[0] < -50
