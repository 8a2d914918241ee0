"""Prometheus /metrics and the /healthz readiness probe of `outbox relay --metrics-port`."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from outbox import webserver
from outbox.db import health
from outbox.db.migrate import Migration, available
from outbox.db.store import Claimed, Result

# A probe or scrape that takes longer than this reports the database as down rather than hang
# the orchestrator's health check.
CHECK_TIMEOUT = 3.0
OUTCOMES = ("delivered", "retrying", "failed")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Commit-to-delivery spans retries, so the buckets reach the seed ladder's hours.
LATENCY_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    *(60.0, 300.0, 1800.0, 7200.0, 21600.0),
)
# A backlog behind a rate limit waits as long as it takes to drain: minutes to hours.
LIMIT_WAIT_BUCKETS = (
    *(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0),
    *(60.0, 300.0, 900.0, 3600.0, 14400.0),
)


class RelayMetrics:
    """The relay's Observer: counts and times every attempt, and holds the backlog gauges."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.attempts = Counter(
            "outbox_attempts", "Delivery attempts by outcome.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.attempts.labels(outcome)  # export zeros from the start
        self.attempt_duration = Histogram(
            "outbox_attempt_duration_seconds",
            "Time from sending a delivery to its answer (or failure).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "outbox_delivery_latency_seconds",
            "Time from an event's creation in its writer's transaction to its successful "
            "delivery, retries included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "outbox_deliveries_pending", "Deliveries not yet delivered or failed.", registry=r
        )
        self.due = Gauge(
            "outbox_deliveries_due", "Pending deliveries due now for enabled endpoints.", registry=r
        )
        self.oldest_due_age = Gauge(
            "outbox_oldest_due_age_seconds",
            "How long the oldest due delivery has been waiting (0 when none is due).",
            registry=r,
        )
        self.fan_out_events = Gauge(
            "outbox_fan_out_lag_events",
            "Committed events not fanned out to deliveries yet.",
            registry=r,
        )
        self.fan_out_age = Gauge(
            "outbox_fan_out_lag_seconds",
            "How long ago the oldest committed event not fanned out yet was written (0: none).",
            registry=r,
        )
        self.held = Gauge(
            "outbox_deliveries_held",
            "Deliveries due now but held back by their endpoint's open circuit breaker.",
            registry=r,
        )
        self.breakers_open = Gauge(
            "outbox_endpoints_breaker_open",
            "Enabled endpoints whose circuit breaker is open.",
            registry=r,
        )
        self.breaker_open_for = Gauge(
            "outbox_endpoint_breaker_open_seconds",
            "How long an endpoint's circuit breaker has been open; a series per endpoint while it "
            "is open, none while it is closed.",
            ["endpoint_id"],
            registry=r,
        )
        self.disabled = Gauge(
            "outbox_endpoints_disabled",
            "Endpoints switched off: by an operator, a 410 Gone or sustained failure.",
            registry=r,
        )
        self.limit_wait = Histogram(
            "outbox_rate_limit_wait_seconds",
            "Attempts to an endpoint with a rate limit: from when each delivery fell due to the "
            "start its endpoint's limit gave it.",
            ["endpoint_id"],
            buckets=LIMIT_WAIT_BUCKETS,
            registry=r,
        )
        self.database_up = Gauge(
            "outbox_database_up", "1 when the last scrape could read the database.", registry=r
        )

    def attempt(self, claimed: Claimed, result: Result, latency_s: float | None) -> None:
        outcome = "retrying" if result.status == "pending" else result.status
        self.attempts.labels(outcome).inc()
        self.attempt_duration.observe(result.duration_ms / 1000.0)
        if latency_s is not None:
            self.delivery_latency.observe(max(latency_s, 0.0))
        if claimed.slot is not None:
            self.limit_wait.labels(claimed.endpoint_id).observe(max(claimed.slot[1], 0.0))

    def show_backlog(self, backlog: health.Backlog | None) -> None:
        """Set the gauges from a fresh reading; NaN when the database could not be read."""
        self.database_up.set(0.0 if backlog is None else 1.0)
        nan = float("nan")
        self.pending.set(nan if backlog is None else backlog.pending)
        self.due.set(nan if backlog is None else backlog.due)
        self.oldest_due_age.set(nan if backlog is None else backlog.oldest_due_age_s)
        self.fan_out_events.set(nan if backlog is None else backlog.fan_out_events)
        self.fan_out_age.set(nan if backlog is None else backlog.fan_out_age_s)
        self.held.set(nan if backlog is None else backlog.held)
        self.breakers_open.set(nan if backlog is None else len(backlog.breakers_open))
        self.disabled.set(nan if backlog is None else backlog.endpoints_disabled)
        self.breaker_open_for.clear()
        for endpoint_id, seconds in ({} if backlog is None else backlog.breakers_open).items():
            self.breaker_open_for.labels(endpoint_id).set(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def check(url: str, migrations: list[Migration]) -> str | None:
    """None when ready; else why not (unreachable, behind on migrations, or too slow)."""
    try:
        return await asyncio.wait_for(health.readiness(url, migrations), CHECK_TIMEOUT)
    except TimeoutError:
        return f"database did not answer within {CHECK_TIMEOUT:g}s"


def make_app(url: str, observer: RelayMetrics) -> web.Application:
    """`GET /metrics` (Prometheus text format) and `GET /healthz` (200 ready, 503 and why not)."""
    migrations = available()

    async def metrics(_: web.Request) -> web.Response:
        try:
            backlog = await asyncio.wait_for(health.backlog(url), CHECK_TIMEOUT)
        except TimeoutError:
            backlog = None
        observer.show_backlog(backlog)
        return web.Response(
            body=observer.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        reason = await check(url, migrations)
        if reason is not None:
            return web.Response(status=503, text=reason + "\n")
        try:
            lag = await asyncio.wait_for(health.lag(url), CHECK_TIMEOUT)
        except TimeoutError:
            lag = None
        if lag is None:
            return web.Response(text="ok\nfan-out lag: unknown\n")
        events, age = lag
        return web.Response(text=f"ok\nfan-out lag: {events} events, oldest {age:.1f} s\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(
    port: int,
    url: str,
    observer: RelayMetrics,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - a sidecar's metrics are scraped from other hosts
) -> web.AppRunner:
    """Start serving /metrics and /healthz on host:port; the caller cleans the runner up."""
    runner, _ = await webserver.start(
        make_app(url, observer), host, port, what="serve metrics", shutdown_timeout=1.0
    )
    return runner
