"""`outbox.attach` searched rather than listed: generated tables (names needing quotes, long ones,
views, partitioned and unlogged tables, keys of none, one or two columns), the outbox's own
tables and system catalogs, and generated entities, actions and account columns. Each call is
refused with one clear line and installs nothing, or attaches a trigger per action that captures
as the contract says, and detach() removes them."""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from .captured import Expected, assert_captured, attached_events, take_events
from .columns import PROPERTY, assert_refused, characters, refusal, texts

Conn = psycopg.Connection[Any]

IDENTIFIERS = [
    "invoices",
    "Invoices",
    "select",
    "user",
    "a b",
    'x"y',
    "it's",
    "ünïcode",
    "😀",
    "r",
    "j",
    "a.b",
    "50%",
    "tg_argv",
    "new_rows",
    "outbox_things",
    "x" * 63,
    "é" * 31,
    "y" * 48,
]
# At most 63 bytes: PostgreSQL cuts longer names, and the model would not know the cut one.
identifiers = st.sampled_from(IDENTIFIERS) | st.text(
    st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20
).filter(lambda name: len(name.encode()) <= 63)
# Valid ones first; the last two are of 248 and 249 letters, either side of the limit.
ENTITIES = [
    *("invoice", "line_item", "x9", "Invoice", "in voice", "", "9lives", "a.b", "é"),
    *("".join(random.Random(n).choices(string.ascii_lowercase, k=n)) for n in (248, 249)),
]
ACTIONS = ["created", "updated", "deleted"]
SCHEMAS = ["public", "fresh", "Fresh Schema", "outbox_archive"]
# Tables that exist already, and whether attach must take them (None: either answer is right).
EXISTING: dict[str, bool | None] = {
    "outbox.events": False,
    "outbox.endpoints": False,
    "pg_catalog.pg_class": False,
    "information_schema.tables": False,
    "information_schema.sql_features": None,
}


@dataclass(frozen=True)
class Made:
    """A table made for one example: its key columns (int) and its other columns (text)."""

    schema: str
    name: str
    kind: str  # table, partitioned, unlogged or view
    key: list[str]
    others: list[str]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class Call:
    """One attach() call: on a made table or an existing one, its target named quoted or as
    typed, and the rest of its arguments (None: left to the default)."""

    made: Made | None
    existing: str
    quoted: bool
    entity: str | None
    actions: list[str | None] | None
    account: str | None

    @property
    def effective_actions(self) -> list[str | None]:
        return ACTIONS if self.actions is None else self.actions

    def target(self, conn: Conn) -> str:
        if self.made is None:
            return self.existing
        if self.quoted:
            return self.made.ident.as_string(conn)
        return f"{self.made.schema}.{self.made.name}"

    def echoed(self, conn: Conn) -> list[str | None]:
        """What a refusal may quote back as given."""
        made = [] if self.made is None else [self.made.schema, self.made.name]
        return [self.target(conn), self.entity, self.account, *made, *(self.actions or [])]


def made_tables() -> st.SearchStrategy[Made]:
    def build(schema: str, name: str, kind: str, names: list[str], keyed: int) -> Made:
        keyed = min(keyed, len(names) - 1)
        return Made(schema, name, kind, names[:keyed], names[keyed:])

    return st.builds(
        build,
        st.sampled_from(SCHEMAS),
        identifiers,
        st.sampled_from(["table", "table", "partitioned", "unlogged", "view"]),
        st.lists(identifiers, min_size=2, max_size=5, unique_by=lambda name: name),
        st.sampled_from([1, 1, 1, 0, 2]),
    )


@st.composite
def calls(draw: st.DrawFn) -> Call:
    # Mostly arguments attach() takes, so that most examples attach and capture.
    valid = st.sampled_from(ENTITIES[:3])
    made = draw(st.one_of(made_tables(), made_tables(), st.none()))
    columns = [] if made is None else made.key + made.others
    return Call(
        made=made,
        existing=draw(st.sampled_from(sorted(EXISTING))),
        quoted=draw(st.booleans()),
        entity=draw(
            st.one_of(valid, valid, valid, st.sampled_from(ENTITIES), st.none())
            | st.text(characters, max_size=10)
        ),
        actions=draw(
            st.one_of(
                st.none(),
                st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3),
                st.lists(
                    st.sampled_from([*ACTIONS, "CREATED", "", "inserted"]) | st.none(), max_size=4
                ),
            )
        ),
        account=draw(st.none() | st.sampled_from([*columns, "missing", "Tenant ID"])),
    )


def create(conn: Conn, made: Made) -> None:
    if made.schema != "public":
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(made.schema)))
    names = list(map(sql.Identifier, made.key + made.others))
    if made.kind == "view":
        body = sql.SQL(", ").join(sql.SQL("1 as {}").format(name) for name in names)
        conn.execute(sql.SQL("create view {} as select {}").format(made.ident, body))
        return
    columns = [sql.SQL("{} int").format(name) for name in names[: len(made.key)]]
    columns += [sql.SQL("{} text").format(name) for name in names[len(made.key) :]]
    if made.key:
        key = sql.SQL(", ").join(names[: len(made.key)])
        columns.append(sql.SQL("primary key ({})").format(key))
    table = sql.SQL(", ").join(columns)
    if made.kind == "partitioned":
        conn.execute(
            sql.SQL("create table {} ({}) partition by list ({})").format(
                made.ident, table, names[0]
            )
        )
        partition = sql.Identifier(made.schema, "part_" + made.name[:40])
        conn.execute(
            sql.SQL("create table {} partition of {} default").format(partition, made.ident)
        )
        return
    unlogged = sql.SQL("unlogged " if made.kind == "unlogged" else "")
    conn.execute(sql.SQL("create {}table {} ({})").format(unlogged, made.ident, table))


