"""`--account` and `--all-accounts` on the CLI, run as real processes: rows, output and refusals."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.cli.test_endpoints_cli import outbox
from tests.db.rows import fan_out

Conn = psycopg.Connection[Any]
HOOK = "http://127.0.0.1:9/hook"


def endpoints(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select url, account_id, all_accounts from outbox.endpoints order by created_at, id"
    ).fetchall()


def test_endpoints_are_created_and_listed_by_account(conn: Conn, cli_env: dict[str, str]) -> None:
    for args in (("--account", "42"), ("--account", "acme-eu"), ("--all-accounts",), ()):
        run = outbox(cli_env, "endpoints", "create", HOOK, "--events", "*", *args)
        assert run.code == 0, run.err
    assert endpoints(conn) == [
        (HOOK, "42", False),
        (HOOK, "acme-eu", False),
        (HOOK, None, True),
        (HOOK, None, False),
    ]
    listed = outbox(cli_env, "endpoints", "list", "--account", "42", "--json")
    assert [e["account_id"] for e in json.loads(listed.out)] == ["42"]
    table = outbox(cli_env, "endpoints", "list")
    header, *rows = table.out.splitlines()
    assert "ACCOUNT" in header
    assert [row.split()[1] for row in rows] == ["42", "acme-eu", "(all)", "-"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--account", ""), "--account is empty"),
        (("--account", "x" * 129), "at most 128"),
        (("--account", "a b"), "must be letters"),
        (("--account", "42", "--all-accounts"), "exclude each other"),
    ],
)
def test_a_bad_account_is_one_line_and_changes_nothing(
    conn: Conn, cli_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    run = outbox(cli_env, "endpoints", "create", HOOK, "--events", "*", *args)
    assert run.code != 0
    assert len(run.problems) == 1, run.err
    assert message in run.problems[0]
    assert "Traceback" not in run.err
    assert endpoints(conn) == []


def test_an_account_gets_no_more_endpoints_than_its_limit(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    env = {**cli_env, "OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT": "2"}
    for _ in range(2):
        assert outbox(env, "endpoints", "create", HOOK, "--events", "*", "--account", "7").code == 0
    run = outbox(env, "endpoints", "create", HOOK, "--events", "*", "--account", "7")
    assert run.code != 0
    assert len(run.problems) == 1, run.err
    assert "account 7 already has 2 endpoints" in run.problems[0]
    assert "OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT=2" in run.problems[0]
    # Other accounts, and endpoints without one, are not held back.
    assert outbox(env, "endpoints", "create", HOOK, "--events", "*", "--account", "8").code == 0
    assert outbox(env, "endpoints", "create", HOOK, "--events", "*").code == 0
    assert len(endpoints(conn)) == 4
    bad = outbox({**cli_env, "OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT": "0"}, "endpoints", "list")
    assert bad.code != 0
    assert "OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT" in bad.problems[0]


def test_deliveries_and_replay_keep_to_the_account(conn: Conn, cli_env: dict[str, str]) -> None:
    ids = {}
    for account in ("1", "2"):
        run = outbox(cli_env, "endpoints", "create", HOOK, "--events", "*", "--account", account)
        assert run.code == 0, run.err
        ids[account] = run.out.split()[1]
        conn.execute("select outbox.emit('app.thing', '{}', account => %s)", [account])
    conn.execute("select outbox.emit('app.thing', '{}')")
    fan_out(conn)
    listed = json.loads(outbox(cli_env, "deliveries", "list", "--account", "2", "--json").out)
    assert [(d["endpoint_id"], d["account_id"]) for d in listed] == [(ids["2"], "2")]

    wrong = outbox(
        cli_env, "replay", "--endpoint", ids["1"], "--account", "2", "--since", "2000-01-01"
    )
    assert wrong.code != 0
    assert "is not account 2's" in wrong.problems[0]
    conn.execute("update outbox.deliveries set status = 'delivered'")
    replayed = outbox(
        cli_env,
        "replay",
        "--endpoint",
        ids["1"],
        "--account",
        "1",
        "--since",
        "2000-01-01",
        "--json",
    )
    assert replayed.code == 0, replayed.err
    # Account 1's one event, not account 2's nor the account-less one.
    assert json.loads(replayed.out)["requeued"] == 1
    assert json.loads(replayed.out)["created"] == 0
