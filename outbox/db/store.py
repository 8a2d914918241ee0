"""The relay's database side: fan-out steps, claims of due deliveries, outcomes, leases handed back
and wake-ups."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from outbox.config import Breaker
from outbox.db.connect import with_timeout
from outbox.db.turns import Turns
from outbox.sqlfiles import compact, queries

Q = queries("deliveries")
FAN_OUT = queries("fan_out")
WAKE_CHANNEL = "outbox_due"

# Errors that mean "the database is unreachable or restarting": retried with backoff.
TRANSIENT = (psycopg.OperationalError, psycopg.errors.AdminShutdown, TimeoutError)


@dataclass(slots=True)  # not frozen: a frozen dataclass takes ~4x as long to build
class Claimed:
    """A delivery this relay holds under lease, with what it needs to send it."""

    delivery_id: int
    attempts: int
    ladder_start: int
    lease: datetime
    event_id: str
    event_type: str
    event_created_at: datetime
    data_json: str
    previous_json: str | None
    endpoint_id: str
    url: str
    secret: str = field(repr=False)  # kept out of any repr that reaches a log
    probe: bool = False  # the one attempt its endpoint's open circuit breaker lets through
    failing: bool = False  # its endpoint had failed attempts on record when it was claimed
    # The secret a rotation replaced, while its overlap lasts: it signs as well.
    previous_secret: str | None = field(default=None, repr=False)
    # The endpoint's own headers as JSON text (None: none); their values may be credentials.
    headers_json: str | None = field(default=None, repr=False)
    account_id: str | None = None  # its endpoint's account
    record: str | None = None  # the record the event is about ('deals:42'), when it names one
    sequence: int | None = None  # the event's place among its record's events, from 1
    # Rate-limited only: [seconds from the claim's now() to its slot, seconds from falling due to
    # it, the claim's now() in Unix seconds].
    slot: list[float] | None = None
    start_at: float = 0.0  # rate-limited only: the time.monotonic() its attempt may start
    give_up_at: float = 0.0  # rate-limited only: a start later than this would crowd the next


@dataclass(frozen=True)
class FanOutStep:
    """What one fan-out step did: events fanned out, deliveries written, and whether committed
    events were left for the next step."""

    events: int = 0
    deliveries: int = 0
    more: bool = False


@dataclass(slots=True)  # not frozen: a frozen dataclass takes ~4x as long to build
class Result:
    """The recorded outcome of one attempt."""

    delivery_id: int
    lease: datetime
    attempt: int
    status: str  # pending (will retry), delivered or failed
    delay: float  # seconds until the next attempt when pending
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_body: str | None
    endpoint_id: str = ""
    probe: bool = False  # the attempt was its endpoint's breaker probe
    failing: bool = False  # its endpoint had failed attempts on record when it was claimed
    sent: bool = True  # the request went out: the outcome says something about the receiver


@dataclass(frozen=True)
class Transition:
    """An endpoint whose circuit breaker an outcome opened (`open`) or closed."""

    endpoint_id: str
    open: bool


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Session settings of the relay's connections: no JIT compilation.

    JIT pays for itself only on long analytic queries. A plan of the claim costed above
    jit_above_cost (a generic one was) was compiled on every run: 16 ms a claim against 1 ms.

    The choice between custom and generic plans stays PostgreSQL's. It plans the claim afresh on
    every run (the generic plan is costed above the custom ones), 0.2 ms of the server's CPU a
    claim: ~3 us a delivery in full batches of 64, off the relay's own core, which is what bounds
    its rate. Forcing the generic plan would save that, but one made on a new installation's
    small, never-analyzed tables is kept until autovacuum first analyzes them, and the claim's
    then finds the claimed ids by a scan of outbox.deliveries (2.5 ms a claim at 10k rows,
    growing with the table).
    """
    await conn.execute("select set_config('jit', 'off', false)")


