"""Endpoint rows written by hand, searched rather than listed: generated event_types (exact types,
prefixes, '*', unknown and malformed patterns, NULLs, empty and two-dimensional arrays), enabled
and description. Each row is refused by the table with one clear line, or makes an endpoint that
an event of a type it subscribes to reaches, signed, once it is enabled. (URLs are another
property's: these use one on loopback.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.db.columns import PROPERTY, assert_refused, characters, long_texts, refusal, texts
from tests.db.rows import fan_out
from tests.relay import SEED_TYPES, Endpoint

from .properties import Harness, ending, harness

Conn = psycopg.Connection[Any]
KNOWN_TYPES = sorted(SEED_TYPES | {"test.ping", "a.b.c.d"})


@pytest.fixture
def relay(conn: Conn, db_url: str) -> Iterator[Harness]:
    with harness(conn, db_url) as driven:
        yield driven


PATTERNS = [*KNOWN_TYPES, "deal.*", "contact.*", "test.*", "a.b.*", "a.*", "*"]
# Unknown types (x_1.y_2 is well formed but never registered) and malformed patterns.
BAD_PATTERNS = ["x_1.y_2", "deal.", ".*", "", "deal.**", "DEAL.*", " deal.created", "*.*"]
patterns = (
    st.sampled_from(PATTERNS) | st.sampled_from(BAD_PATTERNS) | st.text(characters, max_size=12)
)


# What the table takes as a description: no control characters, at most 1,000 characters.
MAX_DESCRIPTION = 1000
CONTROL = re.compile("[\x01-\x1f\x7f-\x9f]")


def matches(pattern: str, event_type: str) -> bool:
    """The contract's subscription rule: an exact type, 'prefix.*' or '*'."""
    if pattern in ("*", event_type):
        return True
    return pattern.endswith(".*") and event_type.startswith(pattern[:-1])


@st.composite
def endpoint_rows(draw: st.DrawFn) -> dict[str, Any]:
    """Columns of an endpoint row (any may be left to its default but event_types): 1-D or 2-D
    arrays of patterns (the table takes only the first), NULLs anywhere, descriptions of any
    text."""
    flat = draw(
        st.one_of(
            st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
            st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
            st.lists(patterns | st.none(), max_size=4),
        )
    )
    event_types: Any = flat
    if flat and draw(st.booleans()):
        event_types = [[pattern] for pattern in flat]  # a 2-D array, one pattern a row
    if draw(st.sampled_from([False] * 9 + [True])):
        event_types = None
    row: dict[str, Any] = {"event_types": event_types}
    if draw(st.booleans()):
        row["enabled"] = draw(st.sampled_from([True, True, False, None]))
    if draw(st.booleans()):
        row["description"] = draw(texts | long_texts | st.none())
    return row


def flat_patterns(event_types: Any) -> list[str | None]:
    if event_types is None:
        return []
    return [p for item in event_types for p in (item if isinstance(item, list) else [item])]


def test_an_endpoint_row_is_refused_with_one_line_or_gets_the_events_it_subscribes_to(
    relay: Harness,
) -> None:
    conn = relay.conn
    conn.execute(
        "select outbox.register_event_type(name) from unnest(%s::text[]) name", [KNOWN_TYPES]
    )
    relay.forget_events()

    @settings(PROPERTY, max_examples=120)
    @given(row=endpoint_rows())
    def check(row: dict[str, Any]) -> None:
        with relay.example():
            listed = flat_patterns(row["event_types"])
            served = [t for t in KNOWN_TYPES if any(p and matches(p, t) for p in listed)]
            description = row.get("description", "")
            accepts = (
                bool(listed)
                and not any(isinstance(item, list) for item in row["event_types"] or [])
                and all(p is not None and any(matches(p, t) for t in KNOWN_TYPES) for p in listed)
                and row.get("enabled", True) is not None
                and description is not None
                and len(description) <= MAX_DESCRIPTION
                and not CONTROL.search(description)
            )
            made: list[tuple[Endpoint, str]] = []
            error = refusal(lambda: made.append(relay.endpoint(**row)))
            if error is not None:
                assert not accepts, error.diag.message_primary
                assert_refused(error, [p for p in listed if p] + [row.get("description")])
                return
            assert accepts, "accepted"
            [(endpoint, path)] = made
            try:
                assert_reaches(relay, endpoint, path, served[0], row.get("enabled", True))
            finally:
                conn.execute("delete from outbox.endpoints where id = %s", [endpoint.id])

    check()


def assert_reaches(
    relay: Harness, endpoint: Endpoint, path: str, event_type: str, enabled: bool
) -> None:
    """An event of a subscribed type reaches the endpoint, once it is enabled."""
    conn = relay.conn
    if not enabled:
        conn.execute("select outbox.emit(%s, '{}')", [event_type])
        fan_out(conn)
        found = conn.execute(
            "select count(*) from outbox.deliveries where endpoint_id = %s", [endpoint.id]
        ).fetchone()
        assert found == (0,), "a disabled endpoint got a delivery"
        conn.execute("update outbox.endpoints set enabled = true where id = %s", [endpoint.id])
    [(event_id,)] = conn.execute("select outbox.emit(%s, %s)", [event_type, '{"n": 1}']).fetchall()
    relay.deliver()
    assert ending(relay, event_id, endpoint, path) == "delivered"
