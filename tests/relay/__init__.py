"""Shared by the relay's end-to-end tests: a loopback receiver, endpoints, the writes that raise
every seed event type, reading deliveries back, and a real in-process relay to drive."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import support
from aiohttp import web
from psycopg.rows import dict_row
from standardwebhooks import Webhook
from support import Received, outbox_cmd

from outbox import __version__
from outbox.config import DEFAULT_MAX_PAYLOAD_BYTES, Settings
from outbox.db.store import Store
from outbox.relay import Relay
from outbox.sender import Sender
from outbox.signing import USER_AGENT
from tests.db.rows import fan_out

SEED_TYPES = frozenset(
    {
        "contact.created",
        "contact.updated",
        "contact.deleted",
        "deal.created",
        "deal.updated",
        "deal.stage_changed",
        "deal.closed_won",
        "deal.closed_lost",
        "company.created",
        "company.updated",
        "post.published",
        "post.scheduled",
        "post.failed",
        "attribution.tracked",
    }
)
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@dataclass
class Receiver(support.Receiver):
    """support's recording receiver, plus fixed response headers per path (Location and such)."""

    response_headers: dict[str, dict[str, str]] = field(default_factory=dict)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await super()._handle(request)
        response.headers.update(self.response_headers.get(request.path, {}))
        return response


@contextmanager
def receiving(kind: type[Receiver] = Receiver, **kwargs: Any) -> Iterator[Receiver]:
    """Run a Receiver (or a subclass, `kind`) on 127.0.0.1 in a background thread; stop it and
    close its loop on exit.

    (support.running_receiver leaves its event loop unclosed, which the suite's warnings-as-errors
    reports as a failure in whichever test the garbage collector happens to run in.)
    """
    receiver = kind(**kwargs)
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", receiver._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.port = runner.addresses[0][1]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        yield receiver
    finally:
        if runners:
            # A handler left hanging on purpose must not fail the teardown.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runners[0].cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@dataclass(frozen=True)
class Endpoint:
    id: str
    secret: str


def add_endpoint(
    conn: psycopg.Connection[Any],
    url: str,
    *,
    event_types: Sequence[str] = ("*",),
    secret: str | None = None,
) -> Endpoint:
    """Insert an endpoint the way users do; the database makes its id and, unless given, secret."""
    if secret is None:
        row = conn.execute(
            "insert into outbox.endpoints (url, event_types) values (%s, %s) returning id, secret",
            [url, list(event_types)],
        ).fetchone()
    else:
        row = conn.execute(
            "insert into outbox.endpoints (url, event_types, secret) values (%s, %s, %s) "
            "returning id, secret",
            [url, list(event_types), secret],
        ).fetchone()
    assert row is not None
    return Endpoint(row[0], row[1])


def set_enabled(conn: psycopg.Connection[Any], endpoint: Endpoint, enabled: bool) -> None:
    conn.execute("update outbox.endpoints set enabled = %s where id = %s", [enabled, endpoint.id])


def is_enabled(conn: psycopg.Connection[Any], endpoint: Endpoint) -> bool:
    row = conn.execute("select enabled from outbox.endpoints where id = %s", [endpoint.id])
    found = row.fetchone()
    assert found is not None
    return bool(found[0])


def _one_id(conn: psycopg.Connection[Any], query: str, params: Sequence[object]) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def write_seed_events(conn: psycopg.Connection[Any]) -> None:
    """Ordinary writes on the stover tables that, between them, raise all 14 seed event types."""
    company = _one_id(
        conn,
        "insert into stover.companies (name, domain) values ('Acme', 'acme.test') returning id",
        [],
    )
    conn.execute("update stover.companies set name = 'Acme Inc' where id = %s", [company])
    contact = _one_id(
        conn,
        "insert into stover.contacts (first_name, last_name, email, company_id) "
        "values ('Jane', 'Doe', 'jane@acme.test', %s) returning id",
        [company],
    )
    conn.execute("update stover.contacts set phone = '+1 555 0100' where id = %s", [contact])
    won = _one_id(
        conn,
        "insert into stover.deals (name, amount, company_id, contact_id) "
        "values ('Big one', 1000.50, %s, %s) returning id",
        [company, contact],
    )
    conn.execute("update stover.deals set stage = 'qualified' where id = %s", [won])
    conn.execute("update stover.deals set stage = 'closed_won' where id = %s", [won])
    lost = _one_id(
        conn,
        "insert into stover.deals (name, amount, stage) values ('Long shot', 99.99, "
        "'negotiation') returning id",
        [],
    )
    conn.execute("update stover.deals set stage = 'closed_lost' where id = %s", [lost])
    post = _one_id(
        conn,
        "insert into stover.posts (network, content, status, scheduled_at) "
        "values ('linkedin', 'Launch day', 'scheduled', now() + interval '1 day') returning id",
        [],
    )
    conn.execute(
        "update stover.posts set status = 'published', published_at = now() where id = %s",
        [post],
    )
    conn.execute(
        "insert into stover.posts (network, content, status, error) "
        "values ('x', 'Oops', 'failed', 'token expired')"
    )
    conn.execute(
        "insert into stover.attribution_events (contact_id, source, medium, campaign, url) "
        "values (%s, 'google', 'cpc', 'spring', 'https://acme.test/?utm_source=google')",
        [contact],
    )
    conn.execute("delete from stover.contacts where id = %s", [contact])


