"""The dashboard as users get it: `outbox dashboard` as a real process, connected as a login that
holds only outbox_dashboard, driven by the system's Chromium through Playwright."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg.conninfo import make_conninfo
from support import outbox_cmd, stop

from outbox import config
from outbox.dashboard.app import make_app

CHROMIUM = Path("/usr/bin/chromium")
# CI sets this: there a missing browser is a failure, not a skip.
REQUIRE = os.environ.get("OUTBOX_REQUIRE_BROWSER") == "1"
# Set to a folder (docs/) to have the tests save the README's screenshots there.
SCREENSHOTS = os.environ.get("OUTBOX_SCREENSHOTS")
_names = itertools.count()
_URL_LINE = re.compile(r"dashboard: (http://\S+/)")


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401, PLC0415
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a module's tests. Not for the session: Playwright's synchronous
    API keeps an event loop running in the main thread while it is open, and later tests that
    call asyncio.run() there would find it."""
    missing = _browser_missing()
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"browser tests cannot run: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own cookies) and page for one test."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"dashboard-{name}.png"), full_page=True)


@pytest.fixture
def dashboard_login(conn: psycopg.Connection[Any], db_url: str) -> Iterator[str]:
    """The connection string of a LOGIN role holding outbox_dashboard and nothing else."""
    name = f"outbox_test_dash_{os.getpid()}_{next(_names)}"
    conn.execute(f"create role {name} login")
    conn.execute(f"grant outbox_dashboard to {name}")
    yield make_conninfo(db_url, user=name)
    conn.execute(f"drop owned by {name}")
    conn.execute(f"drop role {name}")


@dataclass
class Dashboard:
    """A running dashboard and its address."""

    url: str

    def at(self, path: str) -> str:
        return self.url.rstrip("/") + path


def start_dashboard(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`outbox dashboard --port 0` as a real process; returns once it says where it listens."""
    with log.open("ab") as stderr:
        proc = subprocess.Popen(
            outbox_cmd("dashboard", "--port", "0", *args),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _URL_LINE.search(log.read_text()):
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"outbox dashboard exited: {log.read_text()}")
        time.sleep(0.05)
    stop(proc)
    raise AssertionError(f"outbox dashboard did not start: {log.read_text()}")


def address(log: Path) -> Dashboard:
    found = _URL_LINE.search(log.read_text())
    assert found is not None
    return Dashboard(found.group(1))


@contextmanager
def serving(env: dict[str, str]) -> Iterator[Dashboard]:
    """The dashboard's application, as `outbox dashboard` builds it from this environment, served
    on loopback from a thread of this process (a process start per test costs seconds here)."""
    settings = config.load(env)
    assert settings.database_url is not None
    app = make_app(settings, settings.database_url)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> int:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return int(runner.addresses[0][1])

    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        yield Dashboard(f"http://127.0.0.1:{port}/")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def dashboard_env(cli_env: dict[str, str], dashboard_login: str) -> dict[str, str]:
    return {**cli_env, "DATABASE_URL": dashboard_login, "OUTBOX_LOG_FORMAT": "console"}


@pytest.fixture
def dashboard(dashboard_env: dict[str, str]) -> Iterator[Dashboard]:
    with serving(dashboard_env) as running:
        yield running
