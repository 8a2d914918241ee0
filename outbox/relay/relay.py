"""One relay process wired together: workers that make attempts, the claim loop that feeds them,
the recorder and the background duties; `run_once()` for one batch, `run()` until stopped, and
a graceful shutdown that hands back what it could not finish."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from outbox.config import Settings
from outbox.db.store import TRANSIENT, Claimed, Store
from outbox.relay import duties
from outbox.relay.attempts import Attempts, Observer, Tally, slot_reached
from outbox.relay.claimloop import ClaimLoop, Pacing
from outbox.relay.fanout import FanOut, Pace
from outbox.relay.flight import Flight
from outbox.relay.recorder import Recorder
from outbox.sender import Sender

log = structlog.get_logger("outbox.relay")


@dataclass(frozen=True)
class Options:
    """How hard one relay process works."""

    concurrency: int = 256  # attempts in flight at once, across all endpoints
    per_endpoint: int = 128  # attempts in flight at once to any one endpoint
    batch: int = 64  # deliveries claimed per query (at most per_endpoint)
    poll_interval: float = 1.0  # the longest an idle relay sleeps without a wake-up
    linger: float = 0.002  # while work trickles in: how often a turn starts, gathering it
    quiet: float = 0.05  # how long a trickle may dry up before the relay says it is idle
    grace: float = 10.0  # on shutdown, how long in-flight attempts may run before being cut off
    vacuum_every: float = 10.0  # seconds between VACUUMs of deliveries while draining (0: off)
    summary_every: float = 10.0  # seconds between the info lines that count attempts (0: off)


def new_relay_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Relay:
    """One relay process's work. `run_once()` does one batch; `run()` runs until stopped."""

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
        self.settings = settings
        self.options = opts = options or Options()
        self.relay_id = new_relay_id()
        self.fan_out = FanOut(store, pace)
        self.attempts = Attempts(sender, settings, clock, observer)
        self.recorder = Recorder(store, self.attempts.take_gone, settings.breaker)
        self.flight = Flight(opts.concurrency, opts.per_endpoint)
        pacing = Pacing(
            opts.batch, opts.poll_interval, opts.linger, opts.quiet, settings.lease_seconds
        )
        self._nudge = asyncio.Event()
        self.loop = ClaimLoop(
            store, self.fan_out, self.flight, pacing, relay_id=self.relay_id, nudge=self._nudge
        )

    @property
    def tally(self) -> Tally:
        return self.attempts.tally

    async def run_once(self, limit: int | None = None) -> Tally:
        """Fan out what has committed, then claim one batch of due deliveries, send them all,
        and record the outcomes."""
        await self.fan_out.catch_up()
        flight = self.flight
        batch = flight.claim_limit(limit or self.options.batch)
        claimed = await self.store.claim(batch, self.settings.lease_seconds)
        flight.observe(claimed)
        try:
            results = await asyncio.gather(*(self.attempts.attempt(c) for c in claimed))
        except BaseException:
            # Interrupted (a signal, a cancel): what it held is due again at once, not at lease end.
            with contextlib.suppress(*TRANSIENT):
                await self.store.release(claimed)
            raise
        tally = Tally()
        for result in results:
            tally.add(result)
        if results:
            await self.recorder.record(list(results))
        return tally

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then shut down gracefully."""
        opts = self.options
        workers = [asyncio.create_task(self._worker()) for _ in range(opts.concurrency)]
        helpers = [
            asyncio.create_task(duties.listen_for_wake_ups(self.store.url, self._nudge.set)),
            asyncio.create_task(self.recorder.run()),
            asyncio.create_task(
                duties.vacuum_while_draining(
                    self.store, self.recorder, lambda: self.loop.state.draining, opts.vacuum_every
                )
            ),
            asyncio.create_task(
                duties.summarize(self.tally, self.fan_out, self.flight, opts.summary_every)
            ),
            asyncio.create_task(self._nudge_on(stop)),
        ]
        backoff = 0.2
        log.info("relay started", relay_id=self.relay_id, **self._describe())
        try:
            while not stop.is_set():
                try:
                    await self.loop.turn(stop)
                    backoff = 0.2
                except TRANSIENT as exc:
                    log.warning("database unavailable; retrying", error=str(exc), retry_in=backoff)
                    self.loop.state.idle = False
                    await self.loop.wait(backoff, stop)
                    backoff = min(backoff * 2, 10.0)
        finally:
            await self._shutdown(workers, helpers)

    async def _worker(self) -> None:
        """Makes attempts one after another. `concurrency` of these run for the relay's life:
        a task per attempt measured ~3 us more CPU per delivery. A delivery stays in `held`
        until its outcome is queued for recording, so one cut off at shutdown is handed back."""
        flight, attempts, recorder = self.flight, self.attempts, self.recorder
        loop = asyncio.get_running_loop()
        send = attempts.sender.send
        while True:
            if flight.queue:
                c = flight.queue.popleft()
            else:
                waiter: asyncio.Future[Claimed] = loop.create_future()
                flight.idle.append(waiter)
                c = await waiter
            if c.slot is not None:
                await slot_reached(c)  # its endpoint's rate limit lets it start then
                if time.monotonic() > c.give_up_at:
                    await self._hand_back(c)
                    continue
            # attempt()'s steps inline: one coroutine less to resume at every wake-up
            try:
                body, headers, started = attempts.prepare(c)
            except Exception as exc:
                result = attempts.unsendable(c, exc)
            else:
                try:
                    result = attempts.finish(c, started, await send(c.url, body, headers))
                except Exception as exc:
                    log.exception("attempt failed inside the relay", delivery_id=c.delivery_id)
                    result = attempts.broken(c, started, exc)
            recorder.add(result)
            if flight.settle(c):
                self._nudge.set()  # only a claim held back by a cap needs waking
            # A worker waiting for its next delivery keeps nothing of its last: with events of
            # 1 MB, `concurrency` idle workers would otherwise hold hundreds of MB between them.
            del c, result
            body = b""

    async def _hand_back(self, c: Claimed) -> None:
        """Release a rate-limited delivery this relay came to too late for its slot (its event
        loop was held up): due again now, it is claimed for a later slot."""
        with contextlib.suppress(*TRANSIENT):
            await self.store.release([c])
        if self.flight.settle(c):
            self._nudge.set()

    async def _nudge_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._nudge.set()

    async def _shutdown(
        self, workers: list[asyncio.Task[None]], helpers: list[asyncio.Task[None]]
    ) -> None:
        flight = self.flight
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
        await self.recorder.flush(deadline + 5.0)
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
            "breaker_after": self.settings.breaker.after,
            "breaker_probe_interval_s": [
                self.settings.breaker.first_probe,
                self.settings.breaker.longest_probe,
            ],
            "disable_after_s": self.settings.disable_after.total_seconds(),
        }
