"""`/healthz` and `/metrics`: readiness follows the database and its schema, counters follow the
relay's attempts, gauges follow the backlog."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from support import stop, wait_until

from outbox import metrics
from tests.db.rows import fan_out

from . import add_endpoint, receiving, relay_env, start_logged_relay

Conn = psycopg.Connection[Any]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(url: str, observer: metrics.RelayMetrics | None = None) -> AsyncIterator[str]:
    """metrics.serve on a free loopback port; yields its base URL."""
    runner = await metrics.serve(0, url, observer or metrics.RelayMetrics(), host="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text format, or None when absent."""
    pattern = "^" + re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return None if match is None else float(match[1])


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def test_healthz_is_200_when_the_database_is_reachable_and_migrated(db_url: str) -> None:
    async with serving(db_url) as base:
        response = await get(base + "/healthz")
    assert response.status_code == 200


async def test_healthz_is_503_while_the_database_is_unreachable() -> None:
    async with serving(f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres") as base:
        response = await get(base + "/healthz")
    assert response.status_code == 503
    assert "database unreachable" in response.text


async def test_healthz_is_503_while_migrations_are_pending(empty_db_url: str) -> None:
    async with serving(empty_db_url) as base:
        response = await get(base + "/healthz")
    assert response.status_code == 503
    assert "outbox migrate" in response.text


async def test_metrics_still_answer_while_the_database_is_down() -> None:
    async with serving(f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres") as base:
        response = await get(base + "/metrics")
    assert response.status_code == 200
    assert sample(response.text, "outbox_database_up") == 0.0
    assert sample(response.text, "outbox_attempts_total", 'outcome="delivered"') == 0.0


async def test_backlog_gauges_count_pending_and_due_deliveries_and_the_fan_out_lag(
    db_url: str, conn: Conn
) -> None:
    add_endpoint(conn, f"http://127.0.0.1:{closed_port()}/hook")
    conn.execute("insert into stover.companies (name) select 'c' || i from generate_series(1, 3) i")
    async with serving(db_url) as base:
        waiting = (await get(base + "/metrics")).text
        health = (await get(base + "/healthz")).text
    assert sample(waiting, "outbox_fan_out_lag_events") == 3.0
    age = sample(waiting, "outbox_fan_out_lag_seconds")
    assert age is not None
    assert age > 0.0
    assert sample(waiting, "outbox_deliveries_pending") == 0.0
    assert health.startswith("ok\nfan-out lag: 3 events, oldest ")

    fan_out(conn)
    conn.execute(
        "update outbox.deliveries set next_attempt_at = now() - interval '90 seconds' "
        "where id = (select min(id) from outbox.deliveries)"
    )
    async with serving(db_url) as base:
        text = (await get(base + "/metrics")).text
    assert sample(text, "outbox_database_up") == 1.0
    assert sample(text, "outbox_deliveries_pending") == 3.0
    assert sample(text, "outbox_deliveries_due") == 3.0
    assert sample(text, "outbox_fan_out_lag_events") == 0.0
    assert sample(text, "outbox_fan_out_lag_seconds") == 0.0
    oldest = sample(text, "outbox_oldest_due_age_seconds")
    assert oldest is not None
    assert oldest >= 90.0


def test_attempt_counters_move_after_deliveries(
    conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    port = closed_port()
    base = f"http://127.0.0.1:{port}"
    env = relay_env(cli_env, ladder="0,0.2")
    # /ok answers 200; /fail answers 500, so its deliveries retry once and then fail.
    with receiving(behaviours={"/fail": lambda _: (500, b"no", 0.0)}) as receiver:
        add_endpoint(conn, receiver.url("/ok"), event_types=["company.*"])
        add_endpoint(conn, receiver.url("/fail"), event_types=["company.created"])
        conn.execute("insert into stover.companies (name) values ('a'), ('b')")
        relay = start_logged_relay(env, tmp_path / "relay.log", "--metrics-port", str(port))
        try:

            def counted() -> bool:
                try:
                    text = httpx.get(base + "/metrics", timeout=5).text
                except httpx.TransportError:
                    return False
                return (
                    sample(text, "outbox_attempts_total", 'outcome="delivered"') == 2.0
                    and sample(text, "outbox_attempts_total", 'outcome="failed"') == 2.0
                )

            wait_until(counted, timeout=60, what="attempt counters to reach their totals")
            text = httpx.get(base + "/metrics", timeout=5).text
            assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        finally:
            stop(relay)
    assert sample(text, "outbox_attempts_total", 'outcome="retrying"') == 2.0
    assert sample(text, "outbox_attempt_duration_seconds_count") == 6.0
    assert sample(text, "outbox_delivery_latency_seconds_count") == 2.0
    assert sample(text, "outbox_deliveries_pending") == 0.0


async def test_breaker_gauges_name_open_breakers_count_what_they_hold_and_disabled_endpoints(
    db_url: str, conn: Conn
) -> None:
    tripped = add_endpoint(conn, f"http://127.0.0.1:{closed_port()}/tripped")
    healthy = add_endpoint(conn, f"http://127.0.0.1:{closed_port()}/healthy")
    gone = add_endpoint(conn, f"http://127.0.0.1:{closed_port()}/gone")
    conn.execute("insert into stover.companies (name) select 'c' || i from generate_series(1, 3) i")
    fan_out(conn)
    conn.execute(
        "update outbox.endpoints set consecutive_failures = 10, failing_since = now(),"
        " last_failure_at = now(), breaker_opened_at = now() - interval '90 seconds',"
        " probe_at = now() + interval '1 minute' where id = %s",
        [tripped.id],
    )
    conn.execute("update outbox.endpoints set enabled = false where id = %s", [gone.id])
    async with serving(db_url) as base:
        text = (await get(base + "/metrics")).text
        conn.execute(
            "update outbox.endpoints set breaker_opened_at = null, probe_at = null where id = %s",
            [tripped.id],
        )
        closed = (await get(base + "/metrics")).text
    assert sample(text, "outbox_deliveries_pending") == 9.0
    # Due now: the healthy endpoint's; held: the tripped one's; the disabled one's are neither.
    assert sample(text, "outbox_deliveries_due") == 3.0
    assert sample(text, "outbox_deliveries_held") == 3.0
    assert sample(text, "outbox_endpoints_breaker_open") == 1.0
    assert sample(text, "outbox_endpoints_disabled") == 1.0
    open_for = sample(text, "outbox_endpoint_breaker_open_seconds", f'endpoint_id="{tripped.id}"')
    assert open_for is not None
    assert open_for >= 90.0
    assert healthy.id not in text
    assert sample(closed, "outbox_endpoints_breaker_open") == 0.0
    assert sample(closed, "outbox_deliveries_held") == 0.0
    assert "outbox_endpoint_breaker_open_seconds{" not in closed
