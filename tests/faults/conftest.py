"""The fault tests' own fixture: a dedicated PostgreSQL, migrated by the real migrator, that a test
may stop and restart without touching the server the rest of the suite shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.db import connect, migrate

from . import Server


@pytest.fixture
def dedicated_server(tmp_path: Path) -> Iterator[Server]:
    pgdata = tmp_path / "pgdata"
    server = Server(connect.start_embedded(pgdata), pgdata.resolve())
    try:
        migrate.migrate(server.url)
        yield server
    finally:
        if server.running:  # a test that failed mid-restart may have left it stopped
            server.stop()
