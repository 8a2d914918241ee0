"""Hypothesis strategies for the SQL surface: values of every column type as the text PostgreSQL
casts them from, the writer's session settings, and what a refused input must look like."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from psycopg import sql

from tests.unit.jsontrees import SPECIAL_KEYS, Tree, jsonb_text, trees

# Bounded for a shared machine: every example writes to a real database. The database fixtures
# are per test, so each example cleans up after itself. CI runs the same examples every time.
PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize="CI" in os.environ,
)

# ---- the writer's session ----------------------------------------------------------------------

SESSION_SETTINGS: dict[str, st.SearchStrategy[str]] = {
    "TimeZone": st.sampled_from(
        [
            "UTC",
            "America/New_York",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Pacific/Chatham",
            "Pacific/Kiritimati",
            "Etc/GMT+12",
            "Europe/Dublin",
            "UTC+3",
        ]
    ),
    "DateStyle": st.sampled_from(
        ["ISO, MDY", "ISO, DMY", "SQL, DMY", "SQL, MDY", "Postgres, DMY", "Postgres, YMD", "German"]
    ),
    "IntervalStyle": st.sampled_from(["postgres", "postgres_verbose", "sql_standard", "iso_8601"]),
    "extra_float_digits": st.integers(-15, 3).map(str),
    "bytea_output": st.sampled_from(["hex", "escape"]),
}
sessions = st.fixed_dictionaries(SESSION_SETTINGS)


def apply_session(conn: psycopg.Connection[Any], session: Mapping[str, str]) -> None:
    """Put a writer's session in these settings until the next call."""
    for name, value in session.items():
        conn.execute("select set_config(%s, %s, false)", [name, value])


# ---- values ------------------------------------------------------------------------------------

# PostgreSQL text holds every character but NUL; surrogates are not characters of UTF-8 at all.
characters = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
SPECIAL_TEXTS = [
    "",
    " ",
    "\u2028\u2029",
    "\x01\x1f\x7f",
    "😀 émigré 中文",
    'quote " back \\ slash /',
    "\b\f\n\r\t",
    "</script>",
    "NULL",
    "\ufeffbom",
    "\U0010ffff",
    "e\u0301",
    "\\u0000",
]
texts = st.sampled_from(SPECIAL_TEXTS) | st.text(characters, max_size=40)
long_texts = st.builds(
    lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "\n", '"']), st.integers(0, 3000)
)
row_texts = texts | long_texts

ZONES = st.sampled_from(["", "+00", "Z", "+05:45", "-09:30", "+14", "-12", " America/Sao_Paulo"])
TIMESTAMP_EXTREMES = [
    "infinity",
    "-infinity",
    "4713-01-01 00:00:00 BC",
    "294276-12-31 23:59:59.999999",
    "0001-01-01 00:00:00",
    "1970-01-01 00:00:00",
    "2000-02-29 12:00:00.5",
    "2024-03-10 02:30:00",  # a gap in America/New_York
    "2024-11-03 01:30:00",  # twice in America/New_York
    "2024-01-15 10:30:00.123456",
]
timestamp_texts = st.sampled_from(TIMESTAMP_EXTREMES) | st.datetimes().map(str)
timestamptz_texts = st.one_of(
    st.builds(lambda moment, zone: moment + zone, timestamp_texts, ZONES),
    st.datetimes(timezones=st.timezones()).map(str),
)
dates = st.sampled_from(
    ["infinity", "-infinity", "4713-01-01 BC", "5874897-12-31", "2024-02-29", "0001-01-01"]
) | st.dates().map(str)
times = st.sampled_from(["24:00:00", "00:00:00", "23:59:59.999999"]) | st.times().map(str)
timetzs = st.builds(
    lambda t, zone: t + zone,
    times,
    st.sampled_from(["+00", "+15:59", "-15:59", "+05:30", "-03"]),
)
intervals = st.sampled_from(
    [
        "0",
        "1 year 2 mons -3 days 04:05:06.789",
        "-178000000 years",
        "178000000 years",
        "1 day -1 microseconds",
        "P1Y2M3DT4H5M6.5S",
        "-1 12:00:00",
        "2147483647 days 2562047788:00:54.775807",
    ]
) | st.timedeltas().map(
    lambda d: f"{d.days} days {d.seconds} seconds {d.microseconds} microseconds"
)
float8s = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "-0", "5e-324", "1.7976931348623157e308", "0.1", "1e21"]
) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
float4s = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "-0", "1e-45", "3.4028235e38", "0.1", "16777217"]
) | st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr)
numerics = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "0.000000000000000000000000000001",
        "123456789012345678901234567890",
        "9007199254740993",
        "1e1000",
        "-1e-1000",
        "1000.50",
        "-0.0",
    ]
) | st.decimals(allow_nan=False, allow_infinity=False).map(str)
ints = st.integers(-(2**63), 2**63 - 1)
int4s = st.integers(-(2**31), 2**31 - 1)
int2s = st.integers(-(2**15), 2**15 - 1)


