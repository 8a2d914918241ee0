"""Which database a command uses (DATABASE_URL or the embedded server) and how to reach it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from outbox import logs
from outbox.config import Settings
from outbox.errors import OutboxError, first_line

CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class Database:
    """A resolved database: its connection string and a description safe to print."""

    url: str
    description: str
    embedded: bool = False


def redact(url: str) -> str:
    """The connection string without its password, for notices and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    params.pop("password", None)
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    user = params.get("user", "")
    dbname = params.get("dbname", "")
    where = host if str(host).startswith("/") else f"{host}:{port}"
    return f"postgresql://{user}@{where}/{dbname}"


def start_embedded(pgdata: Path, *, keep_running: bool = False) -> str:
    """Start (or join) the embedded PostgreSQL whose data lives in `pgdata`; return its URI."""
    pgdata = pgdata.resolve()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back
            # to /tmp, which is what pgserver needs anyway.
            warnings.simplefilter("ignore")
            import pgserver  # noqa: PLC0415 - only commands without DATABASE_URL pay for it

            server = pgserver.get_server(  # type: ignore[attr-defined]
                pgdata, cleanup_mode=None if keep_running else "stop"
            )
    except Exception as exc:  # pgserver raises bare subprocess and assertion errors
        raise OutboxError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    return str(server.get_uri())


def resolve(settings: Settings, *, keep_running: bool = False, announce: bool = True) -> Database:
    """The database this command uses; says which on stderr, in one line."""
    if settings.database_url:
        db = Database(settings.database_url, f"DATABASE_URL ({redact(settings.database_url)})")
    else:
        url = start_embedded(settings.embedded_pgdata, keep_running=keep_running)
        db = Database(url, f"embedded PostgreSQL in ./{settings.embedded_pgdata}", embedded=True)
    if announce:
        logs.notice(f"database: {db.description}")
    return db


def with_timeout(url: str) -> str:
    """The connection string with a connect timeout, so an unreachable server fails fast."""
    params: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    if "connect_timeout" in conninfo_to_dict(url):
        params = {}
    return make_conninfo(url, **params)


def friendly(exc: psycopg.Error, url: str) -> OutboxError:
    """One readable line for a connection failure."""
    return OutboxError(f"cannot reach the database at {redact(url)}: {first_line(exc)}")


@contextlib.contextmanager
def connect(url: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A short-lived connection for CLI commands, with unreachable servers reported in one line."""
    try:
        conn = psycopg.connect(with_timeout(url), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise friendly(exc, url) from None
    with conn:
        yield conn
