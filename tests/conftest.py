"""Database fixtures: the server named by DATABASE_URL, else an embedded one; a fresh database per
test, cloned from a template that the real migrator built once per session."""

from __future__ import annotations

import itertools
import os
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


def create_database(server_url: str, template_url: str) -> tuple[str, str]:
    """A fresh migrated database: (name, url)."""
    template = psycopg.conninfo.conninfo_to_dict(template_url)["dbname"]
    name = f"outbox_test_{os.getpid()}_{next(_counter)}"
    with _admin(server_url) as admin:
        admin.execute(f'create database "{name}" template "{template}"')
    return name, _db_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """Connection string of a fresh, migrated database for this test alone."""
    name, url = create_database(server_url, template_url)
    yield url
    drop_database(server_url, name)


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