def drop(conn: Conn, made: Made) -> None:
    if made.schema != "public":
        schema = sql.Identifier(made.schema)
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(schema))
        return
    kind = sql.SQL("view" if made.kind == "view" else "table")
    conn.execute(sql.SQL("drop {} if exists {} cascade").format(kind, made.ident))


def resolves_to(conn: Conn, target: str) -> int | None:
    """The relation a regclass text names, if any, as attach's argument will resolve it."""
    found: list[Any] = []
    with conn.transaction(force_rollback=True):
        refusal(lambda: found.extend(conn.execute("select to_regclass(%s)::oid", [target])))
    return found[0][0] if found and found[0][0] is not None else None


def outbox_triggers(conn: Conn, target: str) -> int:
    if resolves_to(conn, target) is None:
        return 0
    row = conn.execute(
        "select count(*) from pg_trigger"
        " where tgrelid = %s::regclass and tgname like 'outbox\\_%%'",
        [target],
    ).fetchone()
    assert row is not None
    return int(row[0])


def should_attach(conn: Conn, call: Call) -> bool | None:
    """Whether attach() must take these arguments (None: either answer is right)."""
    made = call.made
    if made is None:
        return EXISTING[call.existing]
    target = resolves_to(conn, call.target(conn))
    if target is None:
        return False
    if target != resolves_to(conn, made.ident.as_string(conn)):
        return None  # typed unquoted, the name folded onto some other relation
    actions = call.effective_actions
    return (
        made.kind != "view"
        and call.entity is not None
        and re.fullmatch(r"[a-z][a-z0-9_]{0,247}", call.entity) is not None
        and len(actions) > 0
        and all(action in ACTIONS for action in actions)
        and (call.account is None or call.account in made.key + made.others)
        and ("updated" not in actions or len(made.key) == 1)
    )


def attach(conn: Conn, call: Call) -> psycopg.Error | None:
    query = "select outbox.attach(%s::regclass, %s"
    arguments: list[Any] = [call.target(conn), call.entity]
    if call.actions is not None:
        query += ", actions => %s::text[]"
        arguments.append(call.actions)
    if call.account is not None:
        query += ", account_column => %s"
        arguments.append(call.account)
    return refusal(lambda: conn.execute(query + ")", arguments))


def assert_capturing(conn: Conn, reader: Conn, call: Call, data: st.DataObject) -> None:
    """Each attached action captures its writes as the contract says."""
    made, entity = call.made, call.entity
    assert made is not None
    assert entity is not None
    one_row = sql.SQL("select to_jsonb(t.*)::text from {} t").format(made.ident)

    def row() -> str:
        found = reader.execute(one_row).fetchone()
        assert found is not None
        return str(found[0])

    def expected(old: str | None, new: str | None) -> list[Expected]:
        actions = {str(action) for action in call.effective_actions}
        return attached_events(entity, actions, call.account, old, new)

    # Values as literals: a name holding % would be taken for a placeholder beside parameters.
    values = [sql.Literal(1)] * len(made.key) + [sql.Literal(data.draw(texts)) for _ in made.others]
    conn.execute(
        sql.SQL("insert into {} values ({})").format(made.ident, sql.SQL(", ").join(values))
    )
    old = row()
    assert_captured(take_events(conn), expected(None, old))
    column, value = sql.Identifier(made.others[-1]), sql.Literal(data.draw(texts))
    conn.execute(sql.SQL("update {} set {} = {}").format(made.ident, column, value))
    new = row()
    assert_captured(take_events(conn), expected(old, new))
    conn.execute(sql.SQL("delete from {}").format(made.ident))
    assert_captured(take_events(conn), expected(new, None))


def test_attach_refuses_with_one_clear_line_or_attaches_and_captures(
    conn: Conn, reader: Conn
) -> None:
    def attach_one(call: Call, data: st.DataObject) -> None:
        target = call.target(conn)
        expect = should_attach(conn, call)
        before = outbox_triggers(conn, target)
        error = attach(conn, call)
        if error is not None:
            assert expect is not True, f"refused: {error.diag.message_primary}"
            assert_refused(error, call.echoed(conn))
            assert outbox_triggers(conn, target) == before
            return
        assert expect is not False, "attached"
        assert outbox_triggers(conn, target) == len(set(call.effective_actions))
        if call.made is not None:
            assert_capturing(conn, reader, call, data)
        conn.execute("select outbox.detach(%s::regclass)", [target])
        assert outbox_triggers(conn, target) == 0

    @settings(PROPERTY, max_examples=150)
    @given(call=calls(), data=st.data())
    def check(call: Call, data: st.DataObject) -> None:
        try:
            if call.made is not None:
                create(conn, call.made)
            attach_one(call, data)
        finally:
            if call.made is not None:
                drop(conn, call.made)

    check()
