"""One module per CLI verb; each exposes `register(subparsers)`. Here: the argument types they
share, so that every option's value is checked where it enters, before any work starts."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import TypeVar

from outbox.errors import ConfigError

T = TypeVar("T")

# What a well-formed event type or subscription pattern looks like (the SQL constraint
# event_type_name_format, and prefixes of up to three of its parts).
_EXACT_TYPE = r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*){1,3}"
EXACT_TYPE = re.compile(_EXACT_TYPE)
TYPE_PATTERN = re.compile(rf"\*|{_EXACT_TYPE}|[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*){{0,2}}\.\*")
# Ids are made by the database (ep_…); one written by hand still has no spaces or controls.
_ID = re.compile(r"[!-~]{1,256}")


def argument(check: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a check that raises ConfigError: its message is the one line the
    command is refused with."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def shown(text: str, limit: int = 60) -> str:
    """A value as a refusal quotes it: escaped, and cut when long."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def counting_up_to(maximum: int) -> Callable[[str], int]:
    """An argparse type for a count: a whole number from 1 to `maximum`."""
    return whole_number(1, maximum)


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number from `low` to `high`, written in decimal digits."""

    def parse(text: str) -> int:
        digits = text.strip()
        if not re.fullmatch(r"-?[0-9]{1,12}", digits) or not low <= int(digits) <= high:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a number from {low} to {high}")
        return int(digits)

    return parse


def seconds(low: float, high: float, *, off: bool = False) -> Callable[[str], float]:
    """An argparse type for a number of seconds from `low` to `high`; with `off`, 0 too."""
    allowed = f"from {low:g} to {high:,g} seconds"
    if off:
        allowed = f"0 (off) or {allowed}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds") from None
        if not (low <= value <= high or (off and value == 0)) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{shown(text)} must be {allowed}")
        return value

    return parse


def endpoint_id(text: str) -> str:
    """An endpoint id: printable, without spaces, at most 256 characters."""
    if not _ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not an endpoint id such as ep_0661fb802c66932612e5b5c147"
        )
    return text


def event_type(text: str) -> str:
    """One exact event type, such as deal.created."""
    if not EXACT_TYPE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an event type such as deal.created")
    return text


def type_pattern(text: str) -> str:
    """One subscription pattern: an exact type, a prefix such as deal.*, or *."""
    if not TYPE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not an event type such as deal.created, a prefix such as deal.* or *"
        )
    return text
