"""`outbox prune`: retention. Remove events older than an age with their deliveries and attempts."""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

from outbox import render
from outbox.ages import parse_age
from outbox.commands import argument, counting_up_to
from outbox.config import Settings
from outbox.db import admin, connect, retention
from outbox.progress import Progress

MAX_BATCH = 10_000


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "prune",
        help="remove old events with their deliveries and attempts (retention)",
        description="Remove events created longer ago than --older-than, with their deliveries "
        "and attempts, once none of their deliveries is pending: an event still being retried "
        "stays, whole, for a later run. Runs in batches of its own transactions, oldest first, "
        "so it can run from cron next to writers and relays, and an interrupted run keeps what "
        "it removed. Replays and redeliveries reach only what is kept.",
    )
    parser.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        type=argument(parse_age),
        help="events created longer ago than this: 30d, 12h, 90m, 1d12h, 2w",
    )
    parser.add_argument(
        "--batch",
        type=counting_up_to(MAX_BATCH),
        default=1000,
        metavar="N",
        help=f"events per transaction (default 1000, at most {MAX_BATCH:,})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be removed; remove nothing"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    age: timedelta = args.older_than
    progress = Progress("prune")
    verb = "would remove" if args.dry_run else "removed"

    started = time.monotonic()

    def show(done: retention.Pruned) -> None:
        if time.monotonic() - started < 2.0:  # a short prune prints its result, not progress
            return
        progress(f"{verb} {done.events:,} events and {done.deliveries:,} deliveries so far")

    with admin.session(connect.resolve(settings).url) as conn:
        before = retention.cutoff(conn, age)
        done = retention.prune(
            conn, before=before, batch=args.batch, dry_run=args.dry_run, progress=show
        )
    progress.close()
    if args.json:
        render.emit_json(done)
        return 0
    kept = f"; kept {done.kept:,} with a delivery still pending" if done.kept else ""
    render.emit(
        f"{verb} {done.events:,} event{'' if done.events == 1 else 's'} created before "
        f"{render.timestamp(done.cutoff)} and {done.deliveries:,} "
        f"deliver{'y' if done.deliveries == 1 else 'ies'} with their attempts{kept}"
    )
    return 0
