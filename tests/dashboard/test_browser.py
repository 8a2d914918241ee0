"""Settings > Webhooks > Outgoing in a real browser: create and copy the secret, watch a delivery
arrive, redeliver a failed one, filter, rotate; no page shows a secret after it was given once."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
from support import Received, stop, wait_until

from tests.relay import add_endpoint, receiving, relay_env, start_logged_relay

from .conftest import Dashboard, screenshot

Conn = psycopg.Connection[Any]


def delivery_status(conn: Conn, endpoint_id: str) -> list[str]:
    rows = conn.execute(
        "select status from outbox.deliveries where endpoint_id = %s order by id", [endpoint_id]
    ).fetchall()
    return [r[0] for r in rows]


def go(page: Any, selector: str) -> None:
    """Click what leads to another page, and wait for that page."""
    with page.expect_navigation():
        page.click(selector)


def no_secret_in(page: Any, secrets: list[str]) -> None:
    html = page.content()
    for secret in secrets:
        assert secret not in html, page.url


def test_create_a_webhook_copy_its_secret_and_see_its_delivery_as_sent(
    page: Any, dashboard: Dashboard, conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    with receiving() as receiver:
        page.goto(dashboard.url)
        go(page, "#create")
        page.fill("input[name=url]", receiver.url("/hooks"))
        page.fill("input[name=description]", "CRM sync")
        # The seed's groups, each family offered whole.
        assert page.locator("h2", has_text="Social Media Events").count() == 1
        page.check("input[name=events][value='contact.*']")
        page.check("input[name=events][value='deal.closed_won']")
        screenshot(page, "create")
        go(page, "#submit")
        secret = page.inner_text("#secret").strip()
        page.click("#copy")
        page.wait_for_function("document.getElementById('copy').textContent === 'Copied'")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        row = conn.execute("select id, secret, event_types from outbox.endpoints").fetchone()
        assert row is not None
        endpoint_id, stored, types = row
        assert (stored, types) == (secret, ["contact.*", "deal.closed_won"])

        relay = start_logged_relay(relay_env(cli_env, ladder="0"), tmp_path / "relay.log")
        try:
            conn.execute("insert into stover.contacts (first_name) values ('Ada')")
            receiver.wait_count(1)
            wait_until(lambda: delivery_status(conn, endpoint_id) == ["delivered"], 30)
        finally:
            stop(relay)
        got: Received = receiver.requests[0]

        page.goto(dashboard.at(f"/endpoints/{endpoint_id}"))
        row_link = page.locator("#deliveries tr[data-status=delivered] a")
        assert row_link.count() == 1
        screenshot(page, "endpoint")
        with page.expect_navigation():
            row_link.click()
        assert page.inner_text("#status") == "delivered"
        # The body byte for byte, and the headers the receiver got, signatures included.
        assert page.inner_text("#body") == got.body.decode()
        page.click("#attempt-1 summary")
        shown = page.inner_text("#attempt-1 details pre")
        received = {name.lower(): value for name, value in got.headers.items()}
        for name in ("X-Stover-Signature", "webhook-signature", "webhook-timestamp"):
            assert f"{name}: {received[name.lower()]}" in shown
        screenshot(page, "delivery")
        no_secret_in(page, [secret])
        page.goto(dashboard.url)
        assert page.locator(f"tr[data-endpoint='{endpoint_id}']").count() == 1
        screenshot(page, "endpoints")
        no_secret_in(page, [secret])


def test_filter_deliveries_and_redeliver_a_failed_one(
    page: Any, dashboard: Dashboard, conn: Conn, cli_env: dict[str, str], tmp_path: Path
) -> None:
    answers = iter([500, 500])

    def failing_twice(_: Received) -> tuple[int, bytes, float]:
        return next(answers, 200), b"nope", 0.0

    with receiving(default=failing_twice) as receiver:
        endpoint = add_endpoint(conn, receiver.url(), event_types=("*",))
        relay = start_logged_relay(relay_env(cli_env, ladder="0"), tmp_path / "relay.log")
        try:
            conn.execute("insert into stover.contacts (first_name) values ('Ada')")
            conn.execute("insert into stover.companies (name) values ('Acme')")
            wait_until(lambda: delivery_status(conn, endpoint.id) == ["failed", "failed"], 30)
            conn.execute("insert into stover.contacts (first_name) values ('Grace')")
            wait_until(
                lambda: delivery_status(conn, endpoint.id) == ["failed", "failed", "delivered"],
                30,
            )

            page.goto(dashboard.at(f"/endpoints/{endpoint.id}"))
            assert page.locator("#deliveries tbody tr").count() == 3
            page.select_option("select[name=status]", "failed")
            page.fill("input[name=type]", "contact.*")
            go(page, "#filter")
            failed = page.locator("#deliveries tbody tr")
            assert failed.count() == 1
            assert failed.get_attribute("data-type") == "contact.created"
            page.fill("input[name=type]", "deal.")
            go(page, "#filter")
            assert "is not an event type" in page.inner_text("#error")

            failed_id = int(
                conn.execute(
                    "select d.id from outbox.deliveries d join outbox.events e "
                    "on e.id = d.event_id where e.type = 'contact.created' and d.status = 'failed'"
                ).fetchone()[0]  # type: ignore[index]
            )
            page.goto(dashboard.at(f"/deliveries/{failed_id}"))
            assert "nope" in page.inner_text("#attempt-1")
            go(page, "#redeliver")
            assert "requeued delivery" in page.inner_text("#note")
            wait_until(
                lambda: (
                    conn.execute(
                        "select status from outbox.deliveries where id = %s", [failed_id]
                    ).fetchone()
                    == ("delivered",)
                ),
                30,
            )
        finally:
            stop(relay)
        page.reload()
        assert page.inner_text("#status") == "delivered"
        assert page.locator("section.attempt").count() == 2

        # Replay the window: the two delivered ones are requeued, as `outbox replay` would.
        page.goto(dashboard.at(f"/endpoints/{endpoint.id}"))
        page.fill("input[name=since]", "2000-01-01T00:00Z")
        go(page, "#replay")
        assert page.inner_text("#note").startswith("requeued 3, created 0")
        assert delivery_status(conn, endpoint.id).count("pending") == 3


def test_rotate_a_secret_and_refuse_bad_input_with_the_cli_message(
    page: Any, dashboard: Dashboard, conn: Conn, cli_env: dict[str, str]
) -> None:
    endpoint = add_endpoint(conn, "http://127.0.0.1:9/x", event_types=("*",))
    page.goto(dashboard.at(f"/endpoints/{endpoint.id}"))
    no_secret_in(page, [endpoint.secret])
    page.fill("input[name=overlap]", "1h")
    go(page, "#rotate")
    rotated = page.inner_text("#secret").strip()
    stored = conn.execute(
        "select secret, previous_secret from outbox.endpoints where id = %s", [endpoint.id]
    ).fetchone()
    assert stored == (rotated, endpoint.secret)
    go(page, "#endpoint-link")
    no_secret_in(page, [endpoint.secret, rotated])

    # A malformed overlap: the CLI's line, nothing changed.
    page.fill("input[name=overlap]", "soon")
    go(page, "#rotate")
    cli = subprocess.run(
        [*_outbox("endpoints", "rotate-secret", endpoint.id, "--overlap", "soon")],
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 2
    assert page.inner_text("#error") in cli.stderr
    assert conn.execute(
        "select secret from outbox.endpoints where id = %s", [endpoint.id]
    ).fetchone() == (rotated,)

    # A refused URL on the create form: the same line as `endpoints create`, no endpoint made.
    page.goto(page.url.split("/endpoints/")[0] + "/endpoints/new")
    page.fill("input[name=url]", "ftp://example.com/hook")
    page.check("input[name=events][value='*']")
    go(page, "#submit")
    cli = subprocess.run(
        [*_outbox("endpoints", "create", "ftp://example.com/hook", "--events", "*")],
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 2
    assert page.inner_text("#error") in cli.stderr
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (1,)


def _outbox(*args: str) -> list[str]:
    from support import outbox_cmd  # noqa: PLC0415

    return outbox_cmd(*args)
