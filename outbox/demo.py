"""The demo's run: a verifying receiver, Stover writes, a relay in-process, and live progress."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TextIO

from outbox import receiver, render, signing
from outbox.config import Settings
from outbox.db import demo as demo_db
from outbox.db.activity import Activity
from outbox.db.store import Store
from outbox.relay import Options, Relay
from outbox.sender import Sender
from outbox.signing import USER_AGENT

# The seed ladder (0, 1 min, 5 min, 30 min, 2 h) squeezed into seconds so retries show at once.
LADDER = (0.0, 1.0, 2.0, 4.0, 8.0)
RELAY_OPTIONS = Options(concurrency=64, per_endpoint=64, batch=64, poll_interval=0.5, grace=2.0)
TIMEOUT = 5.0  # the demo's receiver answers at once; a shorter timeout keeps the settle bounded


@dataclass(frozen=True)
class Plan:
    """What the user asked the demo to do."""

    duration: float
    rate: float
    fail_rate: float


@dataclass
class Requests:
    """What the demo's receiver saw."""

    received: int = 0
    rejected: int = 0  # bad signature: 401
    failed_on_purpose: int = 0  # 500

    def add(self, seen: receiver.Seen) -> None:
        self.received += 1
        if seen.status == 401:
            self.rejected += 1
        elif seen.status == 500:
            self.failed_on_purpose += 1


@dataclass(frozen=True)
class Report:
    """The outcome of one demo run."""

    plan: Plan
    endpoint_id: str
    writes: int
    progress: demo_db.Progress
    requests: Requests
    settled: bool
    interrupted: bool
    wrote_for: float  # seconds of writes actually made


class Ticker:
    """Live progress on stderr: one line rewritten in place on a terminal, else a plain line
    every few seconds (and no control codes)."""

    def __init__(self, stream: TextIO, *, tty: bool, width: int = render.PIPE_WIDTH) -> None:
        self.stream = stream
        self.tty = tty
        self.width = width
        self.interval = 0.25 if tty else 0.5
        self._every = 3.0
        self._last = 0.0
        self._drawn = False

    def note(self, text: str) -> None:
        """A message of its own line, above the progress line."""
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def show(self, phase: str, elapsed: float, progress: demo_db.Progress, *, force: bool) -> None:
        line = render.shorten(progress_line(phase, elapsed, progress), self.width - 1)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        elif force or time.monotonic() - self._last >= self._every:
            self.stream.write(line + "\n")
            self._last = time.monotonic()
        self.stream.flush()

    def done(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")


def milliseconds(seconds: float | None) -> str:
    if seconds is None:
        return render.NONE
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.1f}s"


def progress_line(phase: str, elapsed: float, p: demo_db.Progress) -> str:
    return (
        f"{phase:<8} {elapsed:3.0f}s  events {p.captured}  delivered {p.delivered}  "
        f"retrying {p.retrying}  failed {p.failed}  p50 {milliseconds(p.p50_s)}"
    )


