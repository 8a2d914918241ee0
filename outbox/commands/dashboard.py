"""`outbox dashboard`: serve Settings > Webhooks > Outgoing as web pages."""

from __future__ import annotations

import argparse
from typing import Any

from outbox.commands import argument, whole_number
from outbox.config import Settings
from outbox.dashboard.access import check_bind, check_host
from outbox.db import connect, migrate
from outbox.errors import OutboxError


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "dashboard",
        help="serve the webhooks dashboard (Settings > Webhooks > Outgoing)",
        description="Serve the webhooks dashboard: endpoints with their health, create, "
        "rotate, disable, delete, deliveries with their attempts, redeliver and replay. It "
        "binds loopback unless told otherwise; any other address needs OUTBOX_DASHBOARD_TOKEN, "
        "which the page then asks for.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        type=argument(check_host),
        help="address to listen on (default 127.0.0.1; beyond loopback only with "
        "OUTBOX_DASHBOARD_TOKEN)",
    )
    parser.add_argument(
        "--port",
        default=8080,
        type=whole_number(0, 65535),
        help="port to listen on (default 8080; 0 picks a free one)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Refused before the database is touched or any socket bound.
    check_bind(args.host, settings.dashboard_token)
    db = connect.resolve(settings)
    todo = migrate.pending(db.url)
    if todo:
        raise OutboxError(
            f"{len(todo)} migration(s) pending ({todo[0].path.name}…); run `outbox migrate` first"
        )
    from outbox.dashboard import app  # noqa: PLC0415 - jinja2 only for this verb

    app.serve(settings, db.url, args.host, args.port)
    return 0
