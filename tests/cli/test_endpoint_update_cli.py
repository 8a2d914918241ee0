"""`outbox endpoints update` and the custom headers and rate limit of `create`, run as a real
process: each field changes in place, header values are shown nowhere, and bad input is one line,
a non-zero exit and no change at all."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox.cli import build_parser
from tests.cli.test_endpoints_cli import add_endpoint, fields, outbox

Conn = psycopg.Connection[Any]
TOKEN = "Bearer s3cr3t-t0ken-value"  # a stand-in credential no output may hold


def row(conn: Conn, endpoint_id: str) -> tuple[Any, ...]:
    """Every column an update may touch, and when the row last changed."""
    found = conn.execute(
        "select url, event_types, description, headers, rate_limit, secret, updated_at"
        " from outbox.endpoints where id = %s",
        [endpoint_id],
    ).fetchone()
    assert found is not None
    return tuple(found)


def test_update_changes_fields_in_place_and_shows_header_names_only(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    endpoint_id, secret = add_endpoint(conn, "https://a.example/hooks", ["contact.*"])
    run = outbox(
        cli_env,
        *("endpoints", "update", endpoint_id, "--json", "--url", "https://b.example/new"),
        *("--events", "deal.*,post.published", "--description", "billing team"),
        *("--header", f"Authorization:{TOKEN}", "--header", "X-Tenant: acme"),
        *("--rate-limit", "20/s"),
    )
    assert run.code == 0, run.err
    assert row(conn, endpoint_id)[:6] == (
        "https://b.example/new",
        ["deal.*", "post.published"],
        "billing team",
        {"Authorization": TOKEN, "X-Tenant": "acme"},
        20,
        secret,  # the same endpoint: its id and secret stay
    )
    document = json.loads(run.out)
    assert document["header_names"] == ["Authorization", "X-Tenant"]
    assert document["rate_limit"] == 20
    assert TOKEN not in run.out + run.err
    assert "acme" not in run.out + run.err

    run = outbox(
        cli_env,
        *("endpoints", "update", endpoint_id, "--remove-header", "authorization"),
        *("--header", "x-tenant: other", "--rate-limit", "off"),
    )
    assert run.code == 0, run.err
    assert row(conn, endpoint_id)[3:5] == ({"x-tenant": "other"}, None)
    assert fields(run.out)["headers"] == "x-tenant"


def test_create_takes_headers_and_a_rate_limit(conn: Conn, cli_env: dict[str, str]) -> None:
    run = outbox(
        cli_env,
        *("endpoints", "create", "https://a.example/hooks", "--events", "*", "--json"),
        *("--header", f"Authorization: {TOKEN}", "--rate-limit", "50/s"),
    )
    assert run.code == 0, run.err
    endpoint_id = json.loads(run.out)["id"]
    assert row(conn, endpoint_id)[3:5] == ({"Authorization": TOKEN}, 50)
    shown = outbox(cli_env, "endpoints", "show", endpoint_id)
    assert fields(shown.out)["headers"] == "Authorization"
    assert fields(shown.out)["rate limit"] == "50/s"
    listed = outbox(cli_env, "endpoints", "list", "--json")
    assert json.loads(listed.out)[0]["header_names"] == ["Authorization"]
    for output in (run, shown, listed):
        assert TOKEN not in output.out + output.err


BAD_ARGUMENTS = [
    pytest.param(["--header", "NoColonHere"], "NAME:VALUE", id="malformed"),
    pytest.param(["--header", f"Host: {TOKEN}"], "'Host' is set by the outbox", id="host"),
    pytest.param(["--header", "content-length: 3"], "cannot be replaced", id="content-length"),
    pytest.param(["--header", "X-Stover-Attempt: 9"], "cannot be replaced", id="x-stover"),
    pytest.param(["--header", "webhook-id: x"], "cannot be replaced", id="webhook"),
    pytest.param(["--header", "Bad Name: x"], "not an HTTP token", id="space-in-name"),
    pytest.param(["--header", f"X-A: {TOKEN}\x01"], "printable ASCII", id="control"),
    pytest.param(["--rate-limit", "0/s"], "not a rate limit", id="rate-zero"),
    pytest.param(["--rate-limit", "abc"], "not a rate limit", id="rate-abc"),
    pytest.param(["--rate-limit", "10001/s"], "not a rate limit", id="rate-high"),
    pytest.param(["--remove-header", "a:b"], "not a header name", id="remove-malformed"),
    pytest.param(["--url", "ftp://a.example/"], "not an absolute http(s) URL", id="url"),
]


@pytest.mark.parametrize(("options", "says"), BAD_ARGUMENTS)
def test_bad_arguments_are_refused_as_the_command_line_is_read(
    capsys: pytest.CaptureFixture[str], options: list[str], says: str
) -> None:
    words = ["endpoints", "update", "ep_1", "--description", "changed", *options]
    with pytest.raises(SystemExit) as exited:
        build_parser(words).parse_args(words)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert says in err
    assert TOKEN not in err


def test_bad_update_is_one_line_and_changes_nothing(conn: Conn, cli_env: dict[str, str]) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://a.example/hooks", ["*"])
    conn.execute(
        "update outbox.endpoints set headers = %s, rate_limit = 7 where id = %s",
        [json.dumps({"X-Kept": "kept"}), endpoint_id],
    )
    before = row(conn, endpoint_id)
    cases = [
        (["--header", f"Host: {TOKEN}"], 2, "'Host' is set by the outbox"),
        (["--rate-limit", "0/s"], 2, "not a rate limit"),
        (["--header", "X-A: 1", "--header", "x-a: 2"], 2, "given twice"),
        (["--remove-header", "X-Missing"], 1, "no header 'X-Missing'"),
        (["--events", "nothing.known"], 2, "not known"),
    ]
    for options, code, says in cases:
        run = outbox(
            cli_env, "endpoints", "update", endpoint_id, "--description", "changed", *options
        )
        assert (run.code, len(run.problems)) == (code, 1), run.err
        assert says in run.problems[0]
        assert TOKEN not in run.err
        assert row(conn, endpoint_id) == before
    run = outbox(cli_env, "endpoints", "update", endpoint_id)
    assert (run.code, len(run.problems)) == (2, 1)
    assert "nothing to change" in run.problems[0]
    run = outbox(cli_env, "endpoints", "update", "ep_missing", "--description", "x")
    assert (run.code, len(run.problems)) == (1, 1)
    assert "no endpoint with id 'ep_missing'" in run.problems[0]
    assert row(conn, endpoint_id) == before


def test_update_switches_ordering_per_record_on_and_off(
    conn: Conn, cli_env: dict[str, str]
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://a.example/hooks", ["deal.*"])

    def ordered() -> bool:
        found = conn.execute(
            "select ordered from outbox.endpoints where id = %s", [endpoint_id]
        ).fetchone()
        assert found is not None
        return bool(found[0])

    run = outbox(cli_env, "endpoints", "update", endpoint_id, "--ordered", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["ordered"] is True
    assert ordered()
    run = outbox(cli_env, "endpoints", "update", endpoint_id, "--url", "https://b.example/x")
    assert run.code == 0, run.err
    assert ordered()  # not given: kept
    run = outbox(cli_env, "endpoints", "update", endpoint_id, "--ordered", "--unordered")
    assert (run.code, len(run.problems)) == (2, 1), run.err
    assert ordered()
    run = outbox(cli_env, "endpoints", "update", endpoint_id, "--unordered")
    assert run.code == 0, run.err
    assert not ordered()
