"""The benchmark's database side: scratch databases, bulk workloads, counters and paced writes."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from outbox.db.connect import friendly, with_timeout
from outbox.errors import OutboxError
from outbox.sqlfiles import queries

Q = queries("bench")
EventRow = tuple[str, str, datetime, str, str | None]
Capture = Literal["outbox", "no_account", "reference", "floor", "pgq", "off"]


def _open(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(with_timeout(url), autocommit=True)
    except psycopg.OperationalError as exc:
        raise friendly(exc, url) from None


def database_url(server_url: str, name: str) -> str:
    """The connection string of database `name` on the server `server_url` points at."""
    return make_conninfo(server_url, dbname=name)


def create_database(server_url: str, name: str) -> str:
    """Create an empty database on the server of `server_url`; returns its connection string."""
    with _open(server_url) as conn:
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise OutboxError(f"cannot create the benchmark database {name}: {first}") from None
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _open(server_url) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def as_uri(url: str) -> str:
    """The same connection as a postgresql:// URI (asyncpg does not read key=value strings)."""
    if url.startswith(("postgresql://", "postgres://")):
        return url
    params = conninfo_to_dict(url)
    user = quote(str(params.pop("user", "")), safe="")
    password = params.pop("password", None)
    dbname = quote(str(params.pop("dbname", "")), safe="")
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    query = {k: str(v) for k, v in params.items() if k != "connect_timeout"}
    if host.startswith("/"):
        query["host"] = host
        host = ""
    where = host + (f":{port}" if port else "")
    if not host and port:
        query["port"] = str(port)
        where = ""
    tail = "&".join(f"{k}={quote(v, safe='/')}" for k, v in sorted(query.items()))
    return f"postgresql://{auth}{where}/{dbname}" + (f"?{tail}" if tail else "")


def pgbench_path() -> str | None:
    """pgbench from the embedded server's installation, else the one on PATH."""
    try:
        with warnings.catch_warnings():
            # pgserver's import asks platformdirs for a runtime dir, which warns without one.
            warnings.simplefilter("ignore")
            import pgserver  # noqa: PLC0415 - the embedded server is optional at run time
    except ImportError:
        return shutil.which("pgbench")
    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
    return str(bundled) if bundled.is_file() else shutil.which("pgbench")


