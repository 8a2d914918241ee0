"""The database refuses bad endpoints, stages, statuses and secrets with messages a person can act
on, and gives a plain endpoint INSERT working defaults."""

from __future__ import annotations

import base64
import re
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from .rows import fan_out

Conn = psycopg.Connection[Any]
Check = psycopg.errors.CheckViolation

SECRET = re.compile(r"^whsec_[A-Za-z0-9+/]{43}=$")
STAGES = ["lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost"]
STATUSES = ["draft", "scheduled", "published", "failed"]


def add_endpoint(conn: Conn, url: str = "https://example.com/hooks", types: Any = ("*",)) -> str:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types) values (%s, %s) returning id",
        [url, list(types) if types is not None else None],
    ).fetchone()
    assert row is not None
    endpoint_id: str = row[0]
    return endpoint_id


BAD_URLS = [
    ("ftp://x", "not an absolute http(s) URL (scheme 'ftp')"),
    ("example.com/x", "not an absolute http(s) URL"),
    ("", "not an absolute http(s) URL"),
    ("http://", "missing host"),
    ("https:///path", "missing host"),
]
UNKNOWN_PATTERNS = ["foo.bar", "nothing.*", "contact.create", "contact*", ".*", "*.created"]


def test_endpoint_url_must_be_absolute_http(conn: Conn) -> None:
    endpoint_id = add_endpoint(conn)
    for url, reason in BAD_URLS:
        message = re.escape(f"endpoint url is refused: {reason}")
        with pytest.raises(Check, match=message):
            add_endpoint(conn, url=url)
        with pytest.raises(Check, match=message):
            conn.execute("update outbox.endpoints set url = %s where id = %s", [url, endpoint_id])
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (1,)


def test_endpoint_event_types_must_name_known_types(conn: Conn) -> None:
    endpoint_id = add_endpoint(conn)
    for pattern in UNKNOWN_PATTERNS:
        with pytest.raises(Check, match="not known"):
            add_endpoint(conn, types=["contact.created", pattern])
        with pytest.raises(Check, match="not known"):
            conn.execute(
                "update outbox.endpoints set event_types = %s where id = %s",
                [[pattern], endpoint_id],
            )
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (1,)


def test_endpoint_must_subscribe_to_something(conn: Conn) -> None:
    with pytest.raises(Check, match="at least one event type"):
        add_endpoint(conn, types=[])
    with pytest.raises(psycopg.errors.IntegrityError):
        add_endpoint(conn, types=None)
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (0,)


GOOD_URLS = [
    "https://example.com",
    "https://example.com/webhooks/stover",
    "HTTPS://Example.COM:8443/a?b=1#c",
    "https://hooks.example.com?token=abc",
    "http://127.0.0.1:8080/x?y=1",
    "http://[::1]:8080/hook",
]


def test_endpoint_accepts_absolute_http_urls(conn: Conn) -> None:
    for url in GOOD_URLS:
        add_endpoint(conn, url=url)
    rows = conn.execute("select url from outbox.endpoints").fetchall()
    assert sorted(url for (url,) in rows) == sorted(GOOD_URLS)


def test_endpoint_accepts_wildcards_prefixes_and_exact_types(conn: Conn) -> None:
    for types in (["*"], ["deal.*"], ["contact.created", "company.*"], ["attribution.tracked"]):
        add_endpoint(conn, types=types)
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (4,)


def test_plain_endpoint_insert_gets_working_defaults(conn: Conn) -> None:
    first = add_endpoint(conn, types=["deal.*"])
    second = add_endpoint(conn, types=["*"])
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select id, secret, enabled, created_at, description from outbox.endpoints"
            " order by created_at, id"
        ).fetchall()
    assert [row["id"] for row in rows] == [first, second]
    for row in rows:
        assert re.match(r"^ep_[0-9a-f]+$", row["id"])
        assert SECRET.match(row["secret"]), row["secret"]
        assert len(base64.b64decode(row["secret"].removeprefix("whsec_"), validate=True)) == 32
        assert row["enabled"] is True
        assert row["created_at"] is not None
    assert rows[0]["secret"] != rows[1]["secret"]


BAD_SECRETS = [
    "hunter2",
    "whsec_",
    "whsec_tooshort",
    "sk_" + "A" * 43 + "=",
    "whsec_" + "!" * 44,
    "whsec_" + "A" * 43 + "==",  # padding that no base64 encoder writes
    "whsec_" + "A" * 33,  # not a whole number of base64 quanta
    "whsec_" + "A" * 43 + "=\n",
]


