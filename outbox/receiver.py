"""A local webhook receiver that checks both signatures and can fail or slow down on purpose."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from outbox import signing, webserver

BODY_LIMIT = 16 * 1024 * 1024
TOLERANCE_S = 300.0  # how far webhook-timestamp may be from this receiver's clock


@dataclass(frozen=True)
class Seen:
    """One request as the receiver judged it."""

    at: datetime
    event_type: str | None
    event_id: str | None
    delivery_id: str | None
    attempt: str | None
    status: int  # what the receiver answered
    verdict: str  # ok, bad signature, simulated failure
    problem: str | None  # for a 401: which signature did not match
    body: bytes = field(repr=False)

    @property
    def accepted(self) -> bool:
        return self.status == 200


@dataclass
class Behaviour:
    """How the receiver answers: which secret it checks, how often it fails, how slowly."""

    secret: str
    fail_rate: float = 0.0
    delay: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time


def check_secret(secret: str) -> str | None:
    """Why `secret` cannot verify both schemes, or None when it can."""
    try:
        signing.standard_signature(secret, "msg", 0, b"")
    except ValueError as exc:
        return str(exc)
    return None


def judge(
    behaviour: Behaviour, headers: Mapping[str, str], body: bytes
) -> tuple[int, str, str | None]:
    """The answer to one request: (status, verdict, problem); `headers` are case-insensitive."""
    problems: list[str] = []
    if not signing.verify_stover(behaviour.secret, body, headers.get("X-Stover-Signature")):
        problems.append("X-Stover-Signature")
    if not signing.verify_standard(
        behaviour.secret, headers, body, now=behaviour.clock(), tolerance=TOLERANCE_S
    ):
        problems.append("webhook-signature")
    if problems:
        return 401, "bad signature", " and ".join(problems) + " did not verify"
    if behaviour.fail_rate > 0 and behaviour.rng.random() < behaviour.fail_rate:
        return 500, "simulated failure", None
    return 200, "ok", None


def make_app(behaviour: Behaviour, report: Callable[[Seen], None]) -> web.Application:
    """An app that answers POSTs on any path and reports each one to `report`."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        status, verdict, problem = judge(behaviour, headers, body)
        if behaviour.delay > 0:
            await asyncio.sleep(behaviour.delay)
        report(
            Seen(
                at=datetime.now(UTC),
                event_type=headers.get("X-Stover-Event-Type"),
                event_id=headers.get("X-Stover-Event-Id") or headers.get("webhook-id"),
                delivery_id=headers.get("X-Stover-Delivery-Id"),
                attempt=headers.get("X-Stover-Attempt"),
                status=status,
                verdict=verdict,
                problem=problem,
                body=body,
            )
        )
        text = verdict if problem is None else f"{verdict}: {problem}"
        return web.Response(status=status, text=text + "\n")

    app = web.Application(client_max_size=BODY_LIMIT)
    app.router.add_post("/{tail:.*}", handle)
    return app


async def start(
    behaviour: Behaviour, report: Callable[[Seen], None], *, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Serve the receiver on host:port (0 picks a free port); returns the runner and the port.
    A port that cannot be bound raises OutboxError."""
    app = make_app(behaviour, report)
    return await webserver.start(app, host, port, what="listen", shutdown_timeout=1.0)
