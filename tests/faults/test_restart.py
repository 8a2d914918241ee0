"""A relay outlives a PostgreSQL restart in the middle of delivering: it logs a warning, reconnects
and finishes, with every delivery delivered. The restarted server is a dedicated embedded one,
never the machine's shared server."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pgserver._commands import POSTGRES_BIN_PATH
from support import Received, env_without_outbox, running_receiver, stop, wait_until

from outbox.db import connect, migrate

from . import (
    add_contacts,
    add_endpoint,
    delivery_counts,
    duplicates,
    log_lines,
    relay_process,
)

pytestmark = pytest.mark.slow

BACKLOG = 1000


@dataclass(frozen=True)
class Server:
    """A dedicated embedded PostgreSQL that this test may restart."""

    url: str
    pgdata: Path

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this server as the user it runs as (pgserver's `pgserver` under root)."""
        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args]
        user = "pgserver" if os.geteuid() == 0 else None
        # pg_ctl's server inherits its output handles, so they are files, not pipes a
        # subprocess.run could wait on for ever.
        with tempfile.TemporaryFile() as out:
            done = subprocess.run(
                command, stdout=out, stderr=out, user=user, timeout=60, check=False
            )
            out.seek(0)
            output = out.read().decode(errors="replace")
        assert done.returncode == 0, f"pg_ctl {' '.join(args)} failed: {output}"

    def restart(self) -> None:
        # `restart` starts the server again with the options it last ran with (postmaster.opts:
        # no TCP listener, the same socket directory), so its URI stays valid.
        self.pg_ctl("-w", "-m", "fast", "-l", str(self.pgdata / "log"), "restart")

    def stop(self) -> None:
        self.pg_ctl("-w", "-m", "fast", "stop")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    pgdata = tmp_path / "pgdata"
    dedicated = Server(connect.start_embedded(pgdata), pgdata.resolve())
    try:
        migrate.migrate(dedicated.url)
        yield dedicated
    finally:
        dedicated.stop()


def count(url: str, query: str) -> int | None:
    """One number from a fresh connection; None while the server is away."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(query).fetchone()
    except psycopg.OperationalError:
        return None
    assert row is not None
    return int(row[0])


def delivered(url: str) -> int | None:
    return count(url, "select count(*) from outbox.deliveries where status = 'delivered'")


def slow_ok(_: Received) -> tuple[int, bytes, float]:
    return 200, b"ok", 0.02


def test_relay_survives_a_database_restart_mid_stream(
    server: Server, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    env = {
        **env_without_outbox(),
        "DATABASE_URL": server.url,
        "OUTBOX_ALLOW_PRIVATE_NETWORKS": "1",
        "OUTBOX_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "relay.log"
    with running_receiver(default=slow_ok) as receiver:
        with psycopg.connect(server.url, autocommit=True) as conn:
            add_endpoint(conn, receiver.url())
            add_contacts(conn, BACKLOG)
        with relay_process(env, "--concurrency", "10", log=log) as relay:
            receiver.wait_count(BACKLOG // 5)
            before = delivered(server.url)
            assert before is not None
            assert before < BACKLOG, "the relay finished before the restart"
            server.restart()
            restarted = time.monotonic()
            # Leases last 30 + 15 s: finishing sooner means nothing the relay held was dropped.
            wait_until(lambda: delivered(server.url) == BACKLOG, timeout=40, what="all delivered")
            finished = time.monotonic() - restarted
            assert relay.poll() is None, "the relay died with the database"
            assert stop(relay) == 0
        requests = list(receiver.requests)

    assert count(server.url, "select count(*) from outbox.deliveries") == BACKLOG
    assert len(delivery_counts(requests)) == BACKLOG
    lines = log_lines(log)
    assert any(line["level"] == "warning" for line in lines)
    assert not any(line["level"] == "error" for line in lines)
    record_property("duplicates", duplicates(requests))
    record_property("delivered_before_restart", before)
    record_property("seconds_to_finish_after_restart", round(finished, 1))
