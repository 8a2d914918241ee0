"""`outbox relay`: run the delivery relay until SIGTERM/SIGINT, or drain once with --once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
from collections.abc import Callable
from typing import Any

import structlog

from outbox.commands import seconds, whole_number
from outbox.config import Settings
from outbox.db import connect, migrate
from outbox.db.store import Store
from outbox.errors import OutboxError
from outbox.relay import Options, Relay, Tally
from outbox.sender import Sender
from outbox.signing import USER_AGENT

log = structlog.get_logger("outbox.relay")


# Bounds that keep a relay sane: more than 10,000 attempts or claims at once is past what one
# process's sockets and one claim query serve; a poll or a VACUUM more often than every 0.1 s
# would keep an idle relay busy.
MOST = 10_000
DAY = 86_400.0


def register(sub: Any) -> None:
    defaults = Options()
    parser = sub.add_parser(
        "relay",
        help="deliver due webhooks (run as a sidecar; any number may share a database)",
        description="Claim due deliveries, sign and POST them, record every attempt. Stops "
        "gracefully on SIGTERM/SIGINT: in-flight attempts finish (up to --grace seconds) and "
        "the rest are handed back.",
    )
    parser.add_argument("--once", action="store_true", help="drain what is due now, then exit")
    parser.add_argument(
        "--concurrency",
        type=whole_number(1, MOST),
        default=defaults.concurrency,
        help=f"attempts in flight at once (default {defaults.concurrency})",
    )
    parser.add_argument(
        "--per-endpoint",
        type=whole_number(1, MOST),
        default=defaults.per_endpoint,
        help=f"attempts in flight to one endpoint (default {defaults.per_endpoint})",
    )
    parser.add_argument(
        "--batch",
        type=whole_number(1, MOST),
        default=defaults.batch,
        help=f"deliveries claimed per query (default {defaults.batch})",
    )
    parser.add_argument(
        "--poll-interval",
        type=seconds(0.1, 3600),
        default=defaults.poll_interval,
        help=f"longest idle sleep without a wake-up, seconds (default {defaults.poll_interval})",
    )
    parser.add_argument(
        "--grace",
        type=seconds(0.1, 3600),
        default=defaults.grace,
        help=f"seconds in-flight attempts get on shutdown (default {defaults.grace})",
    )
    parser.add_argument(
        "--vacuum-every",
        type=seconds(0.1, DAY, off=True),
        default=defaults.vacuum_every,
        help="seconds between VACUUMs of outbox.deliveries while a backlog drains, when this "
        "role may (its owner; outbox_relay from PostgreSQL 17); 0 leaves it to autovacuum "
        f"(default {defaults.vacuum_every:g})",
    )
    parser.add_argument(
        "--summary-every",
        type=seconds(0.1, DAY, off=True),
        default=defaults.summary_every,
        help="seconds between the info lines that count finished attempts; a delivered "
        "attempt gets a line of its own only at OUTBOX_LOG_LEVEL=debug, a retried one at info, "
        f"a failed one at warning; 0 turns the summary off (default {defaults.summary_every:g})",
    )
    parser.add_argument(
        "--no-maintenance",
        action="store_true",
        help="host no scheduled maintenance (retention, OUTBOX_RETENTION); by default every "
        "relay hosts it, and each job runs once per schedule however many relays run",
    )
    parser.add_argument(
        "--metrics-port",
        type=whole_number(1, 65535),
        default=None,
        help="serve /healthz and Prometheus /metrics on this port",
    )
    # A sidecar's stderr goes to a log pipeline: with OUTBOX_LOG_FORMAT=json every line of it,
    # the database notice and a fatal error included, is a JSON record.
    parser.set_defaults(func=run, structured_log=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    db = connect.resolve(settings)
    todo = migrate.pending(db.url)
    if todo:
        raise OutboxError(
            f"{len(todo)} migration(s) pending ({todo[0].path.name}…); run `outbox migrate` first"
        )
    options = Options(
        concurrency=args.concurrency,
        per_endpoint=min(args.per_endpoint, args.concurrency),
        batch=min(args.batch, args.per_endpoint, args.concurrency),
        poll_interval=args.poll_interval,
        grace=args.grace,
        vacuum_every=args.vacuum_every,
        summary_every=args.summary_every,
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        if args.once:
            tally = runner.run(drain(db.url, settings, options))
            print(json.dumps(tally.__dict__))
            return 0
        runner.run(
            serve(
                db.url,
                settings,
                options,
                metrics_port=args.metrics_port,
                maintenance=not args.no_maintenance,
            )
        )
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: measured ~25% less CPU per request than asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def drain(url: str, settings: Settings, options: Options) -> Tally:
    """Send everything due now, batch after batch, then return what was done."""
    store = Store(url)
    await store.open()
    total = Tally()
    try:
        async with _sender(settings, options) as sender:
            relay = Relay(store, sender, settings, options)
            while True:
                tally = await relay.run_once()
                if not tally.claimed:
                    break
                for name in ("claimed", "delivered", "retrying", "failed"):
                    setattr(total, name, getattr(total, name) + getattr(tally, name))
    finally:
        await store.close()
    return total


def _tune_gc() -> None:
    """Collect garbage less often than CPython's default of every 700 net allocations.

    Each attempt allocates a few hundred objects (aiohttp's request, response, futures), so the
    default collects several times per attempt. Moving everything alive after start-up out of
    the collector's sight and raising the first threshold measured 12-20% less relay CPU per
    delivery in `outbox bench deliver`; the relay's memory stays bounded (see `bench backlog`).
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)


async def serve(
    url: str,
    settings: Settings,
    options: Options,
    *,
    metrics_port: int | None = None,
    maintenance: bool = True,
) -> None:
    """Run the relay, and unless told not to the scheduled maintenance, until SIGTERM or
    SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = Store(url)
    try:
        await asyncio.wait_for(store.open(), timeout=15)
    except (TimeoutError, Exception) as exc:
        raise OutboxError(f"cannot reach the database: {exc or type(exc).__name__}") from None
    observer = None
    server = None
    if metrics_port is not None:
        from outbox import metrics  # noqa: PLC0415 - only when asked for

        observer = metrics.RelayMetrics()
        server = await metrics.serve(metrics_port, url, observer)
    try:
        async with (
            _sender(settings, options) as sender,
            _maintenance(url, settings, stop, maintenance),
        ):
            relay = Relay(store, sender, settings, options, observer=observer)
            _tune_gc()
            await relay.run(stop)
    finally:
        if server is not None:
            await server.cleanup()
        await store.close()


def _maintenance(
    url: str, settings: Settings, stop: asyncio.Event, on: bool
) -> contextlib.AbstractAsyncContextManager[None]:
    """The maintenance scheduler beside the relay (imported only then: pgqueuer takes a quarter
    of a second to load)."""
    if not on:
        log.info("maintenance not hosted (--no-maintenance)")
        return contextlib.nullcontext()
    from outbox.relay import maintenance  # noqa: PLC0415 - only a relay that hosts it

    return maintenance.hosted(url, settings, stop)


def _sender(settings: Settings, options: Options) -> Sender:
    return Sender(
        timeout=settings.timeout,
        allow_private_networks=settings.allow_private_networks,
        max_connections=options.concurrency,
        # The relay caps attempts per endpoint itself. A per-host cap as low as that would let
        # one hanging endpoint take every connection to a host it shares with healthy ones.
        max_per_host=options.concurrency,
        user_agent=USER_AGENT,
    )
