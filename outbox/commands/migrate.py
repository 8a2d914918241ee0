"""`outbox migrate`: apply pending migrations, or with --check report them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from outbox.config import Settings
from outbox.db import connect, migrate


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "migrate",
        help="create or upgrade the outbox and stover schemas",
        description="Apply the pending migrations (idempotent, safe to run concurrently).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="apply nothing; exit 1 while any migration is pending",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    db = connect.resolve(settings)
    if args.check:
        todo = migrate.pending(db.url)
        for migration in todo:
            print(f"pending {migration.path.name}")
        if todo:
            print(f"{len(todo)} migration(s) pending; run `outbox migrate`", file=sys.stderr)
            return 1
        print("schema is up to date", file=sys.stderr)
        return 0
    done = migrate.migrate(db.url)
    for migration in done:
        print(f"applied {migration.path.name}")
    total = len(migrate.available())
    print(
        f"migrations: {len(done)} applied now, {total} in all; schema is up to date",
        file=sys.stderr,
    )
    return 0