@dataclass
class Demo:
    """One demo run against the database at `url`; `endpoint_id` is set once its endpoint exists,
    so the caller can tidy up even after an interruption."""

    url: str
    settings: Settings
    plan: Plan
    endpoint_id: str | None = None
    requests: Requests = field(default_factory=Requests)
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, ticker: Ticker) -> Report:
        """Run the demo; Ctrl-C or SIGTERM ends the writes and the wait for retries early."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, self.interrupted.set)
        try:
            return await self._run(ticker)
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    async def _run(self, ticker: Ticker) -> Report:
        secret = signing.generate_secret()
        behaviour = receiver.Behaviour(secret=secret, fail_rate=self.plan.fail_rate)
        runner, port = await receiver.start(behaviour, self.requests.add, host="127.0.0.1", port=0)
        try:
            receiver_url = f"http://127.0.0.1:{port}/webhooks"
            self.endpoint_id = await asyncio.to_thread(
                demo_db.create_endpoint, self.url, receiver_url, secret
            )
            ticker.note(
                f"receiver: {receiver_url} (fails {self.plan.fail_rate:.0%} of requests)\n"
                f"endpoint: {self.endpoint_id} for every event type; retry ladder "
                f"{','.join(f'{s:g}' for s in LADDER)} s\n"
                f"writing {self.plan.rate:g} rows/s for {self.plan.duration:g}s (Ctrl-C stops)"
            )
            return await self._with_relay(self.endpoint_id, ticker)
        finally:
            await runner.cleanup()

    async def _with_relay(self, endpoint_id: str, ticker: Ticker) -> Report:
        settings = dataclasses.replace(
            self.settings,
            retry_ladder=LADDER,
            allow_private_networks=True,
            timeout=min(self.settings.timeout, TIMEOUT),
        )
        store = Store(self.url)
        await store.open()
        try:
            async with Sender(
                timeout=settings.timeout,
                allow_private_networks=True,
                max_connections=RELAY_OPTIONS.concurrency,
                max_per_host=RELAY_OPTIONS.concurrency,  # the relay caps per endpoint itself
                user_agent=USER_AGENT,
            ) as sender:
                relay = Relay(store, sender, settings, RELAY_OPTIONS)
                stop = asyncio.Event()
                relay_task = asyncio.create_task(relay.run(stop))
                try:
                    return await self._write_and_settle(endpoint_id, ticker, [relay_task])
                finally:
                    stop.set()
                    await relay_task
        finally:
            await store.close()

    async def _write_and_settle(
        self, endpoint_id: str, ticker: Ticker, helpers: Sequence[asyncio.Task[None]]
    ) -> Report:
        loop = asyncio.get_running_loop()
        activity = Activity()
        stop_writes = asyncio.Event()
        writer = asyncio.create_task(activity.run(self.url, rate=self.plan.rate, stop=stop_writes))
        started = loop.time()
        async with demo_db.Watch(self.url, endpoint_id) as watch:
            try:
                while loop.time() - started < self.plan.duration:
                    _surface_failures([writer, *helpers])
                    ticker.show("writing", loop.time() - started, await watch.read(), force=False)
                    if await self._pause(ticker.interval):
                        break
            finally:
                stop_writes.set()
                await writer
            wrote_for = loop.time() - started
            # Let the retries run out: the last failed delivery may still climb the whole ladder.
            deadline = loop.time() + sum(LADDER) + TIMEOUT + 10.0
            while True:
                _surface_failures(helpers)
                progress = await watch.read()
                settled = progress.pending == 0 and progress.waiting == 0
                if settled or loop.time() > deadline or self.interrupted.is_set():
                    break
                ticker.show("settling", loop.time() - started, progress, force=False)
                await self._pause(ticker.interval)
            ticker.show("done", loop.time() - started, progress, force=True)
            ticker.done()
        return Report(
            self.plan,
            endpoint_id,
            activity.total,
            progress,
            self.requests,
            settled,
            self.interrupted.is_set(),
            wrote_for,
        )

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds` for the next refresh; True when interrupted meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.interrupted.wait(), timeout=seconds)
        return self.interrupted.is_set()


def _surface_failures(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Raise the error of a helper task that stopped on its own."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            task.result()


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """The summary table's rows: what was written, captured, delivered and answered."""
    p, r = report.progress, report.requests
    return [
        ("rows written to stover.*", str(report.writes)),
        ("events captured", str(p.captured)),
        ("delivered", str(p.delivered)),
        ("  at the first attempt", str(p.first_try)),
        ("  after retries", str(p.delivered - p.first_try)),
        (f"failed after {len(LADDER)} attempts", str(p.failed)),
        ("still pending", str(p.pending)),
        ("HTTP attempts made", str(p.attempts)),
        ("receiver answered 500 on purpose", str(r.failed_on_purpose)),
        ("receiver answered 401 (bad signature)", str(r.rejected)),
        ("latency p50, event to delivered", milliseconds(p.p50_s)),
        ("latency p95, event to delivered", milliseconds(p.p95_s)),
    ]


def summary(report: Report) -> str:
    plan = report.plan
    head = (
        f"Summary: {report.wrote_for:.0f}s of writes at {plan.rate:g}/s; the receiver failed "
        f"{plan.fail_rate:.0%} of requests on purpose."
    )
    if report.interrupted:
        head += "\nInterrupted: writes and retries were cut short."
    columns = [render.Column("WHAT"), render.Column("COUNT", align=">")]
    return head + "\n\n" + render.table(columns, summary_rows(report))


def audit_text(audit: demo_db.Audit, number: int) -> str:
    """An audit query as people can paste it, followed by its result."""
    columns = [
        render.Column(name.upper(), align=">" if _numeric(audit.rows, i) else "<", flex=True)
        for i, name in enumerate(audit.columns)
    ]
    rows = [tuple(_cell(value) for value in row) for row in audit.rows]
    result = render.table(columns, rows) if rows else "(no rows)"
    return f"-- {number}. {audit.title}\n{audit.sql}\n\n{result}"


def _numeric(rows: Sequence[tuple[object, ...]], index: int) -> bool:
    values = [row[index] for row in rows if row[index] is not None]
    return bool(values) and all(
        isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values
    )


def _cell(value: object) -> str:
    if value is None:
        return render.NONE
    return str(value)