def claim_statement(walk: bool, limits: bool = False) -> LiteralString:
    """The claim, with its endpoints in turn found by walking the pending index (`walk`, for
    installations with more than 100 enabled endpoints) or by asking each enabled endpoint; with
    `limits`, taking rate-limited endpoints' slots too (some enabled endpoint has a limit)."""
    suffix = "_limited" if limits else ""
    statement = Q["deliveries_claim"]
    for line, fragment in (
        ("-- turn", ("deliveries_claim_turn_walk" if walk else "deliveries_claim_turn_each")),
        ("-- due", "deliveries_claim_due"),
        ("-- slot", "deliveries_claim_slot"),
    ):
        marker = "\n" + line + "\n"
        if marker not in statement:
            raise RuntimeError(f"sql/queries/deliveries.sql: deliveries_claim has no `{line}` line")
        statement = statement.replace(marker, "\n" + Q[fragment + suffix] + "\n", 1)
    return compact(statement)


CLAIM = {
    (walk, limits): claim_statement(walk, limits)
    for walk in (False, True)
    for limits in (False, True)
}
DEFAULT_BREAKER = Breaker()
# How late after its slot a rate-limited attempt may still start; later, it is handed back and
# claimed again for a new slot. A limit of N a second then sees at most N * (1 + SLOT_GRACE + w)
# + 1 starts in any second, w being ClockLink's uncertainty (the quickest recent claim's round
# trip, well under a millisecond beside the database).
SLOT_GRACE = 0.02
# How long ClockLink trusts its reading of the database's clock before taking a fresh one.
LINK_FRESH = 30.0
# How often the relay looks at its enabled endpoints to choose its claim: walking or asking each,
# with rate limits or without (an endpoint given the first limit waits until the relay looks).
RECOUNT_SECONDS = 1.0


