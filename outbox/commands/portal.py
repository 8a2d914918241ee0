"""`outbox portal-link`: a signed, expiring link to one account's webhooks page, or revoking
every link of an account."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from outbox import render
from outbox.accounts import check_account
from outbox.ages import parse_age
from outbox.commands import argument, shown
from outbox.config import Settings
from outbox.dashboard import links
from outbox.db import admin, connect, portal
from outbox.errors import ConfigError

DEFAULT_BASE = "http://127.0.0.1:8080"
MAX_EXPIRY = timedelta(days=30)


def _expires(text: str) -> timedelta:
    age = parse_age(text, "--expires")
    if age > MAX_EXPIRY:
        raise ConfigError(f"--expires {shown(text)} is longer than 30 days; make a new link then")
    return age


def _base(text: str) -> str:
    if not (text.startswith(("http://", "https://")) and len(text) <= 2000) or any(
        c.isspace() for c in text
    ):
        raise ConfigError(
            f"--base-url {shown(text)} is not the dashboard's address, such as "
            "https://webhooks.example.com"
        )
    return text.rstrip("/")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "portal-link",
        help="print a link to one account's webhooks page, or revoke an account's links",
        description="Print a URL that opens the dashboard for ACCOUNT alone until it expires: "
        "its pages run as the role outbox_account, confined to that account by row-level "
        "security. Signed with OUTBOX_DASHBOARD_TOKEN, which the dashboard serving it needs "
        "too. --revoke refuses every link of the account made until now.",
    )
    parser.add_argument(
        "account", metavar="ACCOUNT", type=argument(lambda t: check_account(t, "ACCOUNT"))
    )
    parser.add_argument(
        "--expires",
        metavar="AGE",
        type=argument(_expires),
        default=timedelta(hours=1),
        help="how long the link works: 1h (default), 30m, 2d; at most 30d",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="the page shows, and changes nothing"
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        type=argument(_base),
        default=DEFAULT_BASE,
        help=f"where the dashboard is served (default {DEFAULT_BASE})",
    )
    parser.add_argument(
        "--revoke", action="store_true", help="refuse every link of ACCOUNT made until now"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.revoke:
        with admin.session(connect.resolve(settings).url) as conn:
            when = portal.revoke(conn, args.account)
        made = render.timestamp(when)
        render.emit(f"revoked every link of account {args.account} made until {made}")
        return 0
    if settings.dashboard_token is None:
        raise ConfigError(
            "portal links are signed with OUTBOX_DASHBOARD_TOKEN: set it here and for the "
            "dashboard that serves them"
        )
    link = links.make(args.account, args.expires.total_seconds(), read_only=args.read_only)
    render.emit(f"{args.base_url}/portal/{link.token(links.link_key(settings.dashboard_token))}")
    return 0
