"""`outbox endpoints test` sends one signed sample event with httpx and reports the answer."""

from __future__ import annotations

import subprocess
from typing import Any

import psycopg
from standardwebhooks import Webhook
from support import outbox_cmd, running_receiver

from outbox import signing


def _endpoint(conn: psycopg.Connection[Any], url: str, types: str = "{deal.*}") -> tuple[str, str]:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types) values (%s, %s) returning id, secret",
        [url, types],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_sends_a_sample_both_signatures_verify(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    with running_receiver() as receiver:
        endpoint_id, secret = _endpoint(conn, receiver.url())
        done = subprocess.run(
            outbox_cmd("endpoints", "test", endpoint_id),
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "HTTP 200" in done.stdout
        (got,) = receiver.requests
    assert got.headers["X-Stover-Event-Type"] == "deal.closed_lost"  # first subscribed type
    assert signing.verify_stover(secret, got.body, got.headers["X-Stover-Signature"])
    Webhook(secret).verify(got.body, got.headers)
    assert b'"data":{"test":true}' in got.body
    # Nothing is recorded for a test send.
    assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (0,)


def test_a_failing_answer_exits_non_zero(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    with running_receiver(default=lambda _: (503, b"down", 0.0)) as receiver:
        endpoint_id, _ = _endpoint(conn, receiver.url(), "{*}")
        done = subprocess.run(
            outbox_cmd("endpoints", "test", endpoint_id, "--type", "contact.created"),
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert "HTTP 503" in done.stdout
    assert "down" in done.stdout


def test_private_addresses_are_refused_without_the_opt_in(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    with running_receiver() as receiver:
        endpoint_id, _ = _endpoint(conn, receiver.url().replace("127.0.0.1", "localhost"))
        env = dict(cli_env, OUTBOX_ALLOW_PRIVATE_NETWORKS="0")
        done = subprocess.run(
            outbox_cmd("endpoints", "test", endpoint_id),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert "private address" in done.stdout
        assert receiver.requests == []
