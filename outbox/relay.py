"""The relay: claims due deliveries, sends them signed, and records every attempt's outcome."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import psycopg
import structlog

from outbox import payload, retry, signing
from outbox.config import Settings
from outbox.db.store import TRANSIENT, Claimed, Result, Store, listen
from outbox.errors import first_line
from outbox.fanout import FanOut, Pace
from outbox.sender import Outcome, Sender

log = structlog.get_logger("outbox.relay")


@dataclass(frozen=True)
class Options:
    """How hard one relay process works."""

    concurrency: int = 256  # attempts in flight at once, across all endpoints
    per_endpoint: int = 128  # attempts in flight at once to any one endpoint
    batch: int = 64  # deliveries claimed per query (at most per_endpoint)
    poll_interval: float = 1.0  # the longest an idle relay sleeps without a wake-up
    linger: float = 0.002  # while work trickles in: the pause between claims that gathers it
    quiet: float = 0.05  # how long a trickle may dry up before the relay says it is idle
    grace: float = 10.0  # on shutdown, how long in-flight attempts may run before being cut off
    vacuum_every: float = 10.0  # seconds between VACUUMs of deliveries while draining (0: off)
    summary_every: float = 10.0  # seconds between the info lines that count attempts (0: off)


@dataclass
class Tally:
    """What a stretch of relay work did."""

    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    def add(self, result: Result) -> None:
        self.claimed += 1
        if result.status == "delivered":
            self.delivered += 1
        elif result.status == "failed":
            self.failed += 1
        else:
            self.retrying += 1


class Observer(Protocol):
    """Receives every attempt's outcome (metrics hook into this)."""

    def attempt(self, claimed: Claimed, result: Result, latency_s: float | None) -> None: ...


def decide(
    claimed: Claimed, outcome: Outcome, ladder: Sequence[float], now: datetime
) -> tuple[str, float]:
    """The delivery's status after this attempt, and the delay before the next one."""
    if outcome.ok:
        return "delivered", 0.0
    made = claimed.attempts + 1 - claimed.ladder_start
    retry_after = retry.parse_retry_after(outcome.retry_after, now)
    delay = retry.next_delay(ladder, made, retry_after)
    if delay is None:
        return "failed", 0.0
    return "pending", delay


def _audit_text(body: bytes) -> str | None:
    """The response body as text fit for a PostgreSQL column (no NUL), or None when empty."""
    if not body:
        return None
    return body.decode("utf-8", "replace").replace("\x00", "\ufffd")


def new_relay_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class _Flight:
    """Book-keeping of the deliveries this relay holds: claimed and not yet finished."""

    held: dict[int, Claimed] = field(default_factory=dict)
    per_endpoint: dict[str, int] = field(default_factory=dict)
    queue: deque[Claimed] = field(default_factory=deque)  # handed out, not yet picked up
    idle: deque[asyncio.Future[Claimed]] = field(default_factory=deque)  # workers waiting
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing is held

    def busy_endpoints(self, cap: int) -> list[str]:
        return [ep for ep, n in self.per_endpoint.items() if n >= cap]