def _network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> str:
    return str(ipaddress.ip_network(f"{address}/{min(bits, address.max_prefixlen)}", strict=False))


inets = st.ip_addresses().map(str) | st.builds(
    lambda a, bits: f"{a}/{min(bits, a.max_prefixlen)}", st.ip_addresses(), st.integers(0, 128)
)
cidrs = st.builds(_network, st.ip_addresses(), st.integers(0, 128))


def deep(depth: int, leaf: str = "1") -> str:
    """JSON text of `depth` arrays and objects, alternating, around `leaf`."""
    text = leaf
    for level in range(depth):
        text = f'{{"k": {text}}}' if level % 2 else f"[{text}]"
    return text


json_texts = st.one_of(
    trees.map(lambda tree: jsonb_text(tree, ascii_only=False)),
    trees.map(lambda tree: jsonb_text(tree, ascii_only=True)),
    st.integers(1, 600).map(deep),
    st.sampled_from(['{"a": 1, "a": 2}', ' [ 1 , "x" ] ', '"\\u00e9"', '"\\ud83d\\ude00"']),
)
objects: st.SearchStrategy[dict[str, Tree]] = st.dictionaries(
    st.sampled_from(SPECIAL_KEYS) | st.text(characters, max_size=8), trees, max_size=6
)
json_objects = objects.map(lambda tree: jsonb_text(tree, ascii_only=False)) | st.integers(
    1, 600
).map(lambda depth: '{"deep": ' + deep(depth) + "}")


def array_literal(items: Iterable[str | None]) -> str:
    """A one-dimensional PostgreSQL array literal of text elements (None is NULL)."""
    quoted = [
        "NULL" if item is None else '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for item in items
    ]
    return "{" + ",".join(quoted) + "}"


def row_literal(fields: Iterable[str | None]) -> str:
    """A composite literal of text fields (None is NULL)."""
    quoted = [
        "" if field is None else '"' + field.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for field in fields
    ]
    return "(" + ",".join(quoted) + ")"


def range_literal(bounds: tuple[str | None, str | None], brackets: str) -> str:
    """A range literal between quoted bounds (None is unbounded), such as '["a","b")'."""
    lower, upper = bounds
    return (
        brackets[0]
        + ("" if lower is None else f'"{lower}"')
        + ","
        + ("" if upper is None else f'"{upper}"')
        + brackets[1]
    )


def _ranges(bounds: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.just("empty") | st.builds(
        range_literal,
        st.tuples(st.none() | bounds, st.none() | bounds),
        st.sampled_from(["[)", "[]", "()", "(]"]),
    )


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The strategy's values, or NULL."""
    return st.none() | strategy


# ---- an application table holding every common column type ------------------------------------

MOOD_LABELS = ["ok", "with space", "ünïcode", '"quoted"', "😀"]
EVERY_TYPE_SETUP = [
    "create type public.mood as enum ("
    + ", ".join("'" + label.replace("'", "''") + "'" for label in MOOD_LABELS)
    + ")",
    "create type public.pair as (n int, label text, at timestamptz)",
]
# column: (declared type, strategy of its value as text, or bytes for bytea)
EVERY_TYPE: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "tenant": ("text", st.sampled_from(["42", "acme", "a b", "", "x" * 200, "00042"])),
    "i2": ("smallint", int2s.map(str)),
    "i4": ("integer", int4s.map(str)),
    "i8": ("bigint", ints.map(str)),
    "num": ("numeric", numerics),
    "num_s": ("numeric(10,3)", st.decimals(-(10**7) + 1, 10**7 - 1, places=3).map(str)),
    "f4": ("real", float4s),
    "f8": ("double precision", float8s),
    "t": ("text", row_texts),
    "vc": ("varchar(20)", st.text(characters, max_size=20)),
    "ch": ("char(5)", st.text(characters, max_size=5)),
    "b": ("boolean", st.sampled_from(["true", "false", "yes", "off"])),
    "d": ("date", dates),
    "tm": ("time", times),
    "ttz": ("timetz", timetzs),
    "ts": ("timestamp", timestamp_texts),
    "tstz": ("timestamptz", timestamptz_texts),
    "iv": ("interval", intervals),
    "by": ("bytea", st.binary(max_size=64)),
    "u": ("uuid", st.uuids().map(str)),
    "jb": ("jsonb", json_texts),
    "js": ("json", json_texts),
    "ai": ("int[]", st.lists(nullable(int4s.map(str)), max_size=5).map(array_literal)),
    "at": ("text[]", st.lists(nullable(texts), max_size=5).map(array_literal)),
    "atz": ("timestamptz[]", st.lists(nullable(timestamptz_texts), max_size=3).map(array_literal)),
    "ip": ("inet", inets),
    "net": ("cidr", cidrs),
    "mood": ("public.mood", st.sampled_from(MOOD_LABELS)),
    "pair": (
        "public.pair",
        st.builds(
            lambda n, label, at: row_literal([n, label, at]),
            nullable(int4s.map(str)),
            nullable(texts),
            nullable(timestamptz_texts),
        ),
    ),
    "dr": ("daterange", _ranges(st.dates().map(str))),
    "tr": ("tstzrange", _ranges(st.datetimes(timezones=st.timezones()).map(str))),
    "pt": ("point", st.builds(lambda x, y: f"({x},{y})", float8s, float8s)),
    "bits": ("bit varying", st.text("01", max_size=40)),
    "cash": ("money", st.decimals(-(10**12), 10**12, places=2).map(str)),
}
EVERY_TYPE_DDL = (
    "create table public.every_type (id bigint primary key, "
    + ", ".join(f"{name} {declared}" for name, (declared, _) in EVERY_TYPE.items())
    + ")"
)
every_type_rows = st.fixed_dictionaries(
    {name: nullable(strategy) for name, (_, strategy) in EVERY_TYPE.items()}
)