class BenchDb:
    """One autocommit connection to a benchmark database and the bench's queries on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = _open(url)
        self._pgq: bool | None = None  # whether PgQ's capture trigger is installed

    def __enter__(self) -> BenchDb:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def _value(self, name: str, params: dict[str, Any] | None = None) -> Any:
        row = self.conn.execute(Q[name], params).fetchone()
        return None if row is None else row[0]

    def add_endpoint(self, url: str, *, enabled: bool = True) -> str:
        return str(self._value("bench_endpoint_add", {"url": url, "enabled": enabled}))

    def add_account_endpoint(self, url: str, account: str) -> str:
        return str(self._value("bench_account_endpoint_add", {"url": url, "account": account}))

    def add_accounts(self, count: int) -> None:
        """Accounts 1 to `count` in stover.accounts."""
        self.conn.execute(Q["bench_accounts_add"], {"count": count})

    def import_contacts(self, rows: int, *, account: int) -> None:
        """Commit `rows` contacts of `account` in one INSERT (one transaction, `rows` events)."""
        self.conn.execute(Q["bench_contacts_import"], {"rows": rows, "account": account})

    def fanned_out(self) -> bool:
        """Whether every committed event has its deliveries (no transaction left in parts)."""
        return bool(self._value("bench_fanned_out", {}))

    def enable_account(self, account: str, *, on: bool) -> None:
        """Switch every endpoint of `account` on or off."""
        self.conn.execute(Q["bench_account_enable"], {"account": account, "enabled": on})

    def enable(self, endpoint_id: str, *, on: bool) -> None:
        self.conn.execute(Q["bench_endpoint_enable"], {"id": endpoint_id, "enabled": on})

    def wake(self) -> None:
        self.conn.execute(Q["bench_wake"])

    def insert_events(self, count: int, *, fan_out: bool = True) -> None:
        """Commit `count` events in one transaction; then (`fan_out`) fan them out to the
        enabled endpoints and wake idle relays."""
        self.conn.execute(Q["bench_events_insert"], {"count": count})
        if fan_out:
            self.fan_out()
            self.wake()

    def insert_record_events(
        self, records: int, updates: int, *, first: int, before_commit: Callable[[list[str]], None]
    ) -> None:
        """Commit `records` deals (ids from `first`) each updated `updates` times in turn, in one
        transaction; `before_commit` gets the ids of the first deal's events while it is still
        open. Then fan them out and wake idle relays."""
        params = {"records": records, "updates": updates, "first": first}
        with self.conn.transaction():
            ids = self._value("bench_record_events_insert", params)
            before_commit([str(i) for i in ids])
        self.fan_out()
        self.wake()

    def insert_deal_updates(self, records: int, *, first: int) -> None:
        """Commit one deal.updated event each for `records` deals (ids from `first`) in one
        transaction, leaving them to be fanned out."""
        params = {"records": records, "updates": 1, "first": first}
        self.conn.execute(Q["bench_record_events_insert"], params)

    def set_ordered(self, endpoint_id: str, *, ordered: bool) -> None:
        self.conn.execute(Q["bench_endpoint_ordered"], {"id": endpoint_id, "ordered": ordered})

    def pending_apart(self, records: Sequence[str]) -> int:
        """Pending deliveries other than those of `records`."""
        return int(self._value("bench_pending_apart", {"records": list(records)}))

    def insert_large_events(self, count: int, size: int) -> None:
        """Commit `count` events of about `size` bytes each in one transaction, fan them out and
        wake idle relays."""
        self.conn.execute(Q["bench_large_events_insert"], {"count": count, "bytes": size})
        self.fan_out()
        self.wake()

    def insert_account_events(self, count: int, *, accounts: int, offset: int) -> None:
        """Commit `count` events in one transaction, spread round-robin over `accounts`."""
        params = {"count": count, "accounts": accounts, "offset": offset}
        self.conn.execute(Q["bench_account_events_insert"], params)

    def set_account_endpoints(self, count: int, *, accounts: int) -> None:
        """Replace every endpoint by `count` endpoints spread over `accounts` accounts."""
        self.conn.execute(Q["bench_account_endpoints_set"], {"count": count, "accounts": accounts})
        self.conn.execute(Q["bench_endpoints_analyze"])

    def reset_outbox(self) -> None:
        """Empty events, deliveries and attempts (the fan-out cursor stays valid). TRUNCATE
        takes its tables one by one, so a relay's step that took them in another order can make
        it a deadlock's victim: it is tried again."""
        for tries_left in (2, 1, 0):
            try:
                self.conn.execute(Q["bench_outbox_reset"])
                return
            except psycopg.errors.DeadlockDetected:
                if not tries_left:
                    raise

    def fan_out_step(self, max_events: int) -> tuple[int, int, bool]:
        """One outbox.fan_out() step: (events, deliveries written, whether events were left)."""
        row = self.conn.execute(Q["bench_fan_out"], {"max_events": max_events}).fetchone()
        return (0, 0, False) if row is None else (int(row[0]), int(row[1]), bool(row[2]))

    def fan_out(self, max_events: int = 100_000) -> tuple[int, int]:
        """Fan out every committed event, step by step: (events, deliveries written)."""
        events = deliveries = 0
        while True:
            step_events, step_deliveries, more = self.fan_out_step(max_events)
            events, deliveries = events + step_events, deliveries + step_deliveries
            if not more:
                return events, deliveries

    def fan_out_floor(self) -> int:
        """Every committed event's deliveries by one join of events to endpoints by account
        (bench.sql, bench_fan_out_floor): the deliveries written."""
        return self.conn.execute(Q["bench_fan_out_floor"]).rowcount

    def pending(self, *, enabled_only: bool = False) -> int:
        """Pending deliveries (with `enabled_only`, only those of endpoints switched on)."""
        name = "bench_pending_enabled_count" if enabled_only else "bench_pending_count"
        return int(self._value(name))

    def attempts_count(self) -> int:
        return int(self._value("bench_attempts_count"))

    def status_counts(self) -> dict[str, int]:
        rows = self.conn.execute(Q["bench_status_counts"]).fetchall()
        return {str(status): int(count) for status, count in rows}

    def relays_idle(self) -> int:
        return int(self._value("bench_relays_idle"))

    def install_references(self) -> bool:
        """Add the reference and floor capture triggers (bench.sql) to stover.contacts, and PgQ's
        where the server has it, all switched off; returns whether PgQ's was added."""
        self.conn.execute(Q["bench_reference_install"])
        self.conn.execute(Q["bench_floor_install"])
        self.conn.execute(Q["bench_account_install"])
        self._pgq = bool(self._value("bench_pgq_available"))
        if self._pgq:
            try:
                self.conn.execute(Q["bench_pgq_install"])
            except psycopg.Error:
                self._pgq = False  # installed but not ours to create (no superuser, say)
        self.capture("outbox")
        return bool(self._pgq)

    def capture(self, mode: Capture) -> None:
        """Which triggers run on INSERTs into stover.contacts: the outbox's (taking the account
        from account_id, or as for a table without an account column), the reference, the floor
        or PgQ's trigger (after install_references), or none."""
        self.conn.execute(Q[f"bench_capture_{mode}"])
        if self._pgq is None:
            self._pgq = bool(self._value("bench_pgq_installed"))
        if mode in ("outbox", "no_account") and self._pgq:
            self.conn.execute(Q["bench_pgq_off"])

    def enable_endpoints(self, count: int) -> None:
        """The first `count` endpoints enabled, the others disabled."""
        self.conn.execute(Q["bench_endpoints_enable"], {"count": count})

    def checkpoint(self) -> bool:
        """Flush dirty pages now so a measurement does not start mid-checkpoint (needs rights)."""
        try:
            self.conn.execute(Q["bench_checkpoint"])
        except psycopg.errors.InsufficientPrivilege:
            return False
        return True

    def dead_tuples(self) -> tuple[int, int, int]:
        """outbox.deliveries' (dead tuples, live tuples, autovacuum runs) from the statistics."""
        row = self.conn.execute(Q["bench_dead_tuples"]).fetchone()
        return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def autovacuum_naptime(self) -> float:
        """Seconds between autovacuum's visits to a database."""
        return float(self._value("bench_autovacuum_naptime"))

    def vacuum_analyze(self) -> None:
        self.conn.execute(Q["bench_vacuum_analyze"])

    def event_contacts(self) -> dict[str, int]:
        rows = self.conn.execute(Q["bench_event_contacts"]).fetchall()
        return {str(event_id): int(contact_id) for event_id, contact_id in rows}

    def account_path(self, account: str | None) -> list[tuple[str, float, float, float | None]]:
        """Per delivery of `account` (None: the account-less ones): its event's id, when the
        event's transaction began, when the delivery was written, when its first attempt started
        (None before one did)."""
        rows = self.conn.execute(Q["bench_account_path"], {"account": account}).fetchall()
        return [
            (str(e), float(m), float(w), None if s is None else float(s)) for e, m, w, s in rows
        ]

    def event_sample(self, limit: int) -> list[EventRow]:
        rows = self.conn.execute(Q["bench_event_sample"], {"limit": limit}).fetchall()
        return [
            (str(a), str(b), c, str(d), None if e is None else str(e)) for a, b, c, d, e in rows
        ]

    def server_version(self) -> str:
        return str(self._value("bench_server_version"))

    def settings(self, names: list[str]) -> dict[str, str]:
        rows = self.conn.execute(Q["bench_settings"], {"names": names}).fetchall()
        return {str(name): str(value) for name, value in rows}

    def connections_free(self) -> int:
        return int(self._value("bench_connections_free"))

    def pgqueuer_left(self) -> int:
        return int(self._value("bench_pgqueuer_left"))


class ContactWriter:
    """A writer of single-row, durable (autocommit) INSERTs into stover.contacts, of no account
    or of `account` (an id in stover.accounts)."""

    def __init__(self, url: str, account: int | None = None) -> None:
        self.conn = _open(url)
        self.account = account

    def insert(self) -> int:
        """Insert one contact; when this returns, its transaction has committed."""
        row = self.conn.execute(Q["bench_contact_insert"], {"account": self.account}).fetchone()
        if row is None:
            raise OutboxError("INSERT ... RETURNING returned no row")
        return int(row[0])

    def close(self) -> None:
        self.conn.close()
