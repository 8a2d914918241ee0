"""`outbox migrate`: apply pending migrations, or with --check report them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from outbox.config import Settings
from outbox.db import connect, migrate, scheduler


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "migrate",
        help="create or upgrade the outbox and stover schemas",
        description="Apply the pending migrations (idempotent, safe to run concurrently).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="apply nothing; exit 1 while any migration, or pgqueuer's tables, are pending",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    db = connect.resolve(settings)
    if args.check:
        todo = migrate.pending(db.url)
        for migration in todo:
            print(f"pending {migration.path.name}")
        tables = migrate.scheduler_missing(db.url)
        if tables:
            print(f"pending pgqueuer's tables ({', '.join(tables)})")
        if todo or tables:
            what = [f"{len(todo)} migration(s)"] if todo else []
            what += ["pgqueuer's tables"] if tables else []
            print(f"{' and '.join(what)} pending; run `outbox migrate`", file=sys.stderr)
            return 1
        print("schema is up to date", file=sys.stderr)
        return 0
    done = migrate.migrate(db.url)
    for migration in done:
        print(f"applied {migration.path.name}")
    total = len(migrate.available())
    print(
        f"migrations: {len(done)} applied now, {total} in all; pgqueuer "
        f"{scheduler.PGQUEUER_VERSION}'s scheduling tables in schema {scheduler.SCHEMA}; "
        "schema is up to date",
        file=sys.stderr,
    )
    return 0
