"""Circuit breakers in the database: the claim's probes, the rule that opens and closes them,
disabling endpoints that keep failing, and the operational events that say so."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from outbox.db.store import claim_statement
from outbox.db.turns import Turns
from outbox.relay.breaker import Verdict
from outbox.sqlfiles import queries

from .conftest import connect_as
from .rows import fan_out
from .test_claim_plan import _plan_nodes, _rows_read

Conn = psycopg.Connection[Any]
Q = queries("deliveries")
CLAIM_PARAMS = {"limit": 50, "lease": 45.0, "busy": [], **Turns().params()}


def endpoint(
    conn: Conn, endpoint_id: str, *, types: str = "{*}", account: str | None = None
) -> str:
    conn.execute(
        "insert into outbox.endpoints (id, url, event_types, account_id) values (%s, %s, %s, %s)",
        [endpoint_id, f"http://127.0.0.1:9/{endpoint_id}?key=hush", types, account],
    )
    return endpoint_id


def open_breaker(conn: Conn, endpoint_id: str, probe_in: str) -> None:
    conn.execute(
        "update outbox.endpoints set consecutive_failures = 10, failing_since = now(),"
        " last_failure_at = now(), breaker_opened_at = now(),"
        " probe_at = now() + %s::interval where id = %s",
        [probe_in, endpoint_id],
    )


def due_deliveries(conn: Conn, endpoint_id: str, first: int, count: int) -> None:
    conn.execute(
        "insert into outbox.deliveries (event_id, endpoint_id, next_attempt_at)"
        " select 'evt_' || g, %s, now() - interval '1 hour' + g * interval '1 millisecond'"
        " from generate_series(%s::integer, %s::integer) g",
        [endpoint_id, first, first + count - 1],
    )
    conn.execute(
        "insert into outbox.events (id, type, data)"
        " select 'evt_' || g, 'deal.created', '{}'"
        " from generate_series(%s::integer, %s::integer) g",
        [first, first + count - 1],
    )


def state(conn: Conn, endpoint_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "select enabled, consecutive_failures, failing_since, last_failure_at,"
            " breaker_opened_at, probe_at, probes, disabled_at, disabled_reason,"
            " extract(epoch from probe_at - now()) as probe_in"
            " from outbox.endpoints where id = %s",
            [endpoint_id],
        ).fetchone()
    assert row is not None
    return row


def operational(conn: Conn) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select type, data, account_id from outbox.events"
            " where type like 'outbox.%' order by id"
        ).fetchall()


# -- the claim --------------------------------------------------------------------------------


@pytest.mark.parametrize("walk", [False, True], ids=["each-endpoint", "walk"])
def test_an_open_breaker_gives_the_claim_one_probe_when_due_and_its_backlog_is_never_read(
    conn: Conn, walk: bool
) -> None:
    """An open breaker not due for a probe costs the claim what a disabled endpoint does:
    nothing of its backlog is read. One due for a probe gives one delivery, marked, and its
    probe time moves on by the lease; a closed breaker's endpoint gives as before."""
    for name in ("ep_held", "ep_probe", "ep_ok"):
        endpoint(conn, name)
    open_breaker(conn, "ep_held", "1 hour")
    open_breaker(conn, "ep_probe", "-1 second")
    due_deliveries(conn, "ep_held", 1, 10_000)
    due_deliveries(conn, "ep_probe", 10_001, 100)
    due_deliveries(conn, "ep_ok", 20_001, 100)
    conn.execute("analyze outbox.deliveries")
    claim = claim_statement(walk)

    with conn.transaction(force_rollback=True):
        row = conn.execute("explain (analyze, format json) " + claim, CLAIM_PARAMS).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    # The 50 claimed and a probe of each endpoint asked; the held backlog would be 10,000.
    assert _rows_read(plan[0]["Plan"]) <= 60, json.dumps(plan)

    with conn.transaction():
        claimed = conn.execute(claim, CLAIM_PARAMS).fetchall()
    taken = [(r[9], r[12]) for r in claimed]
    assert taken.count(("ep_probe", True)) == 1
    assert taken.count(("ep_ok", False)) == 49
    assert [r[4] for r in claimed if r[9] == "ep_probe"] == ["evt_10001"]  # its oldest due
    assert 40 < state(conn, "ep_probe")["probe_in"] <= 45
    assert state(conn, "ep_held")["probe_in"] > 3500


