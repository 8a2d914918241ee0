"""`outbox.emit` and plain event rows searched rather than listed, through the real relay to a
receiver on loopback: generated types (known, new, malformed, empty, odd characters), data
(objects, arrays, scalars, null, deep nesting, odd keys and escapes), accounts (of the format or
not), data nested and sized around the relay's limits, and captured rows of every column type.
Each input is refused by PostgreSQL with one clear line, or makes one event that is delivered
byte for byte with both signatures valid, or, where it cannot be sent, fails at its first attempt
with a one-line reason; none is left pending."""

from __future__ import annotations

import itertools
import json
import random
import re
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox.payload import render_event
from tests.db.columns import (
    EVERY_TYPE,
    EVERY_TYPE_DDL,
    EVERY_TYPE_SETUP,
    PROPERTY,
    assert_refused,
    characters,
    deep,
    every_type_rows,
    insert_values,
    json_texts,
    refusal,
)
from tests.relay import SEED_TYPES
from tests.unit.jsontrees import jsonb_text, rows

from .properties import CAP, TYPE, Harness, depth, ending, harness

Conn = psycopg.Connection[Any]
EPOCH = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


@pytest.fixture
def relay(conn: Conn, db_url: str) -> Iterator[Harness]:
    with harness(conn, db_url) as driven:
        yield driven


def jsonb_refuses(conn: Conn, text: str | None) -> bool:
    """Whether PostgreSQL refuses a JSON text as jsonb (a NUL escape, a lone surrogate)."""
    if text is None:
        return False
    with conn.transaction(force_rollback=True):
        return refusal(lambda: conn.execute("select %s::jsonb", [text])) is not None


GOOD_TYPES = sorted(SEED_TYPES | {"test.ping", "a.b.c.d", "x_1.y_2"})  # seeds and new ones
BAD_TYPES = [
    "",
    "Contact.created",
    "contact",
    "a.b.c.d.e",
    "contact.created ",
    "contact..created",
    ".x",
    "é.b",
    "a-b.c",
    "contact.created\n",
    "1a.b",
]
# Long types of letters the index cannot compress, either side of the 256-character limit.
long_types = st.builds(
    lambda length, seed: (
        "".join(random.Random(seed).choices(string.ascii_lowercase, k=length)) + ".x"
    ),
    st.integers(250, 3000),
    st.integers(),
)
event_types = st.one_of(
    st.sampled_from(GOOD_TYPES),
    st.from_regex(TYPE, fullmatch=True),
    long_types,
    st.sampled_from(BAD_TYPES),
    st.text(characters, max_size=20),
    st.none(),
)
event_data = st.one_of(
    rows.map(lambda tree: jsonb_text(tree, ascii_only=False)),
    rows.map(lambda tree: jsonb_text(tree, ascii_only=True)),
    json_texts,
    st.sampled_from(["5", '"x"', "null", "true", "[]", "[1, 2]", "{}"]),
    st.none(),
)
GOOD_ACCOUNTS = ["42", "acme", "a.b:c@d-e", "x" * 128, "0", "6f1c1c3e-1111-4a4a-9b9b-000000000001"]
BAD_ACCOUNTS = ["", "a b", "-a", "x" * 129, "é", "a\nb", "_a", "42 "]
accounts = st.one_of(
    st.none(),
    st.sampled_from(GOOD_ACCOUNTS),
    st.sampled_from(BAD_ACCOUNTS),
    st.from_regex(ACCOUNT, fullmatch=True),
    st.text(characters, max_size=10),
)


def emit_accepts(event_type: str | None, data: str | None, account: str | None) -> bool:
    """What emit() must take: a type like entity.action, an object, an account of the format."""
    return (
        event_type is not None
        and TYPE.fullmatch(event_type) is not None
        and len(event_type) <= 256
        and not event_type.startswith("outbox.")  # the operational events' own
        and data is not None
        and data.lstrip().startswith("{")
        and (account is None or ACCOUNT.fullmatch(account) is not None)
    )