def test_endpoint_secret_must_be_whsec_base64(conn: Conn) -> None:
    endpoint_id = add_endpoint(conn)
    for secret in BAD_SECRETS:
        with pytest.raises(Check, match="endpoint_secret_format"):
            conn.execute(
                "insert into outbox.endpoints (url, event_types, secret) values (%s, '{*}', %s)",
                ["https://example.com/hooks", secret],
            )
        with pytest.raises(Check, match="endpoint_secret_format"):
            conn.execute(
                "update outbox.endpoints set secret = %s where id = %s", [secret, endpoint_id]
            )


def test_endpoint_accepts_a_secret_in_the_standard_webhooks_form(conn: Conn) -> None:
    # 32 bytes as we make them, and 24 bytes as Svix makes them.
    for size in (32, 24):
        secret = "whsec_" + base64.b64encode(bytes(range(size))).decode()
        conn.execute(
            "insert into outbox.endpoints (url, event_types, secret) values (%s, '{*}', %s)",
            ["https://example.com/hooks", secret],
        )


def test_deal_stage_outside_the_list_is_refused_naming_the_allowed_stages(conn: Conn) -> None:
    with pytest.raises(Check) as refused:
        conn.execute("insert into stover.deals (name, stage) values ('d', 'won')")
    assert "won" in str(refused.value)
    assert all(stage in str(refused.value) for stage in STAGES)
    conn.execute("insert into stover.deals (name) values ('d')")
    with pytest.raises(Check, match=", ".join(STAGES)):
        conn.execute("update stover.deals set stage = 'won'")


def test_post_status_outside_the_list_is_refused_naming_the_allowed_statuses(conn: Conn) -> None:
    with pytest.raises(Check) as refused:
        conn.execute("insert into stover.posts (network, status) values ('x', 'sent')")
    assert "sent" in str(refused.value)
    assert all(status in str(refused.value) for status in STATUSES)
    conn.execute("insert into stover.posts (network) values ('x')")
    with pytest.raises(Check, match=", ".join(STATUSES)):
        conn.execute("update stover.posts set status = 'sent'")
    assert conn.execute("select count(*) from outbox.events").fetchone() == (0,)


def test_delivery_status_outside_the_list_is_refused(conn: Conn) -> None:
    add_endpoint(conn)
    conn.execute("insert into stover.companies (name) values ('Acme')")
    fan_out(conn)
    with pytest.raises(Check, match="delivery_status"):
        conn.execute("update outbox.deliveries set status = 'bogus'")
    row = conn.execute("select status from outbox.deliveries").fetchone()
    assert row == ("pending",)


# -- what a direct write can no longer put in ------------------------------------------------------

NOT_A_LIST = ["{{deal.created,deal.updated}}", "{{*}}", "[5:5]={deal.created}"]
PLAIN_LIST = "event_types must be a plain list of types"


@pytest.mark.parametrize("types", NOT_A_LIST)
def test_event_types_must_be_a_plain_list(conn: Conn, types: str) -> None:
    endpoint_id = add_endpoint(conn)
    with pytest.raises(Check, match=PLAIN_LIST):
        conn.execute(
            "insert into outbox.endpoints (url, event_types) values ('https://example.com', %s)",
            [types],
        )
    with pytest.raises(Check, match=PLAIN_LIST):
        conn.execute(
            "update outbox.endpoints set event_types = %s where id = %s", [types, endpoint_id]
        )
    assert conn.execute("select event_types from outbox.endpoints").fetchall() == [(["*"],)]


def test_event_types_keep_their_shape_with_the_checks_off(conn: Conn) -> None:
    # A restore or a replica writes rows with triggers off; the shape is a table constraint.
    conn.execute("set session_replication_role = replica")
    for types in [*NOT_A_LIST, "{deal.created,NULL}"]:
        with pytest.raises(Check, match="endpoint_event_types_list"):
            conn.execute(
                "insert into outbox.endpoints (url, event_types)"
                " values ('https://example.com', %s)",
                [types],
            )


BAD_DESCRIPTIONS = [
    ("line\nbreak", "control character"),
    ("tab\there", "control character"),
    ("\x1b[31mred", "control character"),
    ("c1\x85", "control character"),
    ("x" * 1001, "longer than 1000 characters"),
]


@pytest.mark.parametrize(("description", "reason"), BAD_DESCRIPTIONS)
def test_description_is_a_line_of_text(conn: Conn, description: str, reason: str) -> None:
    endpoint_id = add_endpoint(conn)
    message = f"endpoint description is refused: .*{reason}"
    with pytest.raises(Check, match=message):
        conn.execute(
            "insert into outbox.endpoints (url, event_types, description)"
            " values ('https://example.com', '{*}', %s)",
            [description],
        )
    with pytest.raises(Check, match=message):
        conn.execute(
            "update outbox.endpoints set description = %s where id = %s",
            [description, endpoint_id],
        )
    for fine in ("x" * 1000, "Zoë's CRM — ops ✓", ""):
        conn.execute(
            "update outbox.endpoints set description = %s where id = %s", [fine, endpoint_id]
        )