def test_one_probe_at_a_time_whichever_relay_claims(conn: Conn, db_url: str) -> None:
    """Two relays claiming at once: the one that locks the endpoint takes the probe, the other
    passes it by, and neither takes another while the first is in flight."""
    endpoint(conn, "ep_down")
    open_breaker(conn, "ep_down", "-1 second")
    due_deliveries(conn, "ep_down", 1, 20)
    claim = claim_statement(walk=False)
    with psycopg.connect(db_url) as first, psycopg.connect(db_url) as second:
        mine = first.execute(claim, CLAIM_PARAMS).fetchall()  # its transaction stays open
        theirs = second.execute(claim, CLAIM_PARAMS).fetchall()
        second.commit()
        first.commit()
        later = second.execute(claim, CLAIM_PARAMS).fetchall()
        second.commit()
    assert [(r[9], r[12]) for r in mine] == [("ep_down", True)]
    assert theirs == []
    assert later == []


# -- the rule: what outcomes do to an endpoint ----------------------------------------------------


def judge(conn: Conn, *verdicts: Verdict, after: int = 3) -> list[tuple[str, bool]]:
    """Run endpoints_judge as the relay does: the endpoints whose breaker opened or closed."""
    params = {
        "verdicts": orjson.dumps(list(verdicts)).decode(),
        "breaker_after": after,
        "probe_first": 5.0,
        "probe_longest": 300.0,
    }
    return [(str(a), bool(b)) for a, b in conn.execute(Q["endpoints_judge"], params).fetchall()]


def failed(endpoint_id: str, n: int, *, probes: int = 0, succeeded: bool = False) -> Verdict:
    now = datetime.now(UTC)
    if not n:
        return Verdict(endpoint_id, succeeded, 0, None, None, probes)
    return Verdict(endpoint_id, succeeded, n, now - timedelta(seconds=n), now, probes)


def test_a_run_of_failures_opens_the_breaker_and_failed_probes_space_the_next_ever_further(
    conn: Conn,
) -> None:
    endpoint(conn, "ep_x")
    assert judge(conn, failed("ep_x", 2)) == []
    assert state(conn, "ep_x")["consecutive_failures"] == 2
    assert judge(conn, failed("ep_x", 1)) == [("ep_x", True)]
    opened = state(conn, "ep_x")
    assert opened["consecutive_failures"] == 3
    assert 4 < opened["probe_in"] <= 5
    # Each failed probe doubles the wait: 10 s, 20 s, ... and never more than 300 s.
    for waits in (10, 20, 40, 80, 160, 300, 300):
        assert judge(conn, failed("ep_x", 1, probes=1)) == []
        assert waits - 1 < state(conn, "ep_x")["probe_in"] <= waits
    # A failure that was not the probe (an attempt in flight when it opened) moves nothing.
    before = state(conn, "ep_x")
    judge(conn, failed("ep_x", 1))
    after = state(conn, "ep_x")
    assert (after["probe_at"], after["probes"]) == (before["probe_at"], before["probes"])
    assert after["consecutive_failures"] == before["consecutive_failures"] + 1
    assert after["breaker_opened_at"] == opened["breaker_opened_at"]
    assert after["failing_since"] == opened["failing_since"]


def test_a_success_closes_the_breaker_and_ends_the_run(conn: Conn) -> None:
    endpoint(conn, "ep_x")
    judge(conn, failed("ep_x", 5))
    assert judge(conn, failed("ep_x", 0, succeeded=True)) == [("ep_x", False)]
    closed = state(conn, "ep_x")
    assert (closed["consecutive_failures"], closed["failing_since"], closed["probe_at"]) == (
        0,
        None,
        None,
    )
    assert (closed["breaker_opened_at"], closed["probes"]) == (None, 0)
    # A success followed, in the same batch, by failures: the run is those failures.
    judge(conn, failed("ep_x", 2, succeeded=True))
    assert state(conn, "ep_x")["consecutive_failures"] == 2