def event_types(conn: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in conn.execute("select distinct type from outbox.events")}


def deliveries(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every delivery, once what has committed is fanned out."""
    fan_out(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from outbox.deliveries order by id")
        return cur.fetchall()


def delivery(conn: psycopg.Connection[Any], delivery_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from outbox.deliveries where id = %s", [delivery_id])
        row = cur.fetchone()
    assert row is not None, f"no delivery {delivery_id}"
    return row


def only_delivery(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    rows = deliveries(conn)
    assert len(rows) == 1, f"expected one delivery, found {len(rows)}"
    return rows[0]


def attempts(conn: psycopg.Connection[Any], delivery_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select * from outbox.attempts where delivery_id = %s order by attempt", [delivery_id]
        )
        return cur.fetchall()


def emit_one(conn: psycopg.Connection[Any], data: dict[str, Any] | None = None) -> str:
    """One application event through `outbox.emit`; returns its id."""
    row = conn.execute(
        "select outbox.emit('test.ping', %s::jsonb)", [json.dumps(data or {"n": 1})]
    ).fetchone()
    assert row is not None
    return str(row[0])


def check_request(request: Received, secret: str) -> dict[str, Any]:
    """Assert one request carries every header SPEC.md names, both signatures verify with
    `secret`, and the headers agree with the body; returns the parsed body."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"Stover-Webhooks/{__version__}"
    expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert headers["x-stover-signature"] == f"sha256={expected}"
    Webhook(secret).verify(request.body, request.headers)  # raises when it does not verify
    stamp = headers["webhook-timestamp"]
    signed = f"{headers['webhook-id']}.{stamp}.".encode() + request.body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    standard = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{standard}"
    body: dict[str, Any] = json.loads(request.body)
    assert headers["x-stover-event-id"] == headers["webhook-id"] == body["id"]
    assert headers["x-stover-event-type"] == body["type"]
    assert headers["x-stover-delivery-id"].isdigit()
    assert int(headers["x-stover-attempt"]) >= 1
    assert CREATED_AT.match(body["created_at"])
    return body


def header(request: Received, name: str) -> str:
    lowered = name.lower()
    return next(value for key, value in request.headers.items() if key.lower() == lowered)


def relay_settings(
    db_url: str,
    *,
    ladder: Sequence[float] = (0.0,),
    timeout: float = 10.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Settings:
    return Settings(
        database_url=db_url,
        retry_ladder=tuple(ladder),
        timeout=timeout,
        allow_private_networks=True,
        log_format="json",
        max_payload_bytes=max_payload_bytes,
    )


@asynccontextmanager
async def running_relay(
    db_url: str,
    *,
    ladder: Sequence[float] = (0.0,),
    answer_within: float = 10.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> AsyncIterator[Relay]:
    """A real Relay (Store, Sender) in this process, for tests that call `run_once()`."""
    timeout = answer_within
    settings = relay_settings(
        db_url, ladder=ladder, timeout=timeout, max_payload_bytes=max_payload_bytes
    )
    store = Store(db_url)
    await store.open()
    try:
        async with Sender(
            timeout=timeout, allow_private_networks=True, user_agent=USER_AGENT
        ) as sender:
            yield Relay(store, sender, settings)
    finally:
        await store.close()


async def drive(relay: Relay, until: Callable[[], bool], deadline_s: float = 20.0) -> None:
    """Run batches until `until()` holds, sleeping only until the next delivery comes due."""
    deadline = time.monotonic() + deadline_s
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"relay did not get there within {deadline_s}s")
        tally = await relay.run_once()
        if not tally.claimed:
            due = await relay.store.next_due()
            await asyncio.sleep(0.05 if due is None else min(max(due, 0.01), 0.5))


async def until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait until `check()` (run in a thread) holds; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.02)


def relay_env(cli_env: dict[str, str], *, ladder: str, timeout: str = "10") -> dict[str, str]:
    return {**cli_env, "OUTBOX_RETRY_LADDER": ladder, "OUTBOX_TIMEOUT": timeout}


def start_logged_relay(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`outbox relay` as a real process with its stderr in `log`. (support.start_relay leaves its
    own handle on the log file open, which the suite's warnings-as-errors turns into a failure.)"""
    with log.open("ab") as stderr:
        return subprocess.Popen(
            outbox_cmd("relay", *args),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def log_records(log: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The relay's JSON log lines in `log` (those of one event, if given)."""
    lines = log.read_text().splitlines() if log.exists() else []
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in parsed if event is None or r["event"] == event]
