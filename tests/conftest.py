"""Database fixtures: the server named by DATABASE_URL, else an embedded one; a fresh database per
test, cloned from a template that the real migrator built once per session."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from outbox.db import connect, migrate

TEMPLATE = "outbox_test_template"
_counter = itertools.count()


# The embedded server's data lives in the checkout, not under pytest's temporary folders: pytest
# prunes old basetemp folders at the start of every session, which would pull the data directory
# from under a server that another session is still using.
EMBEDDED_PGDATA = Path(__file__).resolve().parent.parent / ".outbox" / "test-pgdata"


@pytest.fixture(scope="session")
def server_url() -> str:
    """Admin connection string of the PostgreSQL server the suite runs against."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return connect.start_embedded(EMBEDDED_PGDATA)


def _db_url(server_url: str, name: str) -> str:
    return make_conninfo(server_url, dbname=name)


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(_db_url(server_url, "postgres"), autocommit=True)


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    """A database migrated once per session by the real migrator, used as a CREATE DATABASE
    template."""
    name = f"{TEMPLATE}_{os.getpid()}"
    with _admin(server_url) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
    url = _db_url(server_url, name)
    migrate.migrate(url)
    yield url
    with _admin(server_url) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


class Databases:
    """Fresh databases cloned from the template, made one ahead and dropped after their test by
    a thread of their own, so a test waits for neither (each costs ~50 ms to make and ~130 ms to
    drop, over a thousand tests)."""

    def __init__(self, server_url: str, template_url: str) -> None:
        self.server_url = server_url
        self.template = psycopg.conninfo.conninfo_to_dict(template_url)["dbname"]
        self.ready: queue.Queue[tuple[str, str] | BaseException] = queue.Queue(maxsize=1)
        self.spent: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="test-databases", daemon=True)
        self.thread.start()

    def take(self) -> tuple[str, str]:
        """A fresh migrated database: (name, url)."""
        got = self.ready.get(timeout=120)
        if isinstance(got, BaseException):
            raise got
        return got

    def give_back(self, name: str) -> None:
        self.spent.put(name)

    def close(self) -> None:
        self.spent.put(None)
        self.thread.join(timeout=120)

    def _work(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # told to the next take(), not lost in this thread
            with contextlib.suppress(queue.Full):
                self.ready.put_nowait(exc)

    def _serve(self) -> None:
        with _admin(self.server_url) as admin:
            while True:
                # Drop what tests have finished with first, then make the next one ahead.
                while True:
                    try:
                        name = self.spent.get(timeout=0.01 if self.ready.full() else 0)
                    except queue.Empty:
                        break
                    if name is None:
                        self._drop_ready(admin)
                        return
                    admin.execute(f'drop database if exists "{name}" with (force)')
                if not self.ready.full():
                    name = f"outbox_test_{os.getpid()}_{next(_counter)}"
                    admin.execute(f'create database "{name}" template "{self.template}"')
                    self.ready.put((name, _db_url(self.server_url, name)))

    def _drop_ready(self, admin: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(queue.Empty):
            got = self.ready.get_nowait()
            if not isinstance(got, BaseException):
                admin.execute(f'drop database if exists "{got[0]}" with (force)')


@pytest.fixture(scope="session")
def databases(server_url: str, template_url: str) -> Iterator[Databases]:
    pool = Databases(server_url, template_url)
    yield pool
    pool.close()


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def db_url(databases: Databases) -> Iterator[str]:
    """Connection string of a fresh, migrated database for this test alone."""
    name, url = databases.take()
    yield url
    databases.give_back(name)


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """Connection string of a fresh database with no schema at all."""
    name = f"outbox_empty_{os.getpid()}_{next(_counter)}"
    with _admin(server_url) as admin:
        admin.execute(f'create database "{name}"')
    yield _db_url(server_url, name)
    drop_database(server_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running `outbox` subprocesses against this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(
        DATABASE_URL=db_url,
        OUTBOX_ALLOW_PRIVATE_NETWORKS="1",
        OUTBOX_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env