def test_emit_refuses_with_one_line_or_its_one_event_is_delivered_byte_exact(
    relay: Harness,
) -> None:
    conn = relay.conn
    catch_all, path = relay.endpoint(event_types=["*"], all_accounts=True)
    conn.execute("select outbox.emit('test.ping', '{}')")  # a registered custom type
    relay.forget_events()

    @settings(PROPERTY, max_examples=150)
    @given(event_type=event_types, data=event_data, account=accounts, plain=st.booleans())
    def check(event_type: str | None, data: str | None, account: str | None, plain: bool) -> None:
        with relay.example():
            if plain:  # "a plain INSERT INTO outbox.events (type, data) is an event too"
                query = "insert into outbox.events (type, data, account_id) values (%s, %s, %s)"
                query += " returning id"
                # The table takes any type (the relay refuses a malformed one) and object data.
                accepts = (
                    event_type is not None and data is not None and data.lstrip().startswith("{")
                )
            else:
                query = "select outbox.emit(%s, %s::jsonb, account => %s)"
                accepts = emit_accepts(event_type, data, account)
            made: list[Any] = []
            error = refusal(lambda: made.extend(conn.execute(query, [event_type, data, account])))
            if error is not None:
                assert not accepts or jsonb_refuses(conn, data), error.diag.message_primary
                assert_refused(error, [event_type, data, account])
                assert conn.execute("select count(*) from outbox.events").fetchone() == (0,)
                return
            assert accepts, "accepted"
            [(event_id,)] = made
            assert conn.execute("select count(*) from outbox.events").fetchone() == (1,)
            relay.deliver()
            ending(relay, event_id, catch_all, path)

    check()


# ---- nesting and size at and beyond the limits ------------------------------------------------

# Characters whose body bytes differ: plain, two and four UTF-8 bytes, JSON escapes, raw U+2028.
FILLERS = ["x", "é", "😀", "\n", '"', "\\", "\x01", "\u2028", "\U0010ffff"]


def body_size(event_type: str, data_json: str) -> int:
    """The body length of an event with this data: ids and timestamps are of fixed width."""
    return len(render_event("evt_" + "0" * 28, event_type, EPOCH, data_json, None))


@st.composite
def extremes(draw: st.DrawFn) -> str:
    """Data nested around the renderer's limits, or holding a string that brings the body to
    within a few bytes of the payload cap, either side."""
    if draw(st.booleans()):
        levels = draw(
            st.sampled_from([1, 2, 253, 254, 255, 256, 600, 1000, 5000]) | st.integers(200, 700)
        )
        leaf = draw(st.sampled_from(["1", '"x"', "1.5e300", "{}", "[]", '"😀"']))
        return '{"deep": ' + deep(levels, leaf) + "}"
    filler = draw(st.sampled_from(FILLERS))
    key = draw(st.sampled_from(["s", "", "0", "__proto__", "😀", "a\nb", "4294967295"]))

    def data(text: str) -> str:
        return json.dumps({key: text}, ensure_ascii=draw(st.booleans()))

    empty = body_size("test.extreme", data(""))
    per_char = body_size("test.extreme", data(filler)) - empty
    room = CAP - empty + draw(st.integers(-6, 6))
    return data(filler * max(room // per_char, 0))


def test_data_up_to_the_limits_is_delivered_and_beyond_them_fails_at_once_with_the_reason(
    relay: Harness,
) -> None:
    conn = relay.conn
    catch_all, path = relay.endpoint(event_types=["*"])

    @settings(PROPERTY, max_examples=80)
    @given(data=extremes())
    def check(data: str) -> None:
        with relay.example():
            made: list[Any] = []
            query = "select outbox.emit('test.extreme', %s::jsonb)"
            error = refusal(lambda: made.extend(conn.execute(query, [data])))
            if error is not None:  # deeper than PostgreSQL's own stack takes
                assert depth(data) > 1000, error.diag.message_primary
                assert_refused(error, [data])
                return
            [(event_id,)] = made
            relay.deliver()
            ending(relay, event_id, catch_all, path)

    check()


# ---- captured rows of every column type ---------------------------------------------------------


def test_captured_rows_of_every_column_type_are_delivered_byte_exact(relay: Harness) -> None:
    conn = relay.conn
    for statement in EVERY_TYPE_SETUP:
        conn.execute(statement)
    conn.execute(EVERY_TYPE_DDL)
    conn.execute("select outbox.attach('public.every_type', 'thing', account_column => 'tenant')")
    catch_all, path = relay.endpoint(event_types=["thing.*"], all_accounts=True)
    declared = {"id": "bigint", **{name: kind for name, (kind, _) in EVERY_TYPE.items()}}
    keys = itertools.count(1)
    table = psycopg.sql.Identifier("public", "every_type")

    @settings(PROPERTY, max_examples=60)
    @given(values=every_type_rows)
    def check(values: dict[str, Any]) -> None:
        with relay.example():
            row = {"id": str(next(keys)), **values}
            inserting = insert_values(table, row, declared)
            if refusal(lambda: conn.execute(inserting, [*row.values()])) is not None:
                return  # the capture tests say what a refused row looks like
            [(event_id,)] = conn.execute("select id from outbox.events").fetchall()
            relay.deliver()
            ending(relay, event_id, catch_all, path)

    check()
