"""Portal links: one account's webhooks page by a signed, expiring link, confined to that account
by PostgreSQL (the pages run as outbox_account), refused when expired, changed or revoked."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support import outbox_cmd

from outbox.dashboard import links

from .conftest import Dashboard, serving

TOKEN = "portal-test-token-0123456789"
Conn = psycopg.Connection[Any]


@pytest.fixture
def portal_login(conn: Conn, db_url: str) -> Iterator[str]:
    """A LOGIN role holding outbox_account alone: what the portal's pages connect as."""
    name = f"outbox_test_portal_{os.getpid()}_{time.monotonic_ns()}"
    conn.execute(f"create role {name} login")
    conn.execute(f"grant outbox_account to {name}")
    yield make_conninfo(db_url, user=name)
    conn.execute(f"drop owned by {name}")
    conn.execute(f"drop role {name}")


@pytest.fixture
def portal(dashboard_env: dict[str, str], portal_login: str, tmp_path: Path) -> Iterator[Dashboard]:
    env = {
        **dashboard_env,
        "OUTBOX_DASHBOARD_TOKEN": TOKEN,
        "OUTBOX_PORTAL_DATABASE_URL": portal_login,
        "OUTBOX_PORTAL_FRAME_ANCESTORS": "https://crm.example.com",
    }
    with serving(env) as running:
        yield running


def endpoint(conn: Conn, account: str) -> str:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types, account_id) "
        "values (%s, '{*}', %s) returning id",
        [f"http://127.0.0.1:9/{account}", account],
    ).fetchone()
    assert row is not None
    return str(row[0])


def link(portal: Dashboard, account: str, **kwargs: Any) -> str:
    made = links.make(account, kwargs.pop("seconds", 3600), **kwargs)
    return portal.at(f"/portal/{made.token(links.link_key(TOKEN))}")


def test_a_link_shows_its_own_account_and_nothing_of_another(
    page: Any, portal: Dashboard, conn: Conn
) -> None:
    mine, theirs = endpoint(conn, "acct-a"), endpoint(conn, "acct-b")
    opened = page.goto(link(portal, "acct-a", read_only=False))
    assert opened.status == 200, page.content()
    assert page.inner_text("#account") == "account acct-a"
    assert page.locator(f"tr[data-endpoint='{mine}']").count() == 1
    assert theirs not in page.content()
    assert page.goto(portal.at(f"/endpoints/{theirs}")).status == 404
    assert page.goto(portal.at(f"/endpoints/{mine}")).status == 200
    # Its pages may be framed by the CRM's own settings page, and by nothing else.
    csp = page.goto(portal.at("/")).headers["content-security-policy"]
    assert "frame-ancestors https://crm.example.com" in csp

    page.click("#create")
    assert page.locator("input[name=account]").count() == 0
    page.fill("input[name=url]", "http://127.0.0.1:9/new")
    page.check("input[name=events][value='*']")
    with page.expect_navigation():
        page.click("#submit")
    assert page.inner_text("#secret").startswith("whsec_")
    made = conn.execute(
        "select account_id, all_accounts from outbox.endpoints where url like '%/new'"
    ).fetchone()
    assert made == ("acct-a", False)


def test_expired_changed_and_revoked_links_are_refused(
    page: Any, portal: Dashboard, conn: Conn, cli_env: dict[str, str]
) -> None:
    endpoint(conn, "acct-a")
    expired = links.make("acct-a", 60, read_only=False, now=time.time() - 120)
    response = page.goto(portal.at(f"/portal/{expired.token(links.link_key(TOKEN))}"))
    assert response.status == 403
    assert "expired" in page.inner_text("#error")

    good = link(portal, "acct-a", read_only=False)
    _, rest = good.rsplit("/", 1)[1].split(".", 1)
    other = links.make("acct-b", 3600, read_only=False).token(links.link_key(TOKEN))
    changed = f"{other.split('.', 1)[0]}.{rest}"  # another account's name on this signature
    assert page.goto(portal.at(f"/portal/{changed}")).status == 403
    assert "not valid" in page.inner_text("#error")

    assert page.goto(good).status == 200
    time.sleep(1.1)  # the revocation must come after the link's second
    revoked = subprocess.run(
        outbox_cmd("portal-link", "acct-a", "--revoke"),
        env=cli_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert revoked.stdout.startswith("revoked every link of account acct-a")
    # The session it opened ends too, and the link opens nothing any more.
    assert page.goto(portal.at("/")).status == 403
    assert "revoked" in page.inner_text("#error")
    assert page.goto(good).status == 403
    # A link made after the revocation works.
    time.sleep(1.1)
    assert page.goto(link(portal, "acct-a", read_only=False)).status == 200


def test_a_read_only_link_cannot_post(page: Any, portal: Dashboard, conn: Conn) -> None:
    mine = endpoint(conn, "acct-a")
    page.goto(link(portal, "acct-a", read_only=True))
    assert "read-only" in page.inner_text("#account")
    assert page.locator("#create").count() == 0
    page.goto(portal.at(f"/endpoints/{mine}"))
    assert page.locator("#switch").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    for path, form in (
        ("/endpoints", {"url": "http://127.0.0.1:9/x", "events": "*"}),
        (f"/endpoints/{mine}/disable", {}),
        (f"/endpoints/{mine}/delete", {"yes": "on"}),
    ):
        refused = page.request.post(portal.at(path), form={**form, "csrf": csrf})
        assert refused.status == 403
        assert "read-only" in refused.text()
    assert conn.execute("select count(*), bool_and(enabled) from outbox.endpoints").fetchone() == (
        1,
        True,
    )


def test_portal_link_prints_a_link_the_dashboard_opens(
    portal: Dashboard, cli_env: dict[str, str], conn: Conn
) -> None:
    endpoint(conn, "42")
    made = subprocess.run(
        outbox_cmd("portal-link", "42", "--expires", "10m", "--base-url", portal.url),
        env={**cli_env, "OUTBOX_DASHBOARD_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        check=True,
    )
    url = made.stdout.strip()
    assert url.startswith(portal.at("/portal/"))
    with httpx.Client() as client:
        opened = client.get(url)
        assert opened.status_code == 303
        # The client keeps the session cookie the link set.
        listing = client.get(portal.url)
        assert listing.status_code == 200
        assert "account 42" in listing.text


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        (["portal-link", ""], TOKEN, "ACCOUNT is empty"),
        (["portal-link", "42", "--expires", "90d"], TOKEN, "longer than 30 days"),
        (["portal-link", "42"], None, "signed with OUTBOX_DASHBOARD_TOKEN"),
    ],
)
def test_portal_link_refuses_bad_input_in_one_line(
    args: list[str], token: str | None, message: str, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    if token:
        env["OUTBOX_DASHBOARD_TOKEN"] = token
    done = subprocess.run(
        outbox_cmd(*args), env=env, capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
