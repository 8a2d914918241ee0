"""The claim loop's turns: fan out, claim what fits, then go on at once, gather a trickle, or say
idle and sleep until work is due, new events commit, or a wake-up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from outbox.db.store import Claimed, Store
from outbox.relay.fanout import FanOut
from outbox.relay.flight import Flight


@dataclass(frozen=True)
class Pacing:
    """How the loop spaces its turns."""

    batch: int = 64  # deliveries claimed per query (at most the per-endpoint cap)
    poll_interval: float = 1.0  # the longest an idle relay goes without looking for due work
    linger: float = 0.002  # while work trickles in: a turn starts this often, gathering it
    quiet: float = 0.05  # how long a trickle may dry up before the relay says it is idle
    lease: float = 45.0  # seconds a claim holds its deliveries


@dataclass
class LoopState:
    """Where the loop stands between turns."""

    idle: bool = False  # said idle (in outbox.relays): fan-out steps and operators NOTIFY it
    announced: float = 0.0  # when it last said so
    quiet_since: float = 0.0  # when a trickle's claims started coming back empty (0: they aren't)
    due_at: float = 0.0  # while idle: when the earliest pending delivery comes due
    turn_started: float = 0.0
    draining: bool = False  # more was due than the claims could take
    # Busy endpoints whose skipping made a claim come back empty, and until when to believe it.
    fruitless: tuple[frozenset[str], float] = field(default=(frozenset(), 0.0))


class ClaimLoop:
    """Turns of one relay's loop; `turn()` is one of them."""

    def __init__(
        self,
        store: Store,
        fan_out: FanOut,
        flight: Flight,
        pacing: Pacing,
        *,
        relay_id: str,
        nudge: asyncio.Event,
    ) -> None:
        self.store = store
        self.fan_out = fan_out
        self.flight = flight
        self.pacing = pacing
        self.relay_id = relay_id
        self.nudge = nudge  # set by wake-ups, freed slots and fan-out catching up
        self.state = LoopState()

    async def turn(self, stop: asyncio.Event) -> None:
        """Fan out, then claim what fits; or sleep until work is due or a wake-up."""
        state = self.state
        state.turn_started = time.monotonic()
        woken = self.nudge.is_set()  # a wake-up (NOTIFY, a freed slot), not the timer
        self.nudge.clear()
        flight = self.flight
        if flight.room <= 0:
            await self.wait(self.pacing.poll_interval, stop)
            return
        # Endpoints at their cap are skipped, and the claim is sized so nothing has to be handed
        # back (Flight.claim_limit).
        busy = flight.busy_endpoints()
        limit = flight.claim_limit(self.pacing.batch)
        fanned = await self.fan_out.before_claim(self.nudge.set)
        skip_set, skip_until = state.fruitless
        fruitless = busy and frozenset(busy) == skip_set and time.monotonic() < skip_until
        if fruitless and not fanned.deliveries:
            # The last claim that skipped these same busy endpoints found nothing else due.
            # Asking again on every completed attempt would find the same nothing, a query
            # each time: wait until one of them frees up, a wake-up, new events, or the poll.
            await self.wait(min(skip_until - time.monotonic(), self.fan_out.pace.idle), stop)
            return
        if state.idle and not woken and not fanned.deliveries and time.monotonic() < state.due_at:
            # An idle look found no new event, and nothing pending comes due yet.
            await self.wait(self._idle_wait(), stop)
            return
        claimed = await self.store.claim(limit, self.pacing.lease, busy)
        await self._hand_out(claimed)
        await self._after_claim(len(claimed), limit, busy, stop)

    async def _hand_out(self, claimed: list[Claimed]) -> None:
        overflow = self.flight.dispatch(claimed)
        if overflow:
            await self.store.release(overflow)

    async def _after_claim(
        self, claimed: int, limit: int, busy: list[str], stop: asyncio.Event
    ) -> None:
        """Go on at once, gather a trickle, or say idle and sleep: by what the claim found."""
        state, pacing = self.state, self.pacing
        if claimed == limit:
            state.draining = True  # more was due than the claim could take
            await self._say_idle(False)  # polling anyway: no NOTIFY needed
            return
        if busy:
            # Short because endpoints at their cap were skipped: says nothing of a backlog.
            state.fruitless = (frozenset(busy), time.monotonic() + pacing.poll_interval)
            return
        state.draining = False  # short with no endpoint skipped: caught up
        now = time.monotonic()
        if claimed:
            # Work is arriving: gather it by a turn every `linger`.
            state.quiet_since = 0.0
            await self._say_idle(False)
            await self._pause(self._linger_left(), stop)
            return
        if not state.idle and now - (state.quiet_since or now) < pacing.quiet:
            # A trickle does not end at its first empty claim.
            state.quiet_since = state.quiet_since or now
            await self._pause(self._linger_left(), stop)
            return
        if not state.idle:
            # Say idle first, then look once more: work that arrived before the announcement is
            # found by this look, later work sends a NOTIFY (or the idle looks find it).
            await self._say_idle(True)
            return
        if time.monotonic() - state.announced > 20.0:
            await self.store.announce(self.relay_id, idle=True)
            state.announced = time.monotonic()
        due = await self.store.next_due()
        # Rows that look due but were not claimable are locked by another relay's claim for a
        # moment; look again shortly rather than spin.
        wait = pacing.poll_interval if due is None else min(pacing.poll_interval, max(due, 0.05))
        state.due_at = time.monotonic() + wait
        await self.wait(self._idle_wait(), stop)

    async def _say_idle(self, idle: bool) -> None:
        if self.state.idle != idle:
            await self.store.announce(self.relay_id, idle=idle)
            self.state.idle = idle
            if idle:
                self.state.announced = time.monotonic()

    def _idle_wait(self) -> float:
        """An idle relay's sleep: until a pending delivery comes due, but looking for newly
        committed events every `Pace.idle` seconds meanwhile (writers send no wake-up)."""
        return min(self.fan_out.pace.idle, max(self.state.due_at - time.monotonic(), 0.0))

    def _linger_left(self) -> float:
        """What is left of `linger` since this turn began: while work trickles in, turns start
        every `linger` seconds however long the fan-out and the claim took."""
        return max(self.pacing.linger - (time.monotonic() - self.state.turn_started), 0.0)

    async def wait(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep until nudged or `seconds` pass. Each turn clears the nudge before its claim, so
        a wake-up that arrives while the claim runs is not lost."""
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.nudge.wait(), timeout=max(seconds, 0.0))

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep a few milliseconds; wake-ups do not cut it short (that is its point)."""
        if not stop.is_set():
            await asyncio.sleep(seconds)
