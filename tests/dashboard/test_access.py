"""Who may use the dashboard: loopback unless a token is set, a login with it, a CSRF token on
every form post."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from support import outbox_cmd, stop

from .conftest import Dashboard, address, start_dashboard

TOKEN = "correct-horse-battery-staple-42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The refusal is the point: nothing is ever bound to these.
@pytest.mark.parametrize("host", ["0.0.0.0", "example.com"])  # noqa: S104
def test_a_bind_beyond_loopback_without_a_token_is_refused_before_anything_starts(
    host: str, tmp_path: Path
) -> None:
    # No database named and none reachable: the refusal comes first, and binds nothing.
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    port = free_port()
    done = subprocess.run(
        outbox_cmd("dashboard", "--host", host, "--port", str(port)),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "is not a loopback address: set OUTBOX_DASHBOARD_TOKEN" in lines[0]
    assert "database" not in done.stderr


def test_a_short_token_is_refused(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "OUTBOX_DASHBOARD_TOKEN": "short"}
    done = subprocess.run(
        outbox_cmd("dashboard", "--port", "0"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "OUTBOX_DASHBOARD_TOKEN must be at least 16" in done.stderr


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_a_form_post_without_its_csrf_token_changes_nothing(
    dashboard: Dashboard, conn: psycopg.Connection[Any]
) -> None:
    form = {"url": "http://127.0.0.1:9/x", "events": "*"}
    with httpx.Client(base_url=dashboard.url) as client:
        page = client.get("/endpoints/new")
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        token = _csrf(page.text)
        for sent in (form, {**form, "csrf": "forged"}):
            refused = client.post("/endpoints", data=sent)
            assert refused.status_code == 403
            assert "CSRF" in refused.text
        assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (0,)
        # Another visitor's token does not carry over either.
        with httpx.Client(base_url=dashboard.url) as other:
            other.get("/")
            assert other.post("/endpoints", data={**form, "csrf": token}).status_code == 403
        made = client.post("/endpoints", data={**form, "csrf": token})
        assert made.status_code == 200, made.text
        assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (1,)


def test_with_a_token_the_process_serves_a_login_first(
    page: Any, dashboard_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "dashboard.log"
    # A loopback alias: any 127/8 address is this machine.
    proc = start_dashboard(
        {**dashboard_env, "OUTBOX_DASHBOARD_TOKEN": TOKEN}, log, "--host", "127.0.0.2"
    )
    try:
        running = address(log)
        assert running.url.startswith("http://127.0.0.2:")
        with httpx.Client(base_url=running.url) as client:
            assert client.get("/").status_code == 303
            assert client.get("/endpoints/new").headers["location"] == "/login"
        page.goto(running.url)
        assert page.url.endswith("/login")
        page.fill("input[name=token]", "not-the-token-at-all")
        with page.expect_navigation():
            page.click("button:has-text('Log in')")
        assert "not the dashboard's token" in page.inner_text("#error")
        page.fill("input[name=token]", TOKEN)
        with page.expect_navigation():
            page.click("button:has-text('Log in')")
        assert page.inner_text("h1") == "Outgoing webhooks"
        assert TOKEN not in page.content()
    finally:
        stop(proc)
    assert TOKEN not in log.read_text()
