"""Row-level security: the role outbox_account sees and changes only its own account's rows of
outbox.events, endpoints, deliveries and attempts, and a mapped login cannot leave its account."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from outbox.db import admin

from .conftest import connect_as
from .rows import fan_out

Conn = psycopg.Connection[Any]
TABLES = ("outbox.events", "outbox.endpoints", "outbox.deliveries", "outbox.attempts")


def seed(conn: Conn) -> dict[str, str]:
    """Accounts 1 and 2 and an account-less row of everything: an endpoint each, an event each
    fanned out to it, an attempt each. Endpoint ids by account ('-' for none)."""
    made: dict[str, str] = {}
    for account in ("1", "2", None):
        row = conn.execute(
            "insert into outbox.endpoints (url, event_types, account_id)"
            " values ('http://127.0.0.1:9/hook', '{*}', %s) returning id",
            [account],
        ).fetchone()
        assert row is not None
        made[account or "-"] = row[0]
        conn.execute("select outbox.emit('app.thing', '{}', account => %s)", [account])
    fan_out(conn)
    conn.execute(
        "insert into outbox.attempts (delivery_id, attempt, started_at, duration_ms, status_code)"
        " select id, 1, now(), 1, 500 from outbox.deliveries"
    )
    return made


def counts(c: Conn) -> dict[str, int]:
    found = {}
    for table in TABLES:
        row = c.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        found[table] = int(row[0])
    return found


def accounts_seen(c: Conn) -> set[str | None]:
    seen: set[str | None] = set()
    for table in ("outbox.events", "outbox.endpoints", "outbox.deliveries"):
        seen |= {r[0] for r in c.execute(f"select account_id from {table}").fetchall()}
    return seen


def test_the_account_role_sees_its_own_rows_with_the_setting_and_none_without(
    conn: Conn, db_url: str, login: Any
) -> None:
    seed(conn)
    portal = login("outbox_account")
    with connect_as(db_url, portal) as c:
        assert counts(c) == dict.fromkeys(TABLES, 0)
        c.execute("set outbox.account = '2'")
        assert counts(c) == dict.fromkeys(TABLES, 1)
        assert accounts_seen(c) == {"2"}
        with c.transaction():
            c.execute("set local outbox.account = '1'")
            assert accounts_seen(c) == {"1"}
        assert accounts_seen(c) == {"2"}
    # Everyone else sees what they saw before.
    assert counts(conn) == dict.fromkeys(TABLES, 3)


@pytest.mark.parametrize(
    "statement",
    [
        "insert into outbox.endpoints (url, event_types, account_id)"
        " values ('http://127.0.0.1:9/x', '{*}', '1')",
        "insert into outbox.endpoints (url, event_types) values ('http://127.0.0.1:9/x', '{*}')",
        "insert into outbox.endpoints (url, event_types, all_accounts)"
        " values ('http://127.0.0.1:9/x', '{*}', true)",
        "update outbox.endpoints set account_id = '1'",
        "update outbox.deliveries set account_id = '1'",
        "insert into outbox.deliveries (event_id, endpoint_id, account_id)"
        " select e.id, %(foreign)s, '2' from outbox.events e",
    ],
)
def test_the_account_role_cannot_write_into_or_move_to_another_account(
    conn: Conn, db_url: str, login: Any, statement: str
) -> None:
    made = seed(conn)
    before = conn.execute(
        "select (select json_agg(e order by id) from outbox.endpoints e),"
        " (select json_agg(d order by id) from outbox.deliveries d)"
    ).fetchone()
    portal = login("outbox_account")
    with connect_as(db_url, portal) as c:
        c.execute("set outbox.account = '2'")
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation)):
            c.execute(statement, {"foreign": made["1"]})
    after = conn.execute(
        "select (select json_agg(e order by id) from outbox.endpoints e),"
        " (select json_agg(d order by id) from outbox.deliveries d)"
    ).fetchone()
    assert after == before


def test_the_account_role_manages_its_own_endpoints(conn: Conn, db_url: str, login: Any) -> None:
    made = seed(conn)
    portal = login("outbox_account")
    with connect_as(db_url, portal) as c:
        c.execute("set outbox.account = '2'")
        row = c.execute(
            "insert into outbox.endpoints (url, event_types, account_id)"
            " values ('http://127.0.0.1:9/new', '{app.*}', '2') returning id, secret"
        ).fetchone()
        assert row is not None
        assert row[1].startswith("whsec_")
        c.execute("update outbox.endpoints set enabled = false where id = %s", [made["2"]])
        # Another account's endpoint is not there to change or delete.
        assert (
            c.execute(
                "update outbox.endpoints set enabled = false where id = %s", [made["1"]]
            ).rowcount
            == 0
        )
        assert c.execute("delete from outbox.endpoints where id = %s", [made["1"]]).rowcount == 0
        # It rotates its own endpoints' secrets; another account's endpoint is not there.
        assert c.execute("select * from outbox.rotate_secret(%s)", [row[0]]).fetchone()
        with pytest.raises(psycopg.errors.NoDataFound):
            c.execute("select * from outbox.rotate_secret(%s)", [made["1"]])
        assert c.execute("delete from outbox.endpoints where id = %s", [made["2"]]).rowcount == 1
    left = conn.execute("select account_id, enabled from outbox.endpoints order by id").fetchall()
    assert sorted(left, key=str) == sorted([("1", True), (None, True), ("2", True)], key=str)
    # The deleted endpoint's deliveries went with it, and no other's did.
    assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (2,)


def test_a_mapped_login_cannot_leave_its_account_by_set(
    conn: Conn, db_url: str, login: Any
) -> None:
    seed(conn)
    customer = login("outbox_account")
    conn.execute(
        "insert into outbox.account_logins (login, account_id) values (%s, '1')", [customer]
    )
    with connect_as(db_url, customer) as c:
        assert accounts_seen(c) == {"1"}
        c.execute("set outbox.account = '2'")
        assert accounts_seen(c) == {"1"}
        c.execute("reset outbox.account")
        assert accounts_seen(c) == {"1"}
        # Nor by reading who is mapped where.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select * from outbox.account_logins")


def test_the_relay_and_writers_are_not_confined(conn: Conn, db_url: str, login: Any) -> None:
    seed(conn)
    relay = login("outbox_relay")
    with connect_as(db_url, relay) as c:
        assert counts(c) == dict.fromkeys(TABLES, 3)


def test_the_account_role_redelivers_its_ordered_deliveries_and_sees_only_its_records(
    conn: Conn, db_url: str, login: Any
) -> None:
    """Redelivering to an ordered endpoint locks the record's row (outbox.hold_ordered) and may
    release its next delivery: an account may do it for its own records, and sees no other's."""
    ids = {}
    for account in ("1", "2"):
        row = conn.execute(
            "insert into outbox.endpoints (url, event_types, account_id, ordered)"
            " values ('http://127.0.0.1:9/hook', '{*}', %s, true) returning id",
            [account],
        ).fetchone()
        assert row is not None
        ids[account] = row[0]
        for n in (1, 2):
            conn.execute(
                "select outbox.emit('app.thing', jsonb_build_object('n', %s::int),"
                " account => %s, key => 'thing:' || %s)",
                [n, account, account],
            )
    fan_out(conn)
    # Account 2's first delivery failed; its second waits behind it, and is released.
    conn.execute(
        "update outbox.deliveries set status = 'failed', next_attempt_at = null"
        " where account_id = '2' and sequence = 1"
    )
    conn.execute("select outbox.release_next(array[%s], array['thing:2'])", [ids["2"]])
    first, second = conn.execute(
        "select id, next_attempt_at is not null from outbox.deliveries"
        " where account_id = '2' order by sequence"
    ).fetchall()
    assert second[1]
    portal = login("outbox_account")
    with connect_as(db_url, portal) as c:
        c.execute("set outbox.account = '2'")
        assert [r[0] for r in c.execute("select key from outbox.records").fetchall()] == ["thing:2"]
        redelivered = admin.redeliver(c, [first[0]])
        assert redelivered.requeued == [first[0]]
    # The old delivery goes after the one of its record that is due already.
    rows = conn.execute(
        "select id, status, next_attempt_at is not null from outbox.deliveries"
        " where account_id = '2' order by sequence"
    ).fetchall()
    assert rows == [(first[0], "pending", False), (second[0], "pending", True)]