def test_a_healthy_endpoint_is_read_not_written(conn: Conn) -> None:
    endpoint(conn, "ep_ok")
    xmin = conn.execute("select xmin::text from outbox.endpoints").fetchone()
    assert judge(conn, failed("ep_ok", 0, succeeded=True)) == []
    assert conn.execute("select xmin::text from outbox.endpoints").fetchone() == xmin


# -- disabling --------------------------------------------------------------------------------


def failing_for(conn: Conn, endpoint_id: str, since: str, until: str = "0 seconds") -> None:
    """Failed attempts from `since` ago to `until` ago, none succeeding (the clock shifted)."""
    conn.execute(
        "update outbox.endpoints set consecutive_failures = 40,"
        " failing_since = now() - %s::interval, last_failure_at = now() - %s::interval"
        " where id = %s",
        [since, until, endpoint_id],
    )


def test_endpoints_whose_attempts_all_failed_for_the_span_are_disabled_with_why_and_when(
    conn: Conn,
) -> None:
    endpoint(conn, "ep_dead", account="acme")
    endpoint(conn, "ep_flaky")
    endpoint(conn, "ep_quiet")
    endpoint(conn, "ep_ok")
    failing_for(conn, "ep_dead", "6 days")
    failing_for(conn, "ep_flaky", "4 days")
    # Failed once six days ago and has had nothing to send since: not failing for days.
    failing_for(conn, "ep_quiet", "6 days", "6 days")

    rows = conn.execute("select * from outbox.disable_failing_endpoints('5 days')").fetchall()

    assert rows == [("ep_dead",)]
    dead = state(conn, "ep_dead")
    assert dead["enabled"] is False
    assert dead["disabled_at"] is not None
    assert dead["disabled_reason"].startswith("every attempt failed for 5 days: 40 in a row since")
    assert all(state(conn, e)["enabled"] for e in ("ep_flaky", "ep_quiet", "ep_ok"))
    [event] = operational(conn)
    assert (event["type"], event["account_id"]) == ("outbox.endpoint.disabled", "acme")
    data = event["data"]
    assert data["endpoint_id"] == "ep_dead"
    assert data["url"] == "http://127.0.0.1:9/ep_dead"
    assert data["reason"] == dead["disabled_reason"]
    assert data["consecutive_failures"] == 40
    assert data["disabled_at"].endswith("+00:00")
    assert "secret" not in data
    # Called again: nothing more to do.
    assert conn.execute("select * from outbox.disable_failing_endpoints('5 days')").fetchall() == []


@pytest.mark.parametrize("after", ["0 seconds", "-1 day", None])
def test_disabling_takes_a_positive_span(conn: Conn, after: str | None) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("select outbox.disable_failing_endpoints(%s::interval)", [after])


# -- operational events ---------------------------------------------------------------------------


def test_switching_an_endpoint_by_sql_raises_its_events_and_enabling_starts_afresh(
    conn: Conn,
) -> None:
    endpoint(conn, "ep_x", account="acme")
    open_breaker(conn, "ep_x", "1 minute")
    conn.execute("update outbox.endpoints set enabled = false where id = 'ep_x'")
    off = state(conn, "ep_x")
    assert off["disabled_reason"] == "disabled by " + str(
        conn.execute("select session_user").fetchone()[0]  # type: ignore[index]
    )
    conn.execute("update outbox.endpoints set enabled = true where id = 'ep_x'")
    on = state(conn, "ep_x")
    assert (on["disabled_at"], on["disabled_reason"], on["breaker_opened_at"]) == (None, None, None)
    assert (on["consecutive_failures"], on["failing_since"], on["probes"]) == (0, None, 0)
    # An update that changes nothing about it raises nothing.
    conn.execute("update outbox.endpoints set enabled = true, description = 'x' where id = 'ep_x'")
    events = operational(conn)
    assert [(e["type"], e["account_id"]) for e in events] == [
        ("outbox.endpoint.disabled", "acme"),
        ("outbox.endpoint.enabled", "acme"),
    ]
    assert events[1]["data"]["disabled_reason"] == off["disabled_reason"]


