"""Hypothesis strategies for event inputs whose jsonb columns hold every awkward JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from outbox.payload import render_event


@dataclass(frozen=True)
class Num:
    """A number as it appears in jsonb text."""

    text: str


Tree = dict[str, "Tree"] | list["Tree"] | str | bool | None | Num


def jsonb_text(tree: Tree, *, ascii_only: bool) -> str:
    """Write a tree the way `jsonb::text` looks: `", "` and `": "` separators, number text kept."""
    if isinstance(tree, Num):
        return tree.text
    if isinstance(tree, dict):
        members = (
            json.dumps(key, ensure_ascii=ascii_only)
            + ": "
            + jsonb_text(value, ascii_only=ascii_only)
            for key, value in tree.items()
        )
        return "{" + ", ".join(members) + "}"
    if isinstance(tree, list):
        return "[" + ", ".join(jsonb_text(item, ascii_only=ascii_only) for item in tree) + "]"
    return json.dumps(tree, ensure_ascii=ascii_only)


SPECIAL_KEYS = ["0", "7", "10", "4294967294", "4294967295", "01", "-1", "", "1.5", "__proto__"]
SPECIAL_STRINGS = [
    "\u2028\u2029",
    "\x00\x01\x1f\x7f",
    "😀 émigré 中文",
    'quote " back \\ slash /',
    "\b\f\n\r\t",
    "</script>",
]
DECIMAL_TEXTS = ["1000.50", "1e-7", "1e21", "1.5e300", "5e-324", "-0.0", "-0", "0.0000001", "1E+2"]

keys = st.sampled_from(SPECIAL_KEYS) | st.text(max_size=8)
strings = st.sampled_from(SPECIAL_STRINGS) | st.text(max_size=12)
decimals = st.builds(
    lambda negative, whole, fraction: f"{'-' if negative else ''}{whole}.{fraction}",
    st.booleans(),
    st.integers(0, 10**15),
    st.text("0123456789", min_size=1, max_size=8),
)
exponents = st.builds(
    lambda mantissa, exponent: f"{mantissa}e{exponent:+d}",
    st.sampled_from(["1", "2.5", "9.99", "-7.125", "0.5"]),
    st.integers(-320, 300),
)
numbers = st.one_of(
    st.integers(-(2**53), 2**53).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    decimals,
    exponents,
    st.sampled_from(DECIMAL_TEXTS),
).map(Num)
leaves: st.SearchStrategy[Tree] = st.one_of(st.none(), st.booleans(), strings, numbers)
trees: st.SearchStrategy[Tree] = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
rows = st.dictionaries(keys, trees, max_size=6)
moments = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)),
    st.integers(-23 * 60, 23 * 60),
)


def as_doubles(text: str) -> Any:
    return json.loads(text, parse_int=float)


def numbers_fit_doubles(text: str) -> bool:
    """Whether every number in a JSON text is within what SPEC.md promises Node writes back byte
    for byte: integers up to 2**53 and decimals within the double range (beyond, the body keeps
    the exact digits, which JavaScript cannot hold)."""
    fits = True

    def decimal(literal: str) -> float:
        nonlocal fits
        value = float(literal)
        fits = fits and math.isfinite(value)
        return value

    def integer(literal: str) -> int:
        nonlocal fits
        value = int(literal)
        fits = fits and abs(value) <= 2**53
        return value

    json.loads(text, parse_int=integer, parse_float=decimal)
    return fits


@dataclass(frozen=True)
class Event:
    """The inputs of one render_event call, with its jsonb columns still as trees."""

    event_id: str
    event_type: str
    created_at: datetime
    data: dict[str, Tree]
    previous: dict[str, Tree] | None
    ascii_only: bool

    def render(self) -> tuple[bytes, str, str | None]:
        """The body, and the jsonb texts it was rendered from."""
        data_json = jsonb_text(self.data, ascii_only=self.ascii_only)
        previous_json = (
            None if self.previous is None else jsonb_text(self.previous, ascii_only=self.ascii_only)
        )
        body = render_event(
            self.event_id, self.event_type, self.created_at, data_json, previous_json
        )
        return body, data_json, previous_json


events = st.builds(
    Event,
    event_id=st.text(max_size=10),
    event_type=st.text(max_size=10),
    created_at=moments,
    data=rows,
    previous=st.none() | rows,
    ascii_only=st.booleans(),
)
