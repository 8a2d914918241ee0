"""A real relay driven example by example for property tests, and what each event's delivery
must look like when it ends: the renderer's exact bytes with both signatures valid, or, for an
event the relay cannot send, a failure at the first attempt with its reason in one line."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from standardwebhooks import Webhook
from support import NodeRoundtrip, Received, node_roundtrip

from outbox import signing
from outbox.payload import render_event
from outbox.relay import Relay
from tests.relay import Endpoint, Receiver, header, receiving, running_relay
from tests.unit.jsontrees import as_doubles, numbers_fit_doubles

Conn = psycopg.Connection[Any]
CAP = 4096  # these relays' OUTBOX_MAX_PAYLOAD_BYTES: room for every shape, cheap to go beyond
# orjson writes 254 levels of nesting; deeper data goes through the recursive renderer, whose
# reach depends on the stack it runs on (about 490 levels): between the two, either is right.
ALWAYS_RENDERED = 254
HEADER_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}")  # what emit() takes


@dataclass
class Harness:
    """A real relay in this process, driven until no delivery is pending, and the receiver it
    sends to. Its ladder has one rung: an attempt that fails ends its delivery."""

    conn: Conn
    receiver: Receiver
    runner: asyncio.Runner
    relay: Relay
    node: NodeRoundtrip | None
    paths: Iterator[int] = field(default_factory=itertools.count)

    def endpoint(self, **columns: Any) -> tuple[Endpoint, str]:
        """A new endpoint with a path of its own on the receiver, and these columns."""
        path = f"/hook/{next(self.paths)}"
        names = ["url", *columns]
        values = ["%s::text[]" if name == "event_types" else "%s" for name in names]
        row = self.conn.execute(
            f"insert into outbox.endpoints ({', '.join(names)})"
            f" values ({', '.join(values)}) returning id, secret",
            [self.receiver.url(path), *columns.values()],
        ).fetchone()
        assert row is not None
        return Endpoint(row[0], row[1]), path

    def deliver(self) -> None:
        """Fan out what has committed and attempt every due delivery, until none is pending."""
        for _ in range(20):
            tally = self.runner.run(self.relay.run_once(256))
            pending = self.conn.execute(
                "select count(*) from outbox.deliveries where status = 'pending'"
            ).fetchone()
            if not tally.claimed and pending == (0,):
                return
        raise AssertionError("deliveries left pending")

    def forget_events(self) -> None:
        """Remove every event with its deliveries, so the next example starts clean."""
        self.conn.execute("delete from outbox.events")

    @contextlib.contextmanager
    def example(self) -> Iterator[None]:
        """One example, whose events and deliveries are removed when it ends, however it ends."""
        try:
            yield
        finally:
            self.forget_events()


@contextlib.contextmanager
def harness(conn: Conn, db_url: str) -> Iterator[Harness]:
    """A relay on the test's database, sending to a receiver of its own, for the block."""
    stack = contextlib.AsyncExitStack()
    with receiving() as receiver, asyncio.Runner() as runner, node_roundtrip() as node:
        relay = runner.run(
            stack.enter_async_context(running_relay(db_url, ladder=(0.0,), max_payload_bytes=CAP))
        )
        try:
            yield Harness(conn, receiver, runner, relay, node)
        finally:
            runner.run(stack.aclose())


def fresh_render(event: dict[str, Any]) -> bytes | None:
    """The body the payload renderer writes for an event, on a thread of its own so the depth it
    reaches does not depend on this test's stack; None when the data is nested beyond it."""
    out: list[bytes | None] = []

    def render() -> None:
        try:
            out.append(
                render_event(
                    event["id"],
                    event["type"],
                    event["created_at"],
                    event["data"],
                    event["previous"],
                    record=event.get("record"),
                    sequence=event.get("sequence"),
                )
            )
        except RecursionError:
            out.append(None)

    worker = threading.Thread(target=render)
    worker.start()
    worker.join()
    return out[0]


