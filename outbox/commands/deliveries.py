"""`outbox deliveries list|show`, `outbox redeliver` and `outbox replay`: inspect and resend."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from outbox import render
from outbox.accounts import check_account
from outbox.commands import argument, counting_up_to, endpoint_id, shown, type_pattern
from outbox.commands.endpoints import TYPES_HELP, check_types, parse_types
from outbox.config import Settings
from outbox.db import admin, connect
from outbox.errors import ConfigError, OutboxError

STATUSES = ("pending", "delivered", "failed")
MAX_LIMIT = 10_000
ISO_HELP = "ISO 8601, such as 2024-01-15T10:30:00Z; without an offset it is UTC"


def parse_timestamp(text: str, option: str) -> datetime:
    """An ISO 8601 timestamp (a trailing Z allowed) as an aware datetime; naive means UTC."""
    candidate = text.strip()
    if candidate[-1:] in {"Z", "z"}:
        candidate = candidate[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        raise ConfigError(
            f"{option} {shown(text)} is not an ISO 8601 timestamp such as 2024-01-15T10:30:00Z"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_delivery_id(text: str) -> int:
    """A delivery id: a positive integer, in decimal digits."""
    value = int(text) if re.fullmatch(r"[0-9]{1,19}", text) else 0
    if value <= 0 or value >= 2**63:
        raise ConfigError(f"{shown(text)} is not a delivery id (a positive integer)")
    return value


def _timestamp(option: str) -> Callable[[str], datetime]:
    return argument(lambda text: parse_timestamp(text, option))


def register(sub: Any) -> None:
    _register_deliveries(sub)
    _register_redeliver(sub)
    _register_replay(sub)


def _register_deliveries(sub: Any) -> None:
    parser = sub.add_parser(
        "deliveries",
        help="inspect deliveries and their attempts",
        description="List deliveries or show one with every attempt.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser(
        "list", help="list deliveries, newest first", description="List deliveries, newest first."
    )
    listing.add_argument(
        "--endpoint", metavar="ID", type=endpoint_id, help="only this endpoint's deliveries"
    )
    listing.add_argument(
        "--account", metavar="ID", type=argument(check_account), help="only this account's"
    )
    listing.add_argument("--status", choices=STATUSES, help="only deliveries in this state")
    listing.add_argument(
        "--event-type",
        metavar="T",
        type=type_pattern,
        help="only this event type (deal.* and * work too)",
    )
    listing.add_argument(
        "--limit",
        type=counting_up_to(MAX_LIMIT),
        default=50,
        metavar="N",
        help="at most N rows (default 50)",
    )
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    show = actions.add_parser(
        "show",
        help="show a delivery and its attempts",
        description="Show a delivery, its event and every attempt with the start of each answer.",
    )
    show.add_argument(
        "delivery_id", metavar="ID", type=argument(parse_delivery_id), help="delivery id (a number)"
    )
    show.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def _register_redeliver(sub: Any) -> None:
    parser = sub.add_parser(
        "redeliver",
        help="send failed or delivered deliveries again",
        description="Put deliveries back to pending, due now. The retry ladder starts again "
        "from its first rung; attempt numbers keep counting up. Give delivery ids, or --failed "
        "for every failed delivery (narrowed by --endpoint and --since).",
    )
    parser.add_argument(
        "delivery_ids",
        nargs="*",
        metavar="DELIVERY_ID",
        type=argument(parse_delivery_id),
        help="delivery ids",
    )
    parser.add_argument("--failed", action="store_true", help="every failed delivery")
    parser.add_argument(
        "--endpoint", metavar="ID", type=endpoint_id, help="with --failed: only this endpoint's"
    )
    parser.add_argument(
        "--since",
        metavar="ISO",
        type=_timestamp("--since"),
        help=f"with --failed: only those whose last attempt was at or after this ({ISO_HELP})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run_redeliver)


def _register_replay(sub: Any) -> None:
    parser = sub.add_parser(
        "replay",
        help="send an endpoint a window of past events again",
        description="Send an endpoint every event of a window that it subscribes to: events "
        "it already had a delivery for are requeued (unless still pending), the others (it was "
        "created later, or disabled then) get a new delivery. One transaction.",
    )
    parser.add_argument(
        "--endpoint", required=True, metavar="ID", type=endpoint_id, help="endpoint id (ep_…)"
    )
    parser.add_argument(
        "--account",
        metavar="ID",
        type=argument(check_account),
        help="refuse unless the endpoint is this account's",
    )
    parser.add_argument(
        "--since",
        required=True,
        metavar="ISO",
        type=_timestamp("--since"),
        help=f"events created at or after ({ISO_HELP})",
    )
    parser.add_argument(
        "--until",
        metavar="ISO",
        type=_timestamp("--until"),
        help="events created before (default: now)",
    )
    parser.add_argument(
        "--types",
        metavar="PATTERNS",
        type=argument(lambda text: parse_types(text, "--types")),
        help=f"only these of its subscriptions: {TYPES_HELP}",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run_replay)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "show":
        return _show(args, settings)
    return _list(args, settings)


def _require_endpoint(conn: admin.Connection, endpoint_id: str | None) -> None:
    if endpoint_id is not None and not admin.endpoint_exists(conn, endpoint_id):
        raise OutboxError(f"no endpoint with id {render.clean(endpoint_id)!r}")


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(connect.resolve(settings).url) as conn:
        _require_endpoint(conn, args.endpoint)
        deliveries = admin.list_deliveries(
            conn,
            endpoint_id=args.endpoint,
            account_id=args.account,
            status=args.status,
            event_type=args.event_type,
            limit=args.limit,
        )
    if args.json:
        render.emit_json(deliveries)
        return 0
    if not deliveries:
        print("no deliveries match", file=sys.stderr)
        return 0
    columns = [
        render.Column("ID", align=">"),
        render.Column("STATUS"),
        render.Column("TRIES", align=">"),
        render.Column("LAST", align=">"),
        render.Column("CREATED UTC"),
        render.Column("EVENT TYPE", flex=True, min_width=10),
    ]
    if args.endpoint is None:
        columns.append(render.Column("ENDPOINT", flex=True, cut="middle", min_width=12))
    rows = [
        (
            d.id,
            d.status,
            d.attempts,
            _last_result(d.last_status_code, d.last_error),
            render.timestamp(d.created_at, seconds=False),
            d.event_type,
            d.endpoint_id,
        )[: len(columns)]
        for d in deliveries
    ]
    render.emit_table(columns, rows)
    return 0


def _last_result(status_code: int | None, error: str | None) -> str:
    if status_code is not None:
        return str(status_code)
    return "error" if error else render.NONE


def _show(args: argparse.Namespace, settings: Settings) -> int:
    delivery_id: int = args.delivery_id
    with admin.session(connect.resolve(settings).url) as conn:
        delivery = admin.get_delivery(conn, delivery_id)
        attempts = admin.list_attempts(conn, delivery_id) if delivery else []
    if delivery is None:
        raise OutboxError(f"no delivery with id {delivery_id}")
    if args.json:
        render.emit_json({"delivery": delivery, "attempts": attempts})
        return 0
    render.emit(_delivery_text(delivery, attempts))
    return 0


def _delivery_text(d: admin.Delivery, attempts: list[admin.Attempt]) -> str:
    restarted = f" (the ladder restarted after attempt {d.ladder_start})" if d.ladder_start else ""
    head = render.fields(
        [
            ("delivery", d.id),
            ("status", d.status),
            ("event", f"{d.event_id} {d.event_type} at {render.timestamp(d.event_created_at)}"),
            ("endpoint", d.endpoint_id),
            ("record", _record_text(d)),
            ("attempts", f"{d.attempts}{restarted}"),
            ("created at", render.timestamp(d.created_at)),
            ("next attempt", _next_attempt_text(d)),
            ("last attempt", render.timestamp(d.last_attempt_at)),
            ("last result", _last_result(d.last_status_code, d.last_error)),
            ("delivered at", render.timestamp(d.delivered_at)),
        ]
    )
    if not attempts:
        return f"{head}\n\nno attempts yet"
    return "\n\n".join([head, *(_attempt_text(a) for a in attempts)])


def _record_text(d: admin.Delivery) -> str:
    if d.record is None:
        return render.NONE
    text = f"{render.clean(d.record)} #{d.sequence}"
    return f"{text}, delivered in the record's order" if d.ordered else text


def _next_attempt_text(d: admin.Delivery) -> str:
    if d.status != "pending":
        return render.NONE
    if d.next_attempt_at is None and d.ordered:
        if d.waiting_for is None:
            return "waiting for the delivery ahead of it in its record's order"
        return f"waiting for delivery {d.waiting_for} of the same record"
    return render.timestamp(d.next_attempt_at)


def _attempt_text(a: admin.Attempt) -> str:
    status = render.NONE if a.status_code is None else str(a.status_code)
    lines = [
        f"attempt {a.attempt}  {render.timestamp(a.started_at)}  "
        f"{a.duration_ms:.0f} ms  status {status}"
    ]
    if a.error:
        lines.append(_wrapped("error", render.clean(a.error)))
    if a.response_head is not None:
        more = a.response_length - len(a.response_head)
        body = render.clean(a.response_head) + (f" {render.ELLIPSIS} ({more} more)" if more else "")
        lines.append(_wrapped("response", body))
    return "\n".join(lines)


def _wrapped(label: str, text: str) -> str:
    return textwrap.fill(
        text or '""',
        width=render.PIPE_WIDTH,
        initial_indent=f"  {label}: ",
        subsequent_indent="    ",
        break_on_hyphens=False,
    )


def run_redeliver(args: argparse.Namespace, settings: Settings) -> int:
    if args.failed == bool(args.delivery_ids):
        raise ConfigError("give delivery ids or --failed (one or the other)")
    if not args.failed and (args.endpoint is not None or args.since is not None):
        raise ConfigError("--endpoint and --since go with --failed")
    ids: list[int] = args.delivery_ids
    since: datetime | None = args.since
    with admin.session(connect.resolve(settings).url) as conn:
        if args.failed:
            _require_endpoint(conn, args.endpoint)
            outcome = admin.redeliver_failed(conn, endpoint_id=args.endpoint, since=since)
        else:
            outcome = admin.redeliver(conn, ids)
    for delivery_id in outcome.already_pending:
        print(f"delivery {delivery_id} is already pending; it is sent when due", file=sys.stderr)
    if args.json:
        render.emit_json(outcome)
    else:
        count = len(outcome.requeued)
        render.emit(f"requeued {count} deliver{'y' if count == 1 else 'ies'}")
    return 0


def replay(
    conn: admin.Connection,
    *,
    endpoint_id: str,
    since: datetime,
    until: datetime | None = None,
    types: list[str] | None = None,
    account: str | None = None,
) -> admin.Replay:
    """`outbox replay`'s work, shared with the dashboard: checks, then one transaction."""
    if until is not None and until <= since:
        raise ConfigError(f"--until {until.isoformat()} is not after --since {since.isoformat()}")
    if types is not None:
        check_types(types, admin.known_event_types(conn), "--types")
    outcome = admin.replay(
        conn,
        endpoint_id=endpoint_id,
        since=since,
        until=until,
        types=types,
        account_id=account,
    )
    if outcome is None:
        raise OutboxError(f"no endpoint with id {render.clean(endpoint_id)!r}")
    return outcome


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(connect.resolve(settings).url) as conn:
        outcome = replay(
            conn,
            endpoint_id=args.endpoint,
            since=args.since,
            until=args.until,
            types=args.types,
            account=args.account,
        )
    if not outcome.endpoint_enabled and (outcome.requeued or outcome.created):
        print(
            f"endpoint {args.endpoint} is disabled: these deliveries wait until "
            f"`outbox endpoints enable {args.endpoint}`",
            file=sys.stderr,
        )
    if args.json:
        render.emit_json(outcome)
    else:
        render.emit(
            f"requeued {outcome.requeued}, created {outcome.created}, "
            f"already pending {outcome.already_pending}"
        )
    return 0