def test_a_value_is_judged_when_written_not_when_its_row_changes(conn: Conn) -> None:
    # A row from before the rules (written here with the check off): switching it off, as the
    # relay does on a 410, or re-describing it, does not judge its URL or description again.
    conn.execute("alter table outbox.endpoints disable trigger endpoints_check")
    endpoint_id = add_endpoint(conn, url="http://0x7f.1/")
    conn.execute(
        "update outbox.endpoints set description = 'two\nlines' where id = %s", [endpoint_id]
    )
    conn.execute("alter table outbox.endpoints enable trigger endpoints_check")

    conn.execute("update outbox.endpoints set enabled = false where id = %s", [endpoint_id])
    conn.execute("update outbox.endpoints set description = 'gone' where id = %s", [endpoint_id])
    with pytest.raises(Check, match="not a canonical IPv4 address"):
        conn.execute(
            "update outbox.endpoints set url = 'http://0x7f.2/' where id = %s", [endpoint_id]
        )


BAD_EVENTS = [
    ("deal.created", "[1, 2]", None, "json_object_only"),
    ("deal.created", '"text"', None, "json_object_only"),
    ("deal.created", "null", None, "json_object_only"),
    ("deal.created", '{"id": 1}', "[]", "json_object_only"),
]


@pytest.mark.parametrize(("event_type", "data", "previous", "constraint"), BAD_EVENTS)
def test_an_event_inserted_directly_meets_what_emit_requires(
    conn: Conn, event_type: str, data: str, previous: str | None, constraint: str
) -> None:
    with pytest.raises(Check, match=constraint):
        conn.execute(
            "insert into outbox.events (type, data, previous_attributes) values (%s, %s, %s)",
            [event_type, data, previous],
        )
    conn.execute(
        "insert into outbox.events (type, data, previous_attributes)"
        " values ('invoice.paid', '{}', '{\"n\": 1}'), ('a.b.c.d', '{\"n\": 2}', null)"
    )
    assert conn.execute("select count(*) from outbox.events").fetchone() == (2,)


# Values of timestamptz Python cannot hold (years 1 to 9999, in every time zone).
UNREADABLE_MOMENTS = ["infinity", "-infinity", "0001-01-01 00:00 BC", "10000-01-01", "9999-12-31"]
MOMENT_COLUMNS = [
    ("events", "created_at"),
    ("endpoints", "created_at"),
    ("endpoints", "updated_at"),
    ("deliveries", "next_attempt_at"),
    ("deliveries", "delivered_at"),
]


@pytest.mark.parametrize(("table", "column"), MOMENT_COLUMNS)
def test_moments_the_relay_cannot_read_are_refused(conn: Conn, table: str, column: str) -> None:
    add_endpoint(conn)
    conn.execute("insert into stover.companies (name) values ('Acme')")
    fan_out(conn)
    statement = f"update outbox.{table} set {column} = %s::timestamptz"
    if table == "events":
        statement = "insert into outbox.events (type, data, created_at) values ('a.b', '{}', %s)"
    for moment in UNREADABLE_MOMENTS:
        with pytest.raises(Check, match="moment_range"):
            conn.execute(statement, [moment])
    for moment in ["0001-01-02 00:00+00", "2024-01-15 10:30+00", "9999-12-30 23:59+00"]:
        conn.execute(statement, [moment])


@pytest.mark.parametrize("endpoint_id", ["", "ep 1", "ep_1\n", "ép_1", "x" * 257])
def test_an_endpoint_id_is_one_the_cli_can_name(conn: Conn, endpoint_id: str) -> None:
    with pytest.raises(Check, match=r"endpoint id .* must be 1 to 256 printable ASCII"):
        conn.execute(
            "insert into outbox.endpoints (id, url, event_types)"
            " values (%s, 'https://example.com', '{*}')",
            [endpoint_id],
        )
    other = add_endpoint(conn)
    with pytest.raises(Check, match="endpoint id"):
        conn.execute("update outbox.endpoints set id = %s where id = %s", [endpoint_id, other])
    conn.execute("update outbox.endpoints set id = 'ep_by-hand.1' where id = %s", [other])


def test_a_refusal_that_names_the_value_is_one_line(conn: Conn) -> None:
    with pytest.raises(Check) as refused:
        add_endpoint(conn, types=["deal.created\nX-Injected: 1"])
    assert refused.value.diag.message_primary == (
        "event type 'deal.created?X-Injected: 1' is not known and matches no known type"
    )
