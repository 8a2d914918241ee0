"""An UPDATE that changes a row's primary key: the old key is deleted and the new one created, so
a receiver that keys its copy by id stays right; the rest of the statement's rows are updates."""

from __future__ import annotations

from typing import Any

import psycopg

Conn = psycopg.Connection[Any]


def events(conn: Conn) -> list[tuple[str, str | None, Any]]:
    return conn.execute(
        "select type, data ->> 'code', previous_attributes from outbox.events order by id"
    ).fetchall()


def test_a_key_changing_update_is_a_deletion_and_a_creation(conn: Conn) -> None:
    conn.execute("create table public.skus (code text primary key, price int)")
    conn.execute("select outbox.attach('public.skus', 'sku', array['updated'])")
    conn.execute("insert into public.skus values ('a', 1), ('b', 2)")
    conn.execute(
        "update public.skus set code = case code when 'a' then 'z' else code end, price = price + 1"
    )
    assert events(conn) == [
        ("sku.deleted", "a", None),
        ("sku.updated", "b", {"price": 2}),
        ("sku.created", "z", None),
    ]
    # Both types exist for endpoints to subscribe to, though only `updated` was attached.
    known = conn.execute(
        "select name from outbox.event_types where name like 'sku.%' order by name"
    ).fetchall()
    assert known == [("sku.created",), ("sku.deleted",), ("sku.updated",)]