class Relay:
    """One relay process's work loop. `run_once()` does one batch; `run()` runs until stopped."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        settings: Settings,
        options: Options | None = None,
        *,
        observer: Observer | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pace: Pace | None = None,
    ) -> None:
        self.store = store
        self.fan_out = FanOut(store, pace)
        self.sender = sender
        self.settings = settings
        self.options = options or Options()
        self.observer = observer
        self.clock = clock
        self.relay_id = new_relay_id()
        self.tally = Tally()
        self._flight = _Flight()
        self._results: list[Result] = []
        self._recording: list[Result] = []  # the batch the recorder is writing right now
        self._results_ready = asyncio.Event()
        self._nudge = asyncio.Event()
        self._gone: set[str] = set()
        self._fruitless: tuple[frozenset[str], float] = (frozenset(), 0.0)
        self._bodies: dict[str, bytes] = {}
        self._since_vacuum = 0  # outcomes recorded since the last VACUUM
        self._draining = False  # more is due than the relay's claims can take
        # Bound once: the module's lazy logger would rebuild itself on every attempt's line.
        self._attempt_log = log.bind()
        # A line per delivered attempt only at debug level: at info, successes are counted in
        # the periodic summary (their audit is in outbox.attempts either way), and failed or
        # retried attempts get a line each. Writing a line per success measured ~20 us of the
        # relay's CPU per delivery. structlog's generic BoundLogger cannot say which levels it
        # keeps; it then gets every line and filters them itself.
        try:
            self._log_delivered = bool(self._attempt_log.is_enabled_for(logging.DEBUG))
        except AttributeError:
            self._log_delivered = True

    # -- one attempt ---------------------------------------------------------------------------

    def _body(self, c: Claimed) -> bytes:
        body = self._bodies.get(c.event_id)
        if body is None:
            if len(self._bodies) > 4096:
                self._bodies.clear()
            body = payload.render_event(
                c.event_id, c.event_type, c.event_created_at, c.data_json, c.previous_json
            )
            self._bodies[c.event_id] = body
        return body

    async def attempt(self, c: Claimed) -> Result:
        """Send one delivery and work out its outcome (recording it is the caller's job)."""
        body, headers, started = self._prepare(c)
        return self._finish(c, started, await self.sender.send(c.url, body, headers))

    def _prepare(self, c: Claimed) -> tuple[bytes, dict[str, str], datetime]:
        """The body and signed headers of `c`'s next attempt, and when that attempt starts."""
        body = self._body(c)
        started = self.clock()
        headers = signing.delivery_headers(
            secret=c.secret,
            event_id=c.event_id,
            event_type=c.event_type,
            delivery_id=str(c.delivery_id),
            attempt=c.attempts + 1,
            body=body,
            timestamp=int(started.timestamp()),
            user_agent=signing.USER_AGENT,
        )
        return body, headers, started

    def _finish(self, c: Claimed, started: datetime, outcome: Outcome) -> Result:
        """The attempt's result from what the receiver did; counted, logged and observed."""
        if outcome.ok:
            status, delay = "delivered", 0.0
        else:
            status, delay = decide(c, outcome, self.settings.retry_ladder, self.clock())
        result = Result(
            delivery_id=c.delivery_id,
            lease=c.lease,
            attempt=c.attempts + 1,
            status=status,
            delay=delay,
            started_at=started,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            error=outcome.error,
            response_body=_audit_text(outcome.response_body),
        )
        if outcome.gone:
            self._gone.add(c.endpoint_id)
        self._report(c, result)
        return result

    def _report(self, c: Claimed, result: Result) -> None:
        self.tally.add(result)
        if self.observer is not None:
            latency = None
            if result.status == "delivered":
                latency = (self.clock() - c.event_created_at).total_seconds()
            self.observer.attempt(c, result, latency)
        status = result.status
        if status == "delivered":
            if not self._log_delivered:
                return
            emit = self._attempt_log.debug
        elif status == "failed":
            emit = self._attempt_log.warning
        else:
            emit = self._attempt_log.info
        outcome = "retrying" if status == "pending" else status
        emit(
            "attempt",
            delivery_id=c.delivery_id,
            event_id=c.event_id,
            event_type=c.event_type,
            endpoint_id=c.endpoint_id,
            attempt=result.attempt,
            outcome=outcome,
            status_code=result.status_code,
            error=result.error,
            duration_ms=round(result.duration_ms, 1),
            next_attempt_in=result.delay if outcome == "retrying" else None,
        )

    # -- recording -----------------------------------------------------------------------------

    async def _record(self, results: list[Result], *, deadline: float | None = None) -> None:
        """Write outcomes, retrying through database outages (until `deadline`, if given)."""
        backoff = 0.2
        while True:
            try:
                await self.store.complete(results)
                self._since_vacuum += len(results)
                if self._gone:
                    gone, self._gone = sorted(self._gone), set()
                    await self.store.disable_endpoints(gone)
                    log.warning("endpoints disabled after 410 Gone", endpoint_ids=gone)
            except TRANSIENT as exc:
                if deadline is not None and time.monotonic() + backoff > deadline:
                    log.error(
                        "outcomes not recorded; their deliveries will be sent again",
                        count=len(results),
                        error=first_line(exc),
                    )
                    return
                log.warning("database unavailable while recording; retrying", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                return

    async def _recorder(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            batch, self._results = self._results, []
            if batch:
                self._recording = batch
                await self._record(batch)
                self._recording = []

    # -- one batch, for tests and `outbox relay --once` -------------------------------------------

    async def run_once(self, limit: int | None = None) -> Tally:
        """Fan out what has committed, then claim one batch of due deliveries, send them all,
        and record the outcomes."""
        await self.fan_out.catch_up()
        claimed = await self.store.claim(limit or self.options.batch, self.settings.lease_seconds)
        results = await asyncio.gather(*(self.attempt(c) for c in claimed))
        tally = Tally()
        for result in results:
            tally.add(result)
        if results:
            await self._record(list(results))
        return tally

    # -- the loop ------------------------------------------------------------------------------

    def _dispatch(self, claimed: list[Claimed]) -> list[Claimed]:
        """Hand each claimed delivery to a worker; returns those over an endpoint's cap."""
        overflow: list[Claimed] = []
        flight = self._flight
        for c in claimed:
            count = flight.per_endpoint.get(c.endpoint_id, 0)
            if count >= self.options.per_endpoint:
                overflow.append(c)
                continue
            flight.per_endpoint[c.endpoint_id] = count + 1
            flight.held[c.delivery_id] = c
            while flight.idle:
                waiter = flight.idle.popleft()
                if not waiter.done():  # a worker cancelled at shutdown leaves its waiter behind
                    waiter.set_result(c)
                    break
            else:
                flight.queue.append(c)
        if flight.held:
            flight.settled.clear()
        return overflow

    async def _worker(self) -> None:
        """Makes attempts one after another. `concurrency` of these run for the relay's life:
        a task per attempt measured ~3 us more CPU per delivery. A delivery stays in `held`
        until its outcome is queued for recording, so one cut off at shutdown is handed back."""
        flight = self._flight
        loop = asyncio.get_running_loop()
        send = self.sender.send
        while True:
            if flight.queue:
                c = flight.queue.popleft()
            else:
                waiter: asyncio.Future[Claimed] = loop.create_future()
                flight.idle.append(waiter)
                c = await waiter
            try:
                # attempt()'s steps inline: one coroutine less to resume at every wake-up
                body, headers, started = self._prepare(c)
                result = self._finish(c, started, await send(c.url, body, headers))
            except Exception:
                # Not expected (sending never raises); the lease brings the delivery back.
                log.exception("attempt failed unexpectedly", delivery_id=c.delivery_id)
            else:
                self._results.append(result)
                self._results_ready.set()
            self._settle(c)

    def _settle(self, c: Claimed) -> None:
        flight = self._flight
        was_full = len(flight.held) >= self.options.concurrency
        del flight.held[c.delivery_id]
        left = flight.per_endpoint[c.endpoint_id] - 1
        if left:
            flight.per_endpoint[c.endpoint_id] = left
        else:
            del flight.per_endpoint[c.endpoint_id]
        if not flight.held:
            flight.settled.set()
        # Only a relay held back by a cap needs waking when a slot frees up.
        if was_full or left + 1 >= self.options.per_endpoint:
            self._nudge.set()

    async def _vacuumer(self) -> None:
        """VACUUM outbox.deliveries every `vacuum_every` seconds while the relay drains a backlog.

        Each attempt leaves dead row versions and index entries, and every claim walks the dead
        entries at the head of each endpoint's range of the pending index that it visits.
        Draining a backlog, a relay leaves hundreds of thousands of them in the minute
        autovacuum takes to come round, and full claims walk them all. Keeping pace with a
        trickle, it claims a few rows at a time, and there a VACUUM costs more than it saves: the
        relay's CPU per delivery measured the same without it (10 minutes at 1,000 events/s),
        while each VACUUM reads every index of the table whole, so takes longer as the table
        grows (40 ms at 10k rows, 330 ms at 600k), and the deliveries that wait behind it set
        the tail latency. Draining: the latest claim came back full, or short only for skipping
        endpoints at their cap (a trickle's claim comes back full too after a stall, but the next
        one finds the relay caught up)."""
        every = self.options.vacuum_every
        allowed: bool | None = None
        while every > 0:
            await asyncio.sleep(every)
            if not self._since_vacuum or not self._draining:
                continue
            try:
                if allowed is None:
                    allowed = await self.store.may_vacuum()
                    if not allowed:
                        log.info(
                            "this role may not vacuum outbox.deliveries (the owner may, and from "
                            "PostgreSQL 17 outbox_relay); leaving it to autovacuum"
                        )
                        return
                started, since = time.monotonic(), self._since_vacuum
                await self.store.vacuum()
                self._since_vacuum -= since
                log.info(
                    "vacuumed outbox.deliveries",
                    outcomes_since_last=since,
                    duration_ms=round((time.monotonic() - started) * 1000.0, 1),
                )
            except psycopg.Error as exc:
                log.warning("vacuum of outbox.deliveries failed", error=first_line(exc))

    async def _summarizer(self) -> None:
        """Every `summary_every` seconds in which attempts finished, one line counting them."""
        every = self.options.summary_every
        seen = dataclasses.replace(self.tally)
        fanned = (self.fan_out.events, self.fan_out.deliveries)
        since = time.monotonic()
        while every > 0:
            await asyncio.sleep(every)
            now, tally = time.monotonic(), self.tally
            finished = tally.claimed - seen.claimed
            if finished or self.fan_out.events != fanned[0]:
                log.info(
                    "attempts",
                    fanned_out_events=self.fan_out.events - fanned[0],
                    deliveries_written=self.fan_out.deliveries - fanned[1],
                    delivered=tally.delivered - seen.delivered,
                    retrying=tally.retrying - seen.retrying,
                    failed=tally.failed - seen.failed,
                    per_s=round(finished / (now - since), 1),
                    window_s=round(now - since, 1),
                    in_flight=len(self._flight.held),
                )
            seen, since = dataclasses.replace(tally), now
            fanned = (self.fan_out.events, self.fan_out.deliveries)

    async def _listener(self) -> None:
        backoff = 0.2
        while True:
            try:
                async for _ in listen(self.store.url):
                    backoff = 0.2
                    self._nudge.set()
            except TRANSIENT as exc:
                log.warning("wake-up connection lost; reconnecting", error=str(exc))
                self._nudge.set()  # notifications may have been missed meanwhile
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _wait(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep until nudged or `seconds` pass. Each step clears the nudge before its claim, so
        a wake-up that arrives while the claim runs is not lost."""
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._nudge.wait(), timeout=max(seconds, 0.0))

    async def _step(self, stop: asyncio.Event, state: dict[str, float | bool]) -> None:
        """One pass of the loop: claim what fits, or sleep until work is due or a wake-up."""
        state["step_started"] = time.monotonic()
        woken = self._nudge.is_set()  # a wake-up (NOTIFY, a freed slot), not the timer
        self._nudge.clear()
        opts = self.options
        flight = self._flight
        room = opts.concurrency - len(flight.held)
        if room <= 0:
            await self._wait(opts.poll_interval, stop)
            return
        # Endpoints at their cap are skipped; the claim is no larger than what the fullest of
        # the others can still take, so it never brings more of an endpoint's deliveries than
        # its cap allows and nothing has to be handed back.
        busy = flight.busy_endpoints(opts.per_endpoint)
        fullest = max((n for n in flight.per_endpoint.values() if n < opts.per_endpoint), default=0)
        limit = min(opts.batch, room, opts.per_endpoint - fullest)
        fanned = await self.fan_out.before_claim(self._nudge.set)
        skip_set, skip_until = self._fruitless
        fruitless = busy and frozenset(busy) == skip_set and time.monotonic() < skip_until
        if fruitless and not fanned.deliveries:
            # The last claim that skipped these same busy endpoints found nothing else due.
            # Asking again on every completed attempt would find the same nothing, a query
            # each time: wait until one of them frees up, a wake-up, new events, or the poll.
            await self._wait(min(skip_until - time.monotonic(), self.fan_out.pace.idle), stop)
            return
        quiet = state["idle"] and not woken and not fanned.deliveries
        if quiet and time.monotonic() < float(state["due_at"]):
            # An idle look found no new event, and nothing pending comes due yet.
            await self._wait(self._idle_wait(state), stop)
            return
        claimed = await self.store.claim(limit, self.settings.lease_seconds, busy)
        overflow = self._dispatch(claimed)
        if overflow:
            await self.store.release(overflow)
        await self._after_claim(len(claimed), limit, busy, stop, state)

    async def _after_claim(
        self,
        claimed: int,
        limit: int,
        busy: list[str],
        stop: asyncio.Event,
        state: dict[str, float | bool],
    ) -> None:
        """Go on at once, gather a trickle, or say idle and sleep: by what the claim found."""
        opts = self.options
        if claimed == limit:
            self._draining = True  # more was due than the claim could take
            if state["idle"]:
                # Saturated: stop asking writers for NOTIFYs; this relay is polling anyway.
                await self.store.announce(self.relay_id, idle=False)
                state["idle"] = False
            return
        if busy:
            # Short because endpoints at their cap were skipped: says nothing of a backlog.
            self._fruitless = (frozenset(busy), time.monotonic() + opts.poll_interval)
            return
        self._draining = False  # short with no endpoint skipped: caught up
        now = time.monotonic()
        if claimed:
            state["quiet_since"] = 0.0
            if state["idle"]:
                # Work is arriving: gather it by claiming every `linger` instead of being woken
                # by a NOTIFY from every writer (each costs the writer a commit-time lock and
                # this relay a message).
                await self.store.announce(self.relay_id, idle=False)
                state["idle"] = False
            await self._pause(self._linger_left(state), stop)
            return
        if not state["idle"] and now - float(state["quiet_since"] or now) < opts.quiet:
            # A trickle does not end at its first empty claim.
            state["quiet_since"] = state["quiet_since"] or now
            await self._pause(self._linger_left(state), stop)
            return
        if not state["idle"]:
            # Say we are idle first, then look once more: a write that committed before the
            # announcement is found by this claim, any later one sends a NOTIFY.
            await self.store.announce(self.relay_id, idle=True)
            state["idle"], state["announced"] = True, time.monotonic()
            return
        if time.monotonic() - float(state["announced"]) > 20.0:
            await self.store.announce(self.relay_id, idle=True)
            state["announced"] = time.monotonic()
        due = await self.store.next_due()
        # Rows that look due but were not claimable are locked by another relay's claim for a
        # moment; look again shortly rather than spin.
        wait = opts.poll_interval if due is None else min(opts.poll_interval, max(due, 0.05))
        state["due_at"] = time.monotonic() + wait
        await self._wait(self._idle_wait(state), stop)

    def _idle_wait(self, state: dict[str, float | bool]) -> float:
        """An idle relay's sleep: until a pending delivery comes due, but looking for newly
        committed events every `Pace.idle` seconds meanwhile (writers send no wake-up)."""
        return min(self.fan_out.pace.idle, max(float(state["due_at"]) - time.monotonic(), 0.0))

    def _linger_left(self, state: dict[str, float | bool]) -> float:
        """What is left of `linger` since this step began: while work trickles in, steps start
        every `linger` seconds however long the fan-out and the claim took."""
        return max(self.options.linger - (time.monotonic() - float(state["step_started"])), 0.0)

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep a few milliseconds; wake-ups do not cut it short (that is its point)."""
        if not stop.is_set():
            await asyncio.sleep(seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then shut down gracefully."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self.options.concurrency)]
        helpers = [
            asyncio.create_task(self._listener()),
            asyncio.create_task(self._recorder()),
            asyncio.create_task(self._vacuumer()),
            asyncio.create_task(self._summarizer()),
        ]
        stop_waiter = asyncio.create_task(self._nudge_on(stop))
        state: dict[str, float | bool] = {
            "idle": False,
            "announced": 0.0,
            "quiet_since": 0.0,
            "due_at": 0.0,  # while idle: when the earliest pending delivery comes due
            "step_started": 0.0,
        }
        backoff = 0.2
        log.info("relay started", relay_id=self.relay_id, **self._describe())
        try:
            while not stop.is_set():
                try:
                    await self._step(stop, state)
                    backoff = 0.2
                except TRANSIENT as exc:
                    log.warning("database unavailable; retrying", error=str(exc), retry_in=backoff)
                    state["idle"] = False
                    await self._wait(backoff, stop)
                    backoff = min(backoff * 2, 10.0)
        finally:
            await self._shutdown(workers, [*helpers, stop_waiter])

    async def _nudge_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._nudge.set()

    async def _shutdown(
        self, workers: list[asyncio.Task[None]], helpers: list[asyncio.Task[None]]
    ) -> None:
        flight = self._flight
        deadline = time.monotonic() + self.options.grace
        log.info("relay stopping", in_flight=len(flight.held), grace_s=self.options.grace)
        if flight.held:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flight.settled.wait(), timeout=self.options.grace)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        # What is still held was cut off mid-attempt or never started: its leases go back.
        held = list(flight.held.values())
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await self.fan_out.close()
        # Cancelling the recorder may cut off its write: that batch is written again with the
        # rest. Writing an outcome twice is harmless, as its lease token no longer matches.
        batch, self._results = self._recording + self._results, []
        if batch:
            await self._record(batch, deadline=deadline + 5.0)
        try:
            await self.store.release(held)
            await self.store.forget(self.relay_id)
        except TRANSIENT as exc:
            log.warning("could not hand back leases; they expire by themselves", error=str(exc))
        log.info("relay stopped", released=len(held), **self.tally.__dict__)

    def _describe(self) -> dict[str, object]:
        o = self.options
        return {
            "concurrency": o.concurrency,
            "per_endpoint": o.per_endpoint,
            "batch": o.batch,
            "ladder": list(self.settings.retry_ladder),
            "timeout_s": self.settings.timeout,
            "vacuum_every_s": o.vacuum_every,
            "summary_every_s": o.summary_every,
        }
