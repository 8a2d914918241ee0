"""`outbox endpoints …` run as a real process against a fresh database: output and rows."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from outbox.commands.endpoints import check_types, check_url, parse_types, type_matches
from outbox.db import admin
from outbox.errors import ConfigError, OutboxError
from outbox.render import Column, shorten, table
from tests.db.rows import fan_out

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def problems(self) -> list[str]:
        """stderr without the `database: …` notice every command prints."""
        return [line for line in self.err.splitlines() if not line.startswith("database: ")]


def outbox(env: dict[str, str], *args: str) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "outbox", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def fields(text: str) -> dict[str, str]:
    """`label  value` lines as a mapping (labels may contain one space)."""
    pairs = (line.split("  ", 1) for line in text.splitlines() if "  " in line)
    return {label.strip(): value.strip() for label, value in pairs}


def add_endpoint(conn: Conn, url: str, types: list[str], **extra: Any) -> tuple[str, str]:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types, enabled) values (%s, %s, %s)"
        " returning id, secret",
        [url, types, extra.get("enabled", True)],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def add_contacts(conn: Conn, n: int) -> None:
    """`n` contacts in one statement, their events fanned out as a relay would."""
    conn.execute(
        "insert into stover.contacts (first_name, last_name, email)"
        " select 'Ada' || g, 'Lovelace', 'ada' || g || '@example.com'"
        " from generate_series(1, %s) g",
        [n],
    )
    fan_out(conn)


def endpoint_row(conn: Conn, endpoint_id: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "select url, event_types, enabled, description, secret from outbox.endpoints where id = %s",
        [endpoint_id],
    ).fetchone()


def assert_one_line_error(run: Run, *needles: str) -> None:
    assert run.code != 0
    assert run.out == ""
    assert "Traceback" not in run.err
    assert len(run.problems) == 1, run.err
    assert run.problems[0].startswith("outbox: error: ")
    for needle in needles:
        assert needle in run.problems[0]


def test_create_prints_id_and_secret_once_and_writes_the_endpoint(
    cli_env: dict[str, str], conn: Conn
) -> None:
    run = outbox(
        cli_env,
        "endpoints",
        "create",
        "https://hooks.example.com/stover",
        "--events",
        "contact.*, deal.created",
        "--description",
        "CRM sync",
    )

    assert run.code == 0, run.err
    shown = fields(run.out)
    assert set(shown) == {"id", "secret"}
    row = endpoint_row(conn, shown["id"])
    assert row == (
        "https://hooks.example.com/stover",
        ["contact.*", "deal.created"],
        True,
        "CRM sync",
        shown["secret"],
    )
    assert shown["secret"].startswith("whsec_")
    assert len(base64.b64decode(shown["secret"].removeprefix("whsec_"), validate=True)) == 32
    assert shown["secret"] not in run.err


def test_create_disabled_endpoint(cli_env: dict[str, str], conn: Conn) -> None:
    run = outbox(
        cli_env, "endpoints", "create", "http://127.0.0.1:9/h", "--events", "*", "--disabled"
    )
    assert run.code == 0, run.err
    row = endpoint_row(conn, fields(run.out)["id"])
    assert row is not None
    assert row[2] is False


@pytest.mark.parametrize(
    ("url", "events", "needle"),
    [
        ("ftp://files.example.com/in", "*", "http(s)"),
        ("https://hooks.example.com/in", "invoice.*", "invoice.*"),
    ],
)
def test_create_rejects_bad_input_in_one_line_and_writes_nothing(
    cli_env: dict[str, str], conn: Conn, url: str, events: str, needle: str
) -> None:
    run = outbox(cli_env, "endpoints", "create", url, "--events", events)

    assert_one_line_error(run, needle)
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (0,)


def test_a_check_the_database_makes_comes_out_as_one_line(db_url: str, conn: Conn) -> None:
    with pytest.raises(OutboxError) as caught, admin.session(db_url) as session:
        admin.create_endpoint(
            session,
            url="mailto:ops@example.com",
            event_types=["*"],
            description="",
            enabled=True,
            secret="whsec_" + "A" * 43 + "=",
        )

    assert "endpoint url is refused: not an absolute http(s) URL" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (0,)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example.com/in",
        "/relative/path",
        "https:///no-host",
        "https://user:pw@hooks.example.com/in",
        "https://hooks.example.com/in put",
        "https://hooks.example.com/\x1b[2J",
        "https://hooks.example.com:99999/in",
        "http://0x7f.1/",
        "https://hooks.example.com:/in",
        "https://hooks.example.com/" + "a" * 2100,
    ],
)
def test_check_url_refuses_what_no_receiver_can_be(url: str) -> None:
    with pytest.raises(ConfigError):
        check_url(url)


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/in?v=1", "http://127.0.0.1:8080/h", "HTTPS://EXAMPLE.COM"]
)
def test_check_url_accepts_absolute_http_urls(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("text", "known", "accepted"),
    [
        ("deal.created", ["deal.created"], ["deal.created"]),
        (" deal.* , *,deal.*", ["deal.created"], ["deal.*", "*"]),
        ("contact.created", [], None),
        ("contact.creatd", ["contact.created"], None),
        ("contact.*", ["contacts.created"], None),
        ("deal.created,", ["deal.created"], None),
    ],
)
def test_event_type_patterns_must_name_or_match_a_known_type(
    text: str, known: list[str], accepted: list[str] | None
) -> None:
    if accepted is None:
        with pytest.raises(ConfigError):
            check_types(parse_types(text), known)
    else:
        patterns = parse_types(text)
        check_types(patterns, known)
        assert patterns == accepted


def test_list_counts_backlog_and_shows_every_value_whole_when_piped_and_has_json(
    cli_env: dict[str, str], conn: Conn
) -> None:
    long_url = "https://a-rather-long-receiver-host.example.com/webhooks/stover/incoming/v1/" + (
        "x" * 44
    )
    assert len(long_url) == 120
    busy, _ = add_endpoint(conn, long_url, ["contact.*", "deal.*", "company.*", "post.*"])
    idle, _ = add_endpoint(conn, "http://127.0.0.1:9/idle", ["deal.created"], enabled=False)
    add_contacts(conn, 3)
    conn.execute(
        "update outbox.deliveries set status = 'failed', attempts = 5"
        " where id = (select min(id) from outbox.deliveries)"
    )

    table = outbox(cli_env, "endpoints", "list")
    as_json = outbox(cli_env, "endpoints", "list", "--json")

    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert long_url in lines[1].split()
    assert "contact.*,deal.*,company.*,post.*" in lines[1].split()
    assert "…" not in table.out
    assert "\x1b" not in table.out
    assert lines[0].split() == [
        *("ID", "ACCOUNT", "ON", "PENDING", "FAILED", "BREAKER", "URL", "EVENTS", "DISABLED")
    ]
    assert lines[1].split()[:6] == [busy, "-", "yes", "2", "1", "closed"]
    assert lines[2].split()[:6] == [idle, "-", "no", "0", "0", "closed"]
    listed = {e["id"]: e for e in json.loads(as_json.out)}
    assert listed[busy]["url"] == long_url
    assert listed[busy]["event_types"] == ["contact.*", "deal.*", "company.*", "post.*"]
    assert (listed[busy]["pending"], listed[busy]["failed"]) == (2, 1)
    assert listed[idle]["enabled"] is False
    assert "secret" not in listed[busy]


def test_show_masks_the_secret_unless_revealed(cli_env: dict[str, str], conn: Conn) -> None:
    endpoint_id, secret = add_endpoint(conn, "https://hooks.example.com/in", ["deal.*"])

    masked = outbox(cli_env, "endpoints", "show", endpoint_id)
    revealed = outbox(cli_env, "endpoints", "show", endpoint_id, "--reveal-secret")
    as_json = outbox(cli_env, "endpoints", "show", endpoint_id, "--json")

    assert masked.code == revealed.code == as_json.code == 0
    shown = fields(masked.out)
    assert shown["secret"] == f"whsec_…{secret[-4:]}"
    assert shown["url"] == "https://hooks.example.com/in"
    assert shown["event types"] == "deal.*"
    assert secret not in masked.out + masked.err
    assert fields(revealed.out)["secret"] == secret
    document = json.loads(as_json.out)
    assert document["secret"] == f"whsec_…{secret[-4:]}"
    assert document["deliveries"] == {"pending": 0, "failed": 0, "delivered": 0}


def test_disable_enable_and_rotate_secret(cli_env: dict[str, str], conn: Conn) -> None:
    endpoint_id, old_secret = add_endpoint(conn, "https://hooks.example.com/in", ["*"])

    def state() -> tuple[Any, ...] | None:
        query = "select enabled, secret from outbox.endpoints where id = %s"
        return conn.execute(query, [endpoint_id]).fetchone()

    disabled = outbox(cli_env, "endpoints", "disable", endpoint_id)
    assert disabled.code == 0, disabled.err
    assert state() == (False, old_secret)

    enabled = outbox(cli_env, "endpoints", "enable", endpoint_id)
    assert enabled.code == 0, enabled.err
    assert state() == (True, old_secret)

    rotated = outbox(cli_env, "endpoints", "rotate-secret", endpoint_id)
    assert rotated.code == 0, rotated.err
    new_secret = fields(rotated.out)["secret"]
    assert new_secret != old_secret
    assert state() == (True, new_secret)


def test_delete_refuses_while_deliveries_are_pending_unless_told_yes(
    cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint_id, _ = add_endpoint(conn, "https://hooks.example.com/in", ["contact.created"])
    add_contacts(conn, 2)

    refused = outbox(cli_env, "endpoints", "delete", endpoint_id)
    assert_one_line_error(refused, "2 pending deliveries", "--yes")
    assert endpoint_row(conn, endpoint_id) is not None

    deleted = outbox(cli_env, "endpoints", "delete", endpoint_id, "--yes")
    assert deleted.code == 0, deleted.err
    assert endpoint_row(conn, endpoint_id) is None
    assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (0,)


@pytest.mark.parametrize("verb", ["show", "delete"])
def test_unknown_endpoint_id_is_a_one_line_error(
    cli_env: dict[str, str], conn: Conn, verb: str
) -> None:
    run = outbox(cli_env, "endpoints", verb, "ep_doesnotexist")
    assert run.code == 1
    assert_one_line_error(run, "no endpoint with id 'ep_doesnotexist'")


def test_every_endpoints_verb_has_help(cli_env: dict[str, str]) -> None:
    run = outbox(cli_env, "endpoints", "create", "--help")
    assert run.code == 0
    assert "--events" in run.out
    assert "--disabled" in run.out


def test_tables_fit_the_line_and_escape_control_characters() -> None:
    columns = [Column("ID"), Column("URL", flex=True, weight=2), Column("EVENTS", flex=True)]
    rows = [("ep_" + "0" * 26, "https://" + "a" * 120 + ".example", "contact.*,\x1b[2Jdeal.*")]

    text = table(columns, rows, width=80)

    assert all(len(line) <= 80 for line in text.splitlines())
    assert "\x1b" not in text
    id_, url, events = text.splitlines()[1].split()
    assert id_ == "ep_" + "0" * 26  # never cut
    # The least useful flexible column gives up its width first: the events down to their
    # minimum, then the URL takes what is left.
    assert len(events) == 8
    assert url.startswith("https://aaa")
    assert len(url) == 80 - len(id_) - len(events) - 4
    assert table(columns, [("ep_1", "https://x", "*")], width=80).splitlines() == [
        "ID    URL        EVENTS",
        "ep_1  https://x  *",
    ]


def test_shortened_values_keep_both_ends_when_cut_in_the_middle() -> None:
    assert shorten("ep_0123456789abcdef", 9, "middle") == "ep_0…cdef"
    assert shorten("ep_0123456789abcdef", 9) == "ep_01234…"
    assert shorten("short", 9, "middle") == "short"


def test_list_and_show_tell_an_open_breaker_and_why_an_endpoint_was_disabled(
    cli_env: dict[str, str], conn: Conn
) -> None:
    tripped, _ = add_endpoint(conn, "https://hooks.example.com/tripped", ["*"])
    dead, _ = add_endpoint(conn, "https://hooks.example.com/dead", ["*"])
    conn.execute(
        "update outbox.endpoints set consecutive_failures = 12,"
        " failing_since = '2024-01-10 10:30:00Z', last_failure_at = '2024-01-10 11:00:00Z',"
        " breaker_opened_at = '2024-01-10 10:31:00Z', probe_at = '2024-01-10 11:05:00Z',"
        " probes = 4 where id = %s",
        [tripped],
    )
    conn.execute(
        "update outbox.endpoints set consecutive_failures = 300,"
        " failing_since = now() - interval '6 days', last_failure_at = now() where id = %s",
        [dead],
    )
    conn.execute("select outbox.disable_failing_endpoints('5 days')")

    listing = outbox(cli_env, "endpoints", "list")
    as_json = outbox(cli_env, "endpoints", "list", "--json")
    shown = outbox(cli_env, "endpoints", "show", tripped)
    shown_dead = outbox(cli_env, "endpoints", "show", dead, "--json")

    assert listing.code == as_json.code == shown.code == shown_dead.code == 0, listing.err
    rows = {line.split()[0]: line for line in listing.out.splitlines()[1:]}
    assert rows[tripped].split()[2:6] == ["yes", "0", "0", "open"]
    assert rows[tripped].split()[-1] == "-"
    assert rows[dead].split()[2:6] == ["no", "0", "0", "closed"]
    assert "every attempt failed for 5 days: 300 in a row since" in rows[dead]
    listed = {e["id"]: e for e in json.loads(as_json.out)}
    assert listed[tripped]["breaker_opened_at"] == "2024-01-10T10:31:00Z"
    assert listed[tripped]["probe_at"] == "2024-01-10T11:05:00Z"
    assert listed[tripped]["consecutive_failures"] == 12
    assert listed[dead]["disabled_reason"].startswith("every attempt failed for 5 days")
    assert listed[dead]["disabled_at"] is not None
    described = fields(shown.out)
    assert described["breaker"] == (
        "open since 2024-01-10 10:31:00Z, 4 failed probes, next probe at 2024-01-10 11:05:00Z"
    )
    assert described["failing"] == (
        "12 failed attempts in a row, from 2024-01-10 10:30:00Z to 2024-01-10 11:00:00Z"
    )
    assert described["disabled"] == "-"
    document = json.loads(shown_dead.out)
    assert document["enabled"] is False
    assert document["breaker"] == {
        "state": "closed",
        "opened_at": None,
        "next_probe_at": None,
        "failed_probes": 0,
    }
    assert document["disabled_reason"].startswith("every attempt failed for 5 days")

    # Enabled again: a fresh start, nothing left to show.
    enabled = outbox(cli_env, "endpoints", "enable", dead)
    assert enabled.code == 0, enabled.err
    again = json.loads(outbox(cli_env, "endpoints", "show", dead, "--json").out)
    assert (again["disabled_at"], again["disabled_reason"], again["consecutive_failures"]) == (
        None,
        None,
        0,
    )


def test_outbox_star_is_a_subscription_and_star_leaves_operational_events_out(
    cli_env: dict[str, str], conn: Conn
) -> None:
    run = outbox(
        cli_env, "endpoints", "create", "https://ops.example.com/in", "--events", "outbox.*"
    )
    assert run.code == 0, run.err
    endpoint_id = fields(run.out)["id"]
    assert endpoint_row(conn, endpoint_id) is not None
    known = admin.known_event_types(conn)
    assert {"outbox.endpoint.disabled", "outbox.endpoint.enabled"} <= set(known)
    assert not type_matches("*", "outbox.endpoint.disabled")
    assert type_matches("outbox.*", "outbox.endpoint.disabled")
    assert type_matches("outbox.endpoint.*", "outbox.endpoint.recovered")
    assert type_matches("*", "deal.created")
