"""`outbox endpoints`: create, list, show, update, disable, enable, re-key and delete
endpoints."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from outbox import netguard, render, signing
from outbox.accounts import check_account
from outbox.ages import parse_age
from outbox.commands import TYPE_PATTERN, argument, endpoint_id, event_type, shown
from outbox.commands import endpoint_options as options
from outbox.config import Settings
from outbox.db import admin, connect
from outbox.errors import ConfigError, OutboxError

if TYPE_CHECKING:
    from outbox.probe import ProbeResult

DESCRIPTION_LIMIT = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
TYPES_HELP = (
    "comma-separated event types: exact (deal.created), a prefix (deal.*), * for every "
    "application event, or outbox.* for the operational events about the account's endpoints"
)
OPERATIONAL_PREFIX = "outbox."


def mask(secret: str) -> str:
    """The secret as listings show it: enough to tell two apart, not enough to sign."""
    return f"whsec_{render.ELLIPSIS}{secret[-4:]}"


def check_url(url: str) -> str:
    """The URL if the endpoint URL rule (the table's and the relay's) accepts it, else
    ConfigError."""
    problem = netguard.check_url(url)
    if problem is not None:
        raise ConfigError(f"endpoint URL is refused: {problem}")
    return url


def check_description(text: str) -> str:
    """The description if it is a line of at most 1,000 characters, else ConfigError: the
    table's rule (outbox.description_problem) in the same words."""
    if len(text) > DESCRIPTION_LIMIT:
        problem = f"longer than {DESCRIPTION_LIMIT} characters"
    elif _CONTROL.search(text):
        problem = "it holds a control character (a line break, tab or escape code)"
    else:
        return text
    raise ConfigError(f"--description is refused: {problem}")


def parse_types(text: str, option: str = "--events") -> list[str]:
    """Split a comma-separated list of type patterns, dropping repeats; empty or malformed
    entries are errors (whether each names a known type is check_types's question)."""
    patterns = [part.strip() for part in text.split(",")]
    if any(not p for p in patterns):
        raise ConfigError(
            f"{option} {shown(text)} has an empty entry; give types such as deal.*,post.*"
        )
    for pattern in patterns:
        if not TYPE_PATTERN.fullmatch(pattern):
            raise ConfigError(
                f"{option}: {shown(pattern)} is not an event type such as deal.created, "
                "a prefix such as deal.* or *"
            )
    return list(dict.fromkeys(patterns))


def type_matches(pattern: str, event_type: str) -> bool:
    """Does one pattern match an event type? The same rule as the SQL outbox.type_matches: `*`
    is every type but the outbox's own operational ones (`outbox.*`), which are subscribed to
    by name or prefix."""
    if pattern == event_type:
        return True
    if pattern == "*":
        return not event_type.startswith(OPERATIONAL_PREFIX)
    return pattern.endswith(".*") and event_type.startswith(pattern[:-1])


def check_types(patterns: Iterable[str], known: Sequence[str], option: str = "--events") -> None:
    """ConfigError naming the first pattern that is neither a known type nor matches one."""
    for pattern in patterns:
        if not any(type_matches(pattern, name) for name in known):
            raise ConfigError(
                f"{option}: event type {pattern!r} is not known and matches no known type; "
                f"known types: {', '.join(known) or 'none'}"
            )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _endpoint_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint_id", metavar="ID", type=endpoint_id, help="endpoint id (ep_…)")


def _account(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--account", metavar="ID", type=argument(check_account), default=None, help=text
    )


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "endpoints",
        help="manage the endpoints webhooks are sent to",
        description="Create, inspect, change, switch off and on, re-key and delete webhook "
        "endpoints.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    _register_create(actions)
    _register_reads(actions)
    _register_update(actions)
    _register_changes(actions)
    parser.set_defaults(func=run)


