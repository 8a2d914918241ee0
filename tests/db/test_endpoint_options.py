"""The table holds an endpoint's headers and rate limit to the rule the CLI holds them to, in the
same words, whoever writes the row; a header's value is named in no refusal."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox import custom_headers

Conn = psycopg.Connection[Any]
SECRET = "Bearer s3cr3t"  # a stand-in credential no refusal may quote

HEADER_SETS: list[dict[str, Any]] = [
    {},
    {"Authorization": SECRET, "X-Tenant": "acme"},
    {"X-Empty": ""},
    {"Host": "example.com"},
    {"content-type": "text/plain"},
    {"User-Agent": "mine"},
    {"X-Stover-Signature": SECRET},
    {"Webhook-Id": "1"},
    {"Proxy-Authorization": SECRET},
    {"Bad Name": "x"},
    {"": "x"},
    {"X-" + "a" * 99: "x"},
    {"X-A": "1", "x-a": "2"},
    {"X-A": SECRET + "\n"},
    {"X-A": " padded"},
    {"X-A": "é"},
    {"X-A": "a" * 4096},
    {"X-A": "a" * 4097},
    {f"X-{i}": "v" for i in range(20)},
    {f"X-{i}": "v" for i in range(21)},
    {"X-A": "a" * 4096, "X-B": "b" * 4096, "X-C": "c"},
]


def test_the_table_and_the_cli_hold_one_header_rule(conn: Conn) -> None:
    for headers in HEADER_SETS:
        row = conn.execute("select outbox.headers_problem(%s::jsonb)", [json.dumps(headers)])
        found = row.fetchone()
        assert found is not None
        assert found[0] == custom_headers.headers_problem(headers), headers
        if found[0] is not None:
            assert SECRET not in found[0]


def endpoint(conn: Conn) -> str:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types) values ('https://a.example/', '{*}')"
        " returning id"
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_plain_sql_writes_are_held_to_the_rule(conn: Conn) -> None:
    endpoint_id = endpoint(conn)
    for statement, params in (
        ("update outbox.endpoints set headers = %s::jsonb", [json.dumps({"Host": SECRET})]),
        ("update outbox.endpoints set headers = %s::jsonb", [json.dumps({"X-A": 1})]),
        ("update outbox.endpoints set headers = '[]'", []),
        ("update outbox.endpoints set rate_limit = 0", []),
        ("update outbox.endpoints set rate_limit = 10001", []),
        (
            "insert into outbox.endpoints (url, event_types, headers) values"
            " ('https://b.example/', '{*}', %s::jsonb)",
            [json.dumps({"webhook-signature": SECRET})],
        ),
    ):
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            conn.execute(statement, params)
        assert SECRET not in str(refused.value)
    before = conn.execute("select updated_at from outbox.endpoints").fetchone()
    conn.execute(
        "update outbox.endpoints set headers = %s::jsonb, rate_limit = 20 where id = %s",
        [json.dumps({"Authorization": SECRET}), endpoint_id],
    )
    after = conn.execute("select headers, rate_limit, updated_at from outbox.endpoints")
    headers, rate_limit, updated_at = after.fetchone() or (None, None, None)
    assert (headers, rate_limit) == ({"Authorization": SECRET}, 20)
    assert before is not None
    assert updated_at > before[0]