def depth(text: str) -> int:
    """How deeply a JSON text nests arrays and objects."""
    deepest = level = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


def why_unsendable(event: dict[str, Any], body: bytes | None) -> str | None:
    """The relay's reason for not sending an event, in the order it looks (None: it is sent,
    or, nested beyond what orjson writes, maybe not)."""
    if HEADER_FORBIDDEN.search(event["type"]):
        return (
            f"not sent: event type {event['type'][:100]!r} holds a control character,"
            " which no HTTP header may carry"
        )
    if len(event["type"]) > 256 or not TYPE.fullmatch(event["type"]):
        return (
            f"not sent: event type {event['type'][:100]!r} is not a type such as deal.created"
            " (two to four lowercase words joined by dots, at most 256 characters)"
        )
    if body is None:
        return "not sent: RecursionError"
    if len(body) > CAP:
        return (
            f"not sent: the payload is {len(body):,} bytes, over OUTBOX_MAX_PAYLOAD_BYTES ({CAP:,})"
        )
    return None


def ending(h: Harness, event_id: str, endpoint: Endpoint, path: str) -> str:
    """How the event's delivery to the endpoint ended (delivered or failed), having checked it:
    delivered are the renderer's exact bytes with both signatures valid; failed is an event the
    relay cannot send, at its first attempt, with nothing sent and the reason in one line."""
    with h.conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select e.id, e.type, e.created_at, e.data::text as data,"
            " e.previous_attributes::text as previous,"
            " d.status, d.attempts, d.last_error, d.record, d.sequence"
            " from outbox.events e join outbox.deliveries d on d.event_id = e.id"
            " where e.id = %s and d.endpoint_id = %s",
            [event_id, endpoint.id],
        )
        event = cur.fetchone()
    assert event is not None, "no delivery"
    got = [r for r in h.receiver.on(path) if header(r, "X-Stover-Event-Id") == event_id]
    body = fresh_render(event)
    expected = why_unsendable(event, body)
    if event["status"] == "failed":
        assert (event["attempts"], got) == (1, [])
        reason = event["last_error"]
        assert len(reason.splitlines()) == 1
        allowed = [expected] if expected else []
        if not HEADER_FORBIDDEN.search(event["type"]) and depth(event["data"]) > ALWAYS_RENDERED:
            allowed.append("not sent: RecursionError")  # the relay's own stack decides
        assert any(reason.startswith(start) for start in allowed), reason
        return "failed"
    assert event["status"] == "delivered"
    assert expected is None, expected
    [request] = got
    assert request.body == body
    assert_signed(h, request, endpoint.secret, event)
    return "delivered"


def header_safe(text: str) -> bool:
    """Whether a header carries this text as it is: printable ASCII with no space at either end
    (receivers trim those, and may read other bytes as Latin-1)."""
    return text.isascii() and text.isprintable() and text == text.strip()


def assert_signed(h: Harness, request: Received, secret: str, event: dict[str, Any]) -> None:
    """Both signatures verify, the headers name the event, and the body holds its data."""
    body = request.body
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert signing.verify_stover(secret, body, headers["x-stover-signature"])
    Webhook(secret).verify(body, headers)  # raises when it does not verify
    assert signing.verify_standard(secret, headers, body, now=time.time())
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == signing.USER_AGENT
    assert headers["x-stover-event-id"] == headers["webhook-id"] == event["id"]
    assert headers["x-stover-attempt"] == "1"
    assert headers["x-stover-delivery-id"].isdigit()
    if header_safe(event["type"]):
        assert headers["x-stover-event-type"] == event["type"]
    sent = as_doubles(body.decode())
    assert (sent["id"], sent["type"]) == (event["id"], event["type"])
    assert sent["data"] == as_doubles(event["data"])
    previous = event["previous"]
    assert sent.get("previous_attributes") == (None if previous is None else as_doubles(previous))
    fits = numbers_fit_doubles(event["data"]) and numbers_fit_doubles(previous or "{}")
    if h.node is not None and fits:
        assert h.node.verdict(body) == "1"