def _register_create(actions: Any) -> None:
    create = actions.add_parser(
        "create",
        help="add an endpoint and print its secret",
        description="Add an endpoint. Its id and signing secret are printed once: keep the "
        "secret now (`show --reveal-secret` is the only other way to see it).",
    )
    create.add_argument(
        "url",
        metavar="URL",
        type=argument(check_url),
        help="absolute http(s) URL the events are POSTed to",
    )
    create.add_argument(
        "--events", required=True, metavar="TYPES", type=argument(parse_types), help=TYPES_HELP
    )
    create.add_argument(
        "--description",
        default="",
        type=argument(check_description),
        help=f"a note for people, one line of at most {DESCRIPTION_LIMIT:,} characters "
        "(default: none)",
    )
    create.add_argument(
        "--disabled", action="store_true", help="create it switched off: no deliveries yet"
    )
    _account(create, "the account whose events it gets (default: none)")
    create.add_argument(
        "--all-accounts",
        action="store_true",
        help="the operator's feed: every account's events (not with --account)",
    )
    options.add_options(create, default_rate=None)
    create.add_argument(
        "--ordered",
        action="store_true",
        help="deliver each record's events one at a time, in the record's order; a delivery "
        "waiting to be retried holds back only its own record's later ones",
    )
    _json_flag(create)


def _register_update(actions: Any) -> None:
    update = actions.add_parser(
        "update",
        help="change an endpoint's URL, event types, description, headers, rate limit or ordering",
        description="Change an endpoint in place: its id, secret and delivery history stay. A "
        "new URL is where the next attempt of every pending delivery goes; new event types "
        "apply to events fanned out from now on. Nothing changes if any value is refused.",
    )
    _endpoint_id(update)
    update.add_argument(
        "--url", metavar="URL", type=argument(check_url), help="the new absolute http(s) URL"
    )
    update.add_argument("--events", metavar="TYPES", type=argument(parse_types), help=TYPES_HELP)
    update.add_argument(
        "--description",
        type=argument(check_description),
        help=f"a new note, one line of at most {DESCRIPTION_LIMIT:,} characters ('' for none)",
    )
    options.add_options(update, default_rate=options.NOT_GIVEN)
    update.add_argument(
        "--remove-header",
        dest="remove_headers",
        metavar="NAME",
        action="append",
        type=argument(options.header_name),
        default=[],
        help="stop sending this custom header; repeat for more",
    )
    order = update.add_mutually_exclusive_group()
    order.add_argument(
        "--ordered",
        dest="ordered",
        action="store_const",
        const=True,
        help="deliver each record's events one at a time, in the record's order, from the "
        "events fanned out next",
    )
    order.add_argument(
        "--unordered",
        dest="ordered",
        action="store_const",
        const=False,
        help="stop ordering per record (deliveries already held still wait their turn)",
    )
    _json_flag(update)


def _register_reads(actions: Any) -> None:
    listing = actions.add_parser(
        "list", help="list endpoints", description="List endpoints with their backlog."
    )
    _account(listing, "only this account's endpoints")
    _json_flag(listing)

    show = actions.add_parser("show", help="show one endpoint", description="Show one endpoint.")
    _endpoint_id(show)
    show.add_argument(
        "--reveal-secret", action="store_true", help="print the whole secret instead of its end"
    )
    _json_flag(show)