def insert_values(
    table: sql.Composable,
    values: Mapping[str, Any],
    declared: Mapping[str, str],
    *,
    returning: str = "id",
) -> sql.Composed:
    """INSERT of text values, each cast to its column's declared type."""
    if not values:
        return sql.SQL("insert into {} default values returning {}").format(
            table, sql.Identifier(returning)
        )
    return sql.SQL("insert into {} ({}) values ({}) returning {}").format(
        table,
        sql.SQL(", ").join(sql.Identifier(name) for name in values),
        sql.SQL(", ").join(sql.SQL("%s::" + declared[name]) for name in values),
        sql.Identifier(returning),
    )


def update_values(
    table: sql.Composable, values: Mapping[str, Any], declared: Mapping[str, str], key: str
) -> sql.Composed:
    """UPDATE of one row by `key`: the given columns set to text values cast to their types, or
    the first declared column set to itself when none is given (a no-op UPDATE)."""
    if not values:
        same = sql.Identifier(next(iter(declared)))
        return sql.SQL("update {} set {} = {} where {} = %s").format(
            table, same, same, sql.Identifier(key)
        )
    return sql.SQL("update {} set {} where {} = %s").format(
        table,
        sql.SQL(", ").join(
            sql.SQL("{} = %s::" + declared[name]).format(sql.Identifier(name)) for name in values
        ),
        sql.Identifier(key),
    )


# ---- refusals ----------------------------------------------------------------------------------

# What a user must not see in a refusal: the machinery around the write.
NOISE = (
    *("PL/pgSQL", "SQL statement", "tg_argv", "new_rows", "old_rows", "jsonb_each", "to_jsonb"),
    *("btree", "index row"),
)


def assert_refused(error: psycopg.Error, echoed: Iterable[str | None] = ()) -> str:
    """Assert a refusal is one clear line: PostgreSQL's primary message, not an internal error,
    naming no machinery. The user's own input may be quoted in it as it was given (PostgreSQL's
    own messages do that too); the rest must be one line. Returns the message."""
    diag = error.diag
    message = diag.message_primary or ""
    assert message.strip(), f"a refusal without a message: {error!r}"
    state = diag.sqlstate or ""
    assert state[:2] not in ("XX", "58", "P0") or state == "P0001", f"{state}: {message}"
    shown = message
    for text in sorted((t for t in echoed if t), key=len, reverse=True):
        quoted = text.replace("'", "''")
        for form in (quoted.replace("\\", "\\\\"), quoted, text.replace('"', '""'), text):
            shown = shown.replace(form, "…")
    assert len(shown.splitlines()) == 1, f"not one line: {message!r}"
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} in {message!r}"
    return message


def raised_in_capture(error: psycopg.Error) -> bool:
    """Whether an error arose inside the outbox's capture rather than from the write itself."""
    return "outbox.capture" in (error.diag.context or "")


def refusal(run: Callable[[], object]) -> psycopg.Error | None:
    """The error PostgreSQL refused `run()` with, or None when it was accepted."""
    try:
        run()
    except psycopg.Error as error:
        return error
    return None


def assert_write_refused(error: psycopg.Error, values: Mapping[str, Any]) -> None:
    """A write that PostgreSQL refused: one clear line, and the write's own doing, not capture's
    (capture never fails a write that the table accepts)."""
    assert_refused(error, [v for v in values.values() if isinstance(v, str)])
    assert not raised_in_capture(error), f"capture failed the write: {error.diag.context}"
