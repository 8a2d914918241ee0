"""The fault tests' own fixture: a dedicated PostgreSQL, migrated by the real migrator, that a test
may stop and restart without touching the server the rest of the suite shares."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.db import connect, migrate

from . import Server


@pytest.fixture
def dedicated_server(tmp_path: Path) -> Iterator[Server]:
    # Its data lives outside pytest's temporary folders. Under root, pgserver runs the server as
    # its own user and opens up the parent folders for it, and every pytest session that starts
    # meanwhile closes pytest's root folder again (mode 0700): pg_ctl, run as that user, could
    # then no longer reach the data directory to restart or stop the server.
    home = Path(tempfile.mkdtemp(prefix="outbox-dedicated-"))
    pgdata = home / "pgdata"
    server = Server(connect.start_embedded(pgdata), pgdata.resolve())
    try:
        migrate.migrate(server.url)
        yield server
    finally:
        try:
            if server.running:  # a test that failed mid-restart may have left it stopped
                server.stop()
        finally:
            if (pgdata / "log").exists():
                shutil.copyfile(pgdata / "log", tmp_path / "postgres.log")
            shutil.rmtree(home, ignore_errors=True)