def _register_changes(actions: Any) -> None:
    for verb, text in (
        ("disable", "stop sending to it; its pending deliveries wait until it is enabled"),
        (
            "enable",
            "resume sending to it, starting with its pending deliveries; its circuit breaker "
            "closes and its failed attempts are forgotten",
        ),
    ):
        switch = actions.add_parser(verb, help=text, description=text[0].upper() + text[1:] + ".")
        _endpoint_id(switch)

    rotate = actions.add_parser(
        "rotate-secret",
        help="replace the signing secret and print the new one",
        description="Replace the signing secret and print the new one (only here). For the "
        "--overlap the replaced secret signs too: webhook-signature carries a signature by "
        "each, and X-Stover-Signature stays signed by the replaced one until the overlap ends, "
        "so receivers switch at their own pace (README: Rotating a secret).",
    )
    _endpoint_id(rotate)
    rotate.add_argument(
        "--overlap",
        default=timedelta(hours=24),
        type=argument(_overlap),
        metavar="AGE",
        help="how long the replaced secret keeps signing: 24h (default), 30m, 2d, or 0 for none",
    )
    _json_flag(rotate)

    delete = actions.add_parser(
        "delete",
        help="delete an endpoint and its delivery history",
        description="Delete an endpoint with its deliveries and attempts. Refuses while it has "
        "pending deliveries unless --yes is given.",
    )
    _endpoint_id(delete)
    delete.add_argument(
        "--yes", action="store_true", help="delete even if deliveries are still pending"
    )

    test = actions.add_parser(
        "test",
        help="send the endpoint a signed test event now and show its answer",
        description='POST a signed sample event ({"test": true}) to the endpoint, exactly as '
        "the relay signs deliveries, and show the answer. Nothing is recorded.",
    )
    _endpoint_id(test)
    test.add_argument(
        "--type",
        type=event_type,
        default=None,
        help="a known event type to send (default: its first subscribed type)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    action: Callable[[argparse.Namespace, Settings], int] = _ACTIONS[args.action]
    return action(args, settings)


def _url(settings: Settings) -> str:
    return connect.resolve(settings).url


@dataclass(frozen=True)
class TestTarget:
    """Where a test event goes: the endpoint, the type it carries, the endpoint's own headers."""

    endpoint: admin.EndpointDetail
    sent_type: str
    custom: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # values may be secrets


def test_target(conn: admin.Connection, endpoint_id: str, wanted: str | None) -> TestTarget:
    """The endpoint a test event goes to and the type it carries: `wanted` (a known type), else
    the first known type it subscribes to."""
    endpoint = admin.get_endpoint(conn, endpoint_id)
    known = admin.known_event_types(conn)
    custom = tuple(admin.endpoint_headers(conn, endpoint_id).items())
    if endpoint is None:
        raise _no_endpoint(endpoint_id)
    if wanted is not None and wanted not in known:
        raise ConfigError(f"--type {wanted!r} is not a known event type")
    sent_type = wanted or next(
        (t for t in known if any(type_matches(p, t) for p in endpoint.event_types)), known[0]
    )
    return TestTarget(endpoint, sent_type, custom)


def send_test(settings: Settings, target: TestTarget) -> ProbeResult:
    """POST the signed test event, with the endpoint's own headers (no database connection held
    meanwhile)."""
    from outbox import probe  # noqa: PLC0415 - the HTTP client only for this action

    endpoint = target.endpoint
    return probe.send_test(
        endpoint.url,
        endpoint.secret,
        target.sent_type,
        previous_secret=endpoint.previous_secret,
        custom=target.custom,
        timeout=settings.timeout,
        allow_private_networks=settings.allow_private_networks,
    )


def test_verdict(sent_type: str, result: ProbeResult) -> str:
    """The one line `endpoints test` prints about the answer."""
    verdict = f"HTTP {result.status_code}" if result.status_code is not None else "no answer"
    return f"{sent_type} {result.event_id} -> {verdict} in {result.duration_ms:.0f} ms" + (
        f" ({render.clean(result.error)})" if result.error else ""
    )


def _test(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(_url(settings)) as conn:
        target = test_target(conn, args.endpoint_id, args.type)
    result = send_test(settings, target)
    render.emit(test_verdict(target.sent_type, result))
    if result.response_body:
        render.emit(render.clean(result.response_body[:200]))
    return 0 if result.ok else 1


def _no_endpoint(endpoint_id: str) -> OutboxError:
    return OutboxError(f"no endpoint with id {endpoint_id!r}")


def create(
    conn: admin.Connection,
    settings: Settings,
    *,
    url: str,
    patterns: list[str],
    description: str = "",
    enabled: bool = True,
    account: str | None = None,
    all_accounts: bool = False,
    headers: dict[str, str] | None = None,
    rate_limit: int | None = None,
    ordered: bool = False,
) -> tuple[str, str]:
    """`endpoints create`'s work, shared with the dashboard: the new endpoint's id and secret.
    `url`, `patterns` and `description` have passed check_url, parse_types, check_description."""
    if account is not None and all_accounts:
        raise ConfigError("--account and --all-accounts exclude each other: give one of them")
    if headers:
        options.check_headers(headers)
    secret = signing.generate_secret()
    check_types(patterns, admin.known_event_types(conn))
    endpoint_id = admin.create_endpoint(
        conn,
        url=url,
        event_types=patterns,
        description=description,
        enabled=enabled,
        secret=secret,
        account_id=account,
        all_accounts=all_accounts,
        max_per_account=settings.max_endpoints_per_account,
        headers=headers,
        rate_limit=rate_limit,
        ordered=ordered,
    )
    return endpoint_id, secret


def _create(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(_url(settings)) as conn:
        endpoint_id, secret = create(
            conn,
            settings,
            url=args.url,
            patterns=args.events,
            description=args.description,
            enabled=not args.disabled,
            account=args.account,
            all_accounts=args.all_accounts,
            headers=options.headers_given(args),
            rate_limit=args.rate_limit,
            ordered=args.ordered,
        )
    if args.json:
        render.emit_json({"id": endpoint_id, "secret": secret})
    else:
        render.emit(render.fields([("id", endpoint_id), ("secret", secret)]))
    print(
        "keep the secret now: it is shown only here and by `outbox endpoints show "
        f"{endpoint_id} --reveal-secret`",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(_url(settings)) as conn:
        endpoints = admin.list_endpoints(conn, account_id=args.account)
    if args.json:
        render.emit_json(endpoints)
        return 0
    if not endpoints:
        print("no endpoints yet; add one with `outbox endpoints create`", file=sys.stderr)
        return 0
    columns = [
        render.Column("ID"),
        render.Column("ACCOUNT", flex=True, cut="middle", min_width=7),
        render.Column("ON"),
        render.Column("PENDING", align=">"),
        render.Column("FAILED", align=">"),
        render.Column("BREAKER"),
        render.Column("URL", flex=True, min_width=12, weight=2),
        render.Column("EVENTS", flex=True, min_width=8),
        render.Column("DISABLED", flex=True, min_width=8, weight=0),
    ]
    rows = [
        (
            e.id,
            _account_text(e.account_id, e.all_accounts),
            "yes" if e.enabled else "no",
            e.pending,
            e.failed,
            "open" if e.breaker_opened_at is not None else "closed",
            e.url,
            ",".join(e.event_types),
            _disabled_text(e.disabled_at, e.disabled_reason),
        )
        for e in endpoints
    ]
    render.emit_table(columns, rows)
    return 0


def _disabled_text(at: datetime | None, reason: str | None) -> str:
    """When and why an endpoint was disabled, as one cell or line."""
    if at is None:
        return render.NONE if reason is None else reason
    when = render.timestamp(at)
    return f"{when} {reason}" if reason else when


def _breaker_text(endpoint: admin.EndpointDetail) -> str:
    if endpoint.breaker_opened_at is None:
        return "closed"
    probes = endpoint.probes
    return (
        f"open since {render.timestamp(endpoint.breaker_opened_at)}, "
        f"{probes} failed probe{'' if probes == 1 else 's'}, "
        f"next probe at {render.timestamp(endpoint.probe_at)}"
    )


def _failing_text(endpoint: admin.EndpointDetail) -> str:
    n = endpoint.consecutive_failures
    if not n:
        return render.NONE
    return (
        f"{n} failed attempt{'' if n == 1 else 's'} in a row, "
        f"from {render.timestamp(endpoint.failing_since)} to "
        f"{render.timestamp(endpoint.last_failure_at)}"
    )


def _account_text(account_id: str | None, all_accounts: bool) -> str:
    if all_accounts:
        return "(all)"
    return render.NONE if account_id is None else account_id


def _show(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(_url(settings)) as conn:
        endpoint = admin.get_endpoint(conn, args.endpoint_id)
    if endpoint is None:
        raise _no_endpoint(args.endpoint_id)
    secret = endpoint.secret if args.reveal_secret else mask(endpoint.secret)
    if args.json:
        render.emit_json(_document(endpoint, secret))
    else:
        render.emit(_description(endpoint, secret))
    return 0


def _document(endpoint: admin.EndpointDetail, secret: str) -> dict[str, object]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "enabled": endpoint.enabled,
        "event_types": endpoint.event_types,
        "description": endpoint.description,
        "account_id": endpoint.account_id,
        "all_accounts": endpoint.all_accounts,
        "ordered": endpoint.ordered,
        "secret": secret,
        "overlap_until": endpoint.previous_secret_until,
        "header_names": endpoint.header_names,
        "rate_limit": endpoint.rate_limit,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
        "breaker": {
            "state": "open" if endpoint.breaker_opened_at is not None else "closed",
            "opened_at": endpoint.breaker_opened_at,
            "next_probe_at": endpoint.probe_at,
            "failed_probes": endpoint.probes,
        },
        "consecutive_failures": endpoint.consecutive_failures,
        "failing_since": endpoint.failing_since,
        "last_failure_at": endpoint.last_failure_at,
        "disabled_at": endpoint.disabled_at,
        "disabled_reason": endpoint.disabled_reason,
        "deliveries": {
            "pending": endpoint.pending,
            "failed": endpoint.failed,
            "delivered": endpoint.delivered,
        },
    }


def _description(endpoint: admin.EndpointDetail, secret: str) -> str:
    counts = f"{endpoint.pending} pending, {endpoint.failed} failed, {endpoint.delivered} delivered"
    return render.fields(
        [
            ("id", endpoint.id),
            ("url", endpoint.url),
            ("enabled", "yes" if endpoint.enabled else "no"),
            ("disabled", _disabled_text(endpoint.disabled_at, endpoint.disabled_reason)),
            ("breaker", _breaker_text(endpoint)),
            ("failing", _failing_text(endpoint)),
            ("event types", ", ".join(endpoint.event_types)),
            ("ordered", "per record" if endpoint.ordered else "no"),
            ("description", endpoint.description or render.NONE),
            ("headers", ", ".join(endpoint.header_names) or render.NONE),
            ("rate limit", _rate_text(endpoint.rate_limit)),
            ("account", _account_text(endpoint.account_id, endpoint.all_accounts)),
            ("secret", secret),
            ("overlap until", _overlap_text(endpoint.previous_secret_until)),
            ("created at", render.timestamp(endpoint.created_at)),
            ("updated at", render.timestamp(endpoint.updated_at)),
            ("deliveries", counts),
        ]
    )


def _rate_text(rate_limit: int | None) -> str:
    return render.NONE if rate_limit is None else f"{rate_limit}/s"


def _update(args: argparse.Namespace, settings: Settings) -> int:
    rate_given = args.rate_limit is not options.NOT_GIVEN
    set_headers = options.headers_given(args)
    if not (
        rate_given
        or set_headers
        or args.remove_headers
        or any(v is not None for v in (args.url, args.events, args.description, args.ordered))
    ):
        raise ConfigError(
            "nothing to change: give --url, --events, --description, --header, "
            "--remove-header, --rate-limit, --ordered or --unordered"
        )
    changes = admin.EndpointChanges(
        url=args.url,
        event_types=args.events,
        description=args.description,
        set_headers=set_headers,
        remove_headers=args.remove_headers,
        rate_limit=args.rate_limit if rate_given else None,
        rate_limit_given=rate_given,
        ordered=args.ordered,
    )
    with admin.session(_url(settings)) as conn:
        if args.events is not None:
            check_types(args.events, admin.known_event_types(conn))
        if not admin.update_endpoint(conn, args.endpoint_id, changes):
            raise _no_endpoint(args.endpoint_id)
        endpoint = admin.get_endpoint(conn, args.endpoint_id)
    if endpoint is None:
        raise _no_endpoint(args.endpoint_id)
    secret = mask(endpoint.secret)
    if args.json:
        render.emit_json(_document(endpoint, secret))
    else:
        render.emit(_description(endpoint, secret))
    if args.url is not None and endpoint.pending:
        print(
            f"its {endpoint.pending} pending deliveries go to the new URL from their next attempt",
            file=sys.stderr,
        )
    return 0


def _overlap_text(until: datetime | None) -> str:
    if until is None:
        return render.NONE
    return f"{render.timestamp(until)} (the replaced secret signs too until then)"


def switch(conn: admin.Connection, endpoint_id: str, *, enabled: bool) -> int:
    """Enable or disable an endpoint; its pending deliveries (OutboxError: no such endpoint)."""
    pending = admin.set_endpoint_enabled(conn, endpoint_id, enabled=enabled)
    if pending is None:
        raise _no_endpoint(endpoint_id)
    return pending


def _switch(args: argparse.Namespace, settings: Settings) -> int:
    enabled = args.action == "enable"
    with admin.session(_url(settings)) as conn:
        pending = switch(conn, args.endpoint_id, enabled=enabled)
    render.emit(f"{args.action}d {args.endpoint_id}")
    if pending:
        what = "are sent as they fall due" if enabled else "wait until it is enabled again"
        print(f"its {pending} pending deliveries {what}", file=sys.stderr)
    return 0


def _overlap(text: str) -> timedelta:
    return parse_age(text, "--overlap", zero=True)


def rotate(
    conn: admin.Connection, endpoint_id: str, overlap: timedelta
) -> tuple[str, datetime | None]:
    """The new secret and when the overlap ends (OutboxError: no such endpoint)."""
    rotated = admin.rotate_secret(conn, endpoint_id, overlap)
    if rotated is None:
        raise _no_endpoint(endpoint_id)
    return rotated


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(_url(settings)) as conn:
        rotated = rotate(conn, args.endpoint_id, args.overlap)
    secret, until = rotated
    if args.json:
        render.emit_json({"id": args.endpoint_id, "secret": secret, "overlap_until": until})
    else:
        ends = render.timestamp(until) if until is not None else render.NONE
        render.emit(
            render.fields([("id", args.endpoint_id), ("secret", secret), ("overlap until", ends)])
        )
    if until is None:
        note = "the old secret no longer signs anything; give the receiver the new one now"
    else:
        note = (
            "both secrets sign until the overlap ends: have the receiver accept either by then "
            "(X-Stover-Signature switches to the new secret when it ends)"
        )
    print(note, file=sys.stderr)
    return 0


def delete(conn: admin.Connection, endpoint_id: str, *, allow_pending: bool) -> admin.Deletion:
    """Delete an endpoint with its deliveries; OutboxError when there is no such endpoint or it
    has pending deliveries that are not allowed to go."""
    outcome = admin.delete_endpoint(conn, endpoint_id, allow_pending=allow_pending)
    if outcome is None:
        raise _no_endpoint(endpoint_id)
    if not outcome.deleted:
        raise OutboxError(
            f"endpoint {endpoint_id} has {outcome.pending} pending "
            f"deliver{'y' if outcome.pending == 1 else 'ies'}; "
            "pass --yes to delete it and them, or disable it instead"
        )
    return outcome


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    with admin.session(_url(settings)) as conn:
        outcome = delete(conn, args.endpoint_id, allow_pending=args.yes)
    render.emit(f"deleted {args.endpoint_id} and its {outcome.deliveries} deliveries")
    return 0


_ACTIONS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "create": _create,
    "list": _list,
    "show": _show,
    "update": _update,
    "disable": _switch,
    "enable": _switch,
    "rotate-secret": _rotate,
    "delete": _delete,
    "test": _test,
}
