"""Connections for the capture tests: a writer in a non-UTC session and a UTC reader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

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
