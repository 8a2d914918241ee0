"""Connections for the capture tests: a writer in a non-UTC session and a UTC reader."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

WRITER_TIMEZONE = "America/New_York"


@pytest.fixture
def writer(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The test's autocommit connection, in a session whose TimeZone is not UTC: event data must
    still carry UTC timestamps."""
    conn.execute("select set_config('timezone', %s, false)", [WRITER_TIMEZONE])
    return conn


@pytest.fixture
def reader(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A second autocommit connection whose TimeZone is UTC, to render rows as events carry them."""
    with psycopg.connect(db_url, autocommit=True, options="-c timezone=UTC") as connection:
        yield connection


_names = itertools.count()


@pytest.fixture
def login(conn: psycopg.Connection[Any]) -> Iterator[Any]:
    """Makes LOGIN roles holding the given role; drops them after the test."""
    made: list[str] = []

    def make(*granted: str) -> str:
        name = f"outbox_test_login_{os.getpid()}_{next(_names)}"
        conn.execute(f"create role {name} login")
        for role in granted:
            conn.execute(f"grant {role} to {name}")
        made.append(name)
        return name

    yield make
    for name in made:
        conn.execute(f"drop owned by {name}")
        conn.execute(f"drop role {name}")


def connect_as(db_url: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(make_conninfo(db_url, user=role), autocommit=True)
