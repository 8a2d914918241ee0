"""The endpoint options `outbox endpoints create` and `update` share: custom headers and a rate
limit, checked as the command line is read."""

from __future__ import annotations

import argparse
from typing import Any

from outbox import custom_headers
from outbox.commands import argument
from outbox.errors import ConfigError

HEADER_HELP = (
    "a header of your own sent with every attempt, such as 'Authorization: Bearer …'; repeat "
    "for more (at most 20). Host, Content-*, User-Agent, X-Stover-* and webhook-* are the "
    "outbox's own. Listings show the names only"
)
NOT_GIVEN: Any = object()  # --rate-limit's default in `update`: leave the limit as it is
RATE_HELP = (
    "start at most N attempts a second to this endpoint, across every relay, evenly spaced "
    "(N/s, 1 to 10,000), or off"
)


def header(text: str) -> tuple[str, str]:
    """A `--header NAME:VALUE`; the refusal never repeats the value."""
    try:
        return custom_headers.parse_header(text)
    except ValueError as exc:
        raise ConfigError(f"--header is refused: {exc}") from None


def header_name(text: str) -> str:
    """A `--remove-header NAME`."""
    name = text.strip()
    if not custom_headers.is_token(name):
        raise ConfigError(f"--remove-header {text[:60]!r} is not a header name")
    return name


def rate(text: str) -> int | None:
    """A `--rate-limit N/s|off`: N, or None for off."""
    try:
        return custom_headers.parse_rate(text)
    except ValueError as exc:
        raise ConfigError(f"--rate-limit {exc}") from None


def add_options(parser: argparse.ArgumentParser, *, default_rate: object) -> None:
    """--header (repeatable) and --rate-limit."""
    parser.add_argument(
        "--header",
        dest="headers",
        metavar="NAME:VALUE",
        action="append",
        type=argument(header),
        default=[],
        help=HEADER_HELP,
    )
    kept = " (default: as it is)" if default_rate is NOT_GIVEN else " (default: off)"
    parser.add_argument(
        "--rate-limit",
        metavar="N/s|off",
        type=argument(rate),
        default=default_rate,
        help=RATE_HELP + kept,
    )


def headers_given(args: argparse.Namespace) -> dict[str, str]:
    """The --header options as one mapping; ConfigError when a name is given twice."""
    given: dict[str, str] = {}
    for name, value in args.headers:
        if any(name.lower() == held.lower() for held in given):
            raise ConfigError(f"--header {name!r} is given twice (header names ignore case)")
        given[name] = value
    return given


def check_headers(headers: dict[str, str]) -> None:
    """ConfigError when the headers together break the rule (their count or size)."""
    problem = custom_headers.headers_problem(headers)
    if problem is not None:
        raise ConfigError(f"--header is refused: {problem}")