def test_operational_events_reach_outbox_subscribers_of_their_account_but_not_their_subject(
    conn: Conn,
) -> None:
    endpoint(conn, "ep_x", types="{*,outbox.*}", account="acme")
    endpoint(conn, "ep_everything", account="acme")
    endpoint(conn, "ep_ops", types="{outbox.*}", account="acme")
    endpoint(conn, "ep_exact", types="{outbox.endpoint.recovered}", account="acme")
    endpoint(conn, "ep_other_ops", types="{outbox.*}", account="globex")
    endpoint(conn, "ep_operator", types="{outbox.*}")
    conn.execute("update outbox.endpoints set all_accounts = true where id = 'ep_operator'")
    open_breaker(conn, "ep_x", "1 minute")
    judge(conn, failed("ep_x", 0, succeeded=True))
    conn.execute("update outbox.endpoints set enabled = false where id = 'ep_x'")
    conn.execute("update outbox.endpoints set enabled = true where id = 'ep_x'")
    fan_out(conn)

    got = conn.execute(
        "select d.endpoint_id, e.type from outbox.deliveries d"
        " join outbox.events e on e.id = d.event_id order by d.endpoint_id, e.id"
    ).fetchall()
    kinds = ["outbox.endpoint.recovered", "outbox.endpoint.disabled", "outbox.endpoint.enabled"]
    assert got == [
        ("ep_exact", "outbox.endpoint.recovered"),
        *[("ep_operator", kind) for kind in kinds],
        *[("ep_ops", kind) for kind in kinds],
    ]


def test_the_outbox_prefix_is_the_outbox_own(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="reserved"):
        conn.execute("select outbox.emit('outbox.endpoint.disabled', '{}')")
    # `outbox.*` is a pattern endpoints may subscribe with; `*` leaves these types out.
    matches = conn.execute(
        "select outbox.type_matches('{*}', 'outbox.endpoint.enabled'),"
        " outbox.type_matches('{outbox.*}', 'outbox.endpoint.enabled'),"
        " outbox.type_matches('{*}', 'deal.created')"
    ).fetchone()
    assert matches == (False, True, True)


def test_a_confined_account_role_switching_its_endpoint_raises_the_event_in_its_account(
    conn: Conn, db_url: str, login: Any
) -> None:
    endpoint(conn, "ep_mine", account="acme")
    customer = login("outbox_account")
    with connect_as(db_url, customer) as own:
        own.execute("set outbox.account = 'acme'")
        own.execute("update outbox.endpoints set enabled = false where id = 'ep_mine'")
        seen = own.execute("select type from outbox.events").fetchall()
    assert seen == [("outbox.endpoint.disabled",)]
    assert [(e["type"], e["account_id"]) for e in operational(conn)] == [
        ("outbox.endpoint.disabled", "acme")
    ]


def test_the_relay_role_records_breakers_and_disables_without_writing_events_itself(
    conn: Conn, db_url: str, login: Any
) -> None:
    endpoint(conn, "ep_x")
    failing_for(conn, "ep_x", "6 days")
    sidecar = login("outbox_relay")
    with connect_as(db_url, sidecar) as relay:
        assert judge(relay, failed("ep_x", 20)) == [("ep_x", True)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            relay.execute("insert into outbox.events (type, data) values ('deal.created', '{}')")
        disabled = relay.execute("select outbox.disable_failing_endpoints('5 days')").fetchall()
    assert disabled == [("ep_x",)]
    assert [e["type"] for e in operational(conn)] == ["outbox.endpoint.disabled"]


def test_with_no_probe_due_the_claim_reads_no_endpoint_for_its_probe_update(conn: Conn) -> None:
    endpoint(conn, "ep_ok")
    due_deliveries(conn, "ep_ok", 1, 10)
    with conn.transaction(force_rollback=True):
        row = conn.execute(
            "explain (analyze, format json) " + claim_statement(walk=False), CLAIM_PARAMS
        ).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    [probing] = [
        n
        for n in _plan_nodes(plan[0]["Plan"])
        if n["Node Type"] == "ModifyTable" and n.get("Relation Name") == "endpoints"
    ]
    scans = [n for n in _plan_nodes(probing) if "Scan" in n["Node Type"]]
    endpoint_scans = [n for n in scans if n.get("Relation Name") == "endpoints"]
    assert endpoint_scans, json.dumps(probing)
    assert all(n["Actual Loops"] == 0 for n in endpoint_scans), json.dumps(probing)