class Store:
    """A small async connection pool and the relay's queries."""

    def __init__(self, url: str, *, max_size: int = 4) -> None:
        self.url = url
        self.pool = AsyncConnectionPool(
            with_timeout(url),
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
            timeout=10.0,
            # A lost connection is re-made with backoff (1 s, 2 s, 4 s) for as long as a request
            # waits for one; after that the next request starts trying again, so the relay
            # outlives outages of any length. (0 would give up after one failed try, leaving
            # requests to wait out `timeout` after even a sub-second restart.)
            reconnect_timeout=10.0,
        )
        self._turns = Turns()  # where the latest claim got to: the next starts after it
        self._walk = False  # more than 100 enabled endpoints: claim by walking the pending index
        self._limits = False  # an enabled endpoint has a rate limit: claim with its fragments
        self._counted = float("-inf")  # when the enabled endpoints were last counted
        self._clock = ClockLink()  # the database's clock, for rate-limited deliveries' slots

    @property
    def walking(self) -> bool:
        """Whether the last claim walked the pending index (over 100 enabled endpoints)."""
        return self._walk

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=10.0)

    async def close(self) -> None:
        await self.pool.close()

    async def claim(self, limit: int, lease: float, busy: Sequence[str] = ()) -> list[Claimed]:
        """Claim up to `limit` due deliveries, endpoints taking turns from one claim to the next."""
        params = {"limit": limit, "lease": lease, "busy": list(busy), **self._turns.params()}
        async with self.pool.connection() as conn:
            now = time.monotonic()
            if now - self._counted >= RECOUNT_SECONDS:
                cur = await conn.execute(Q["endpoints_many"])
                row = await cur.fetchone()
                self._walk, self._limits = (bool(row[0]), bool(row[1])) if row else (False, False)
                self._counted = now
            sent = time.monotonic()
            cur = await conn.execute(CLAIM[self._walk, self._limits], params)
            rows = await cur.fetchall()
        claimed = [Claimed(*row) for row in rows]
        if claimed:
            _place(claimed, self._clock, sent, time.monotonic())
        # The next claim starts after the account and endpoint this one reached last.
        self._turns.advance(((c.account_id, c.endpoint_id) for c in claimed), walking=self._walk)
        return claimed

    async def fan_out(self, max_events: int) -> FanOutStep:
        """One step of outbox.fan_out(); nothing when another relay is stepping."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(FAN_OUT["fan_out_step"], {"max_events": max_events})
            row = await cur.fetchone()
        if row is None:
            return FanOutStep()
        return FanOutStep(int(row[1]), int(row[2]), bool(row[3]))

    async def complete(
        self,
        results: Sequence[Result],
        verdicts: Sequence[Any] = (),
        rule: Breaker = DEFAULT_BREAKER,
    ) -> list[Transition]:
        """Record outcomes; with `verdicts` (outbox.relay.breaker), first what they do to their
        endpoints' breakers under `rule`, in the same transaction. Returns the endpoints whose
        breaker that opened or closed."""
        outcomes = {"outcomes": _outcomes_json(results)}
        async with self.pool.connection() as conn:
            if not verdicts:
                await conn.execute(Q["deliveries_complete"], outcomes)
                return []
            judging = {
                "verdicts": orjson.dumps(verdicts).decode(),
                "breaker_after": rule.after,
                "probe_first": rule.first_probe,
                "probe_longest": rule.longest_probe,
            }
            async with conn.transaction():
                cur = await conn.execute(Q["endpoints_judge"], judging)
                rows = await cur.fetchall()
                await conn.execute(Q["deliveries_complete"], outcomes)
        return [Transition(str(endpoint_id), bool(is_open)) for endpoint_id, is_open in rows]

    async def release(self, held: Sequence[Claimed]) -> None:
        if not held:
            return
        async with self.pool.connection() as conn:
            await conn.execute(
                Q["deliveries_release"],
                {"ids": [c.delivery_id for c in held], "leases": [c.lease for c in held]},
            )

    async def disable_endpoints(self, endpoint_ids: Sequence[str]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(Q["endpoints_disable_gone"], {"ids": list(endpoint_ids)})

    async def next_due(self) -> float | None:
        """Seconds until the next delivery is due (<= 0: due now); None when nothing is pending."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(Q["deliveries_next_due"])
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def may_vacuum(self) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(Q["deliveries_may_vacuum"])
            row = await cur.fetchone()
        return bool(row and row[0])

    async def vacuum(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(Q["deliveries_vacuum"])

    async def announce(self, relay_id: str, *, idle: bool) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(Q["relay_announce"], {"id": relay_id, "idle": idle})

    async def forget(self, relay_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(Q["relay_forget"], {"id": relay_id})


class ClockLink:
    """The database's clock read on this relay's monotonic clock, from the claims themselves.

    A claim's now() happened between sending it and its answer, so `now() - answered` is at most
    the true difference between the clocks, and within the claim's round trip of it. The reading
    of the quickest claim of the last LINK_FRESH seconds is kept: a slot read through it comes
    never early, and late by no more than that round trip, however slow this claim was or how
    long its answer waited for a busy event loop (which, reckoned from the answer, would shift
    all of a claim's slots late together, onto another relay's)."""

    __slots__ = ("_at", "_lo", "_width")

    def __init__(self) -> None:
        self._lo = 0.0
        self._width = float("inf")
        self._at = float("-inf")

    def offset(self, db_now: float, sent: float, answered: float) -> float:
        """Database seconds less monotonic seconds, as best known after this claim."""
        width = answered - sent
        if width <= self._width or answered - self._at > LINK_FRESH:
            self._lo, self._width, self._at = db_now - answered, width, answered
        return self._lo


def _place(claimed: list[Claimed], clock: ClockLink, sent: float, answered: float) -> None:
    """Give each rate-limited delivery the monotonic times between which its attempt may start:
    its slot, and SLOT_GRACE after it. Starts a relay made late, all at once after a stall, would
    otherwise crowd the slots of the next moment at another relay."""
    offset: float | None = None
    for c in claimed:
        if c.slot is not None:
            if offset is None:
                offset = clock.offset(c.slot[2], sent, answered)
            c.start_at = c.slot[2] + c.slot[0] - offset
            c.give_up_at = c.start_at + SLOT_GRACE


def _outcomes_json(results: Sequence[Result]) -> str:
    """The outcomes as the JSON array deliveries_complete reads (orjson writes the dataclasses)."""
    # PostgreSQL text holds neither NUL nor lone surrogates (orjson refuses those): replace them
    # rather than fail the batch.
    try:
        text = orjson.dumps(results).decode()
        if "\\u0000" not in text:
            return text
    except TypeError:
        pass
    cleaned = [
        dataclasses.replace(r, error=_text(r.error), response_body=_text(r.response_body))
        for r in results
    ]
    return orjson.dumps(cleaned).decode()


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


async def listen(url: str) -> AsyncIterator[None]:
    """Yield once per wake-up notification; raises when the connection is lost."""
    conn = await psycopg.AsyncConnection.connect(with_timeout(url), autocommit=True)
    async with conn:
        await conn.execute("listen outbox_due")  # WAKE_CHANNEL
        async for _ in conn.notifies():
            yield
