"""Part of `accounts`: a busy account beside a quiet one, one relay delivering for both.

Account A (20 endpoints) has a backlog of due deliveries; account B (one endpoint) writes a
contact 20 times a second, each raising one event. Each round measures, in turn: B's commit to
arrival with A idle, A's drain alone, A's drain again while B writes, and B while A imports 100k
contacts in one statement (two million deliveries to fan out and send). Fair claiming keeps B's
latency near what it is with A idle, and costs A's drain little; fanning a large transaction out
in parts lets B's events pass it. B's time is also told in its three stages (`Stages`), with A
idle and while A drains, so a run shows which of them A's work stretches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from outbox.bench import drain, writer
from outbox.bench.harness import (
    Bench,
    Figure,
    Progress,
    Target,
    at_least,
    at_most,
    median,
    wait_for,
)
from outbox.bench.procs import Child
from outbox.bench.receiver import Receiver
from outbox.db.benchdb import BenchDb
from outbox.errors import OutboxError

A, B = 1, 2  # account ids (stover.accounts; outbox's account_id is their text)
A_ENDPOINTS = 20
BACKLOG, QUICK_BACKLOG = 100_000, 400  # A's due deliveries per drain
B_RATE = 20.0  # B's events a second
B_IDLE_SECONDS, QUICK_B_IDLE_SECONDS = 10.0, 1.0
B_PORT = A_ENDPOINTS  # the receiver's port for B's endpoint; A's are 0..19
P99_MS_TARGET = 1000.0
IMPORT_ROWS, QUICK_IMPORT_ROWS = 100_000, 500  # A's contacts, one INSERT
IMPORT_SECONDS, QUICK_IMPORT_SECONDS = 15.0, 1.0  # how long B writes beside the import
IMPORT_P99_MS_TARGET = 2000.0
P99_RATIO_TARGET = 3.0
DRAIN_RATIO_TARGET = 0.90


@dataclass(frozen=True)
class Stages:
    """B's path in three stages, each the p99 in ms over the measured events: from the event's
    transaction to its delivery written by a fan-out step, to its first attempt's start (the
    claim and the hand-over to a worker), to its arrival at the receiver (the request)."""

    fan_out: float
    claim: float
    send: float


STAGES = tuple(f.name for f in fields(Stages))


def stages(
    path: list[tuple[str, float, float, float | None]],
    records: list[tuple[str, float]],
    measured: set[str],
) -> Stages:
    """`Stages` over the events in `measured`, from `BenchDb.account_path` and the receiver's
    (event id, arrival) records; an event not yet attempted or not arrived is left out."""
    begun = {event_id: made for event_id, made, _, _ in path if event_id in measured}
    parts = writer.stage_times(path, records, begun)
    return Stages(*(writer.percentile(part, 0.99) for part in parts))


@dataclass
class Rounds:
    a_alone: list[float] = field(default_factory=list)  # A's deliveries/s
    a_beside_b: list[float] = field(default_factory=list)
    b_idle_ms: list[float] = field(default_factory=list)  # B's p99, commit to arrival
    b_busy_ms: list[float] = field(default_factory=list)
    b_busy_events: list[int] = field(default_factory=list)
    b_idle_stages: list[Stages] = field(default_factory=list)
    b_busy_stages: list[Stages] = field(default_factory=list)
    b_import_ms: list[float] = field(default_factory=list)  # B's p99 while A's import goes out
    b_import_events: list[int] = field(default_factory=list)


@dataclass
class _Setup:
    """What every phase of a round uses."""

    url: str
    db: BenchDb
    rx: Receiver
    relay: Child
    progress: Progress
    backlog: int

    @property
    def events(self) -> int:
        return self.backlog // A_ENDPOINTS

    def b_p99(self, writes: writer.Writes) -> tuple[float, int, Stages]:
        """B's p99 commit-to-arrival in ms over the events `writes` committed, how many, and
        its stages."""
        expected = len(writes.commits)

        def arrived() -> bool:
            self.relay.check()
            return self.rx.count([B_PORT]) >= expected

        wait_for(arrived, drain.drain_timeout(expected), f"B's {expected} deliveries")
        records, contacts = self.rx.records(), self.db.event_contacts()
        timed = writer.arrivals(writes.commits, records, contacts)
        latencies = [lat * 1000.0 for _, lat in timed]
        committed = {contact for contact, _ in writes.commits}
        measured = {event_id for event_id, contact in contacts.items() if contact in committed}
        path = stages(self.db.account_path(str(B)), records, measured)
        return writer.percentile(latencies, 0.99), len(latencies), path

    def backlog_due(self) -> None:
        """A's backlog: events of account A fanned out to its endpoints, the relay woken."""
        self.db.insert_account_events(self.events, accounts=1, offset=0)  # account '1'
        self.db.fan_out()
        self.db.wake()

    def a_drain(self, label: str, start: Callable[[], None]) -> drain.Round:
        return drain.burst(
            self.db, self.rx, self.relay, self.progress, events=self.events,
            expected=self.backlog, label=label, ports=list(range(A_ENDPOINTS)), start=start,
        )  # fmt: skip


def _b_alone(setup: _Setup, seconds: float, label: str) -> tuple[float, Stages]:
    setup.rx.reset()
    setup.rx.record(on=True)
    setup.rx.records()
    writes = writer.paced(
        setup.url, B_RATE, seconds, progress=setup.progress, label=label, account=B
    )
    p99, _, path = setup.b_p99(writes)
    setup.rx.record(on=False)
    return p99, path


class _BWriter:
    """B writing `seconds` of contacts in a thread of its own (the caller's thread measures)."""

    def __init__(self, setup: _Setup, seconds: float, label: str) -> None:
        self.seconds = seconds
        self.writes: list[writer.Writes] = []
        self.failed: list[BaseException] = []

        def write() -> None:
            try:
                quiet = Progress("accounts")  # the caller reports progress
                self.writes.append(
                    writer.paced(setup.url, B_RATE, seconds, progress=quiet, label=label, account=B)
                )
            except BaseException as exc:  # raised in the caller's thread by done()
                self.failed.append(exc)

        self.thread = threading.Thread(target=write, daemon=True)

    def done(self) -> writer.Writes:
        self.thread.join(self.seconds + 120)
        if self.failed:
            raise self.failed[0]
        if not self.writes:
            raise OutboxError("B's writer did not finish")
        return self.writes[0]


def _a_beside_b(setup: _Setup, seconds: float, label: str) -> tuple[float, float, int, Stages]:
    """A's drain while B writes for `seconds` from its start: A's rate, B's p99 over the events
    committed while A's deliveries were arriving, and how many those were."""
    setup.rx.record(on=True)
    setup.rx.records()
    b = _BWriter(setup, seconds, label)

    def start() -> None:
        setup.backlog_due()
        b.thread.start()

    busy = setup.a_drain(label, start)
    during = writer.Writes(
        commits=[
            (contact, at)
            for contact, at in b.done().commits
            if busy.window.first <= at <= busy.window.last
        ]
    )
    p99, count, path = setup.b_p99(during)
    setup.rx.record(on=False)
    return busy.rate, p99, count, path


def _b_beside_import(setup: _Setup, rows: int, seconds: float, label: str) -> tuple[float, int]:
    """B writes for `seconds` while A imports `rows` contacts in one statement: B's p99 over the
    events it committed after the import did, and how many those were. Then A's endpoints are
    switched off while the outbox is emptied, and on again."""
    setup.rx.reset()
    setup.rx.record(on=True)
    setup.rx.records()
    b = _BWriter(setup, seconds, label)
    b.thread.start()
    setup.progress(f"{label}: A imports {rows:,} contacts")
    setup.db.import_contacts(rows, account=A)
    imported = time.time()
    after = writer.Writes(commits=[(c, at) for c, at in b.done().commits if at >= imported])
    p99, count, _ = setup.b_p99(after)
    setup.rx.record(on=False)
    # Emptying the outbox under a fan-out step can deadlock with it (TRUNCATE takes the tables
    # one by one): with A's endpoints off, the import's last parts go by writing nothing.
    setup.db.enable_account(str(A), on=False)
    wait_for(setup.db.fanned_out, 300.0, "the rest of A's import fanned out")
    time.sleep(1.0)  # the relay's attempts in flight finish and are recorded
    setup.db.reset_outbox()
    setup.db.enable_account(str(A), on=True)
    return p99, count


def measure(
    bench: Bench, url: str, progress: Progress
) -> tuple[dict[str, Figure], dict[str, Target], list[str]]:
    """Set the two accounts up in `url`'s database (after the fan-out part) and run the rounds."""
    backlog = QUICK_BACKLOG if bench.quick else BACKLOG
    idle_seconds = QUICK_B_IDLE_SECONDS if bench.quick else B_IDLE_SECONDS
    rounds = bench.rounds()
    got = Rounds()
    with BenchDb(url) as db, Receiver(ports=A_ENDPOINTS + 1) as rx:
        db.reset_outbox()
        db.set_account_endpoints(0, accounts=1)  # none left from the fan-out part
        db.add_accounts(2)
        for port in range(A_ENDPOINTS):
            db.add_account_endpoint(rx.url(port), str(A))
        db.add_account_endpoint(rx.url(B_PORT), str(B))
        with bench.relay(url, label="accounts-relay") as relay:
            setup = _Setup(url, db, rx, relay, progress, backlog)
            for index in range(rounds):
                label = f"round {index + 1}/{rounds}"
                idle, path = _b_alone(setup, idle_seconds, f"B alone, {label}")
                got.b_idle_ms.append(idle)
                got.b_idle_stages.append(path)
                progress.step(f"{label}, B alone: p99 {idle:,.1f} ms")
                alone = setup.a_drain(f"A alone, {label}", setup.backlog_due)
                got.a_alone.append(alone.rate)
                progress.step(f"{label}, A alone: {alone.rate:,.0f}/s")
                # B writes for as long as A's drain took alone, starting with it.
                span = max(1.0, alone.window.last - alone.window.first)
                rate, p99, count, path = _a_beside_b(setup, span, f"A beside B, {label}")
                got.a_beside_b.append(rate)
                got.b_busy_stages.append(path)
                got.b_busy_ms.append(p99)
                got.b_busy_events.append(count)
                progress.step(
                    f"{label}, A beside B: {rate:,.0f}/s; B's p99 {p99:,.1f} ms over {count}"
                )
                p99, count = _b_beside_import(
                    setup,
                    QUICK_IMPORT_ROWS if bench.quick else IMPORT_ROWS,
                    QUICK_IMPORT_SECONDS if bench.quick else IMPORT_SECONDS,
                    f"A importing, {label}",
                )
                got.b_import_ms.append(p99)
                got.b_import_events.append(count)
                progress.step(f"{label}, A importing: B's p99 {p99:,.1f} ms over {count}")
    return _report(got, backlog, idle_seconds, rounds)


def _report(
    got: Rounds, backlog: int, idle_seconds: float, rounds: int
) -> tuple[dict[str, Figure], dict[str, Target], list[str]]:
    drain_ratio = median([b / a for a, b in zip(got.a_alone, got.a_beside_b, strict=True) if a])
    b_idle, b_busy = median(got.b_idle_ms), median(got.b_busy_ms)
    p99_ratio = median(
        [busy / idle for idle, busy in zip(got.b_idle_ms, got.b_busy_ms, strict=True) if idle]
    )
    figures: dict[str, Figure] = {
        "a_backlog_deliveries": backlog,
        "a_alone_per_s": median(got.a_alone),
        "a_beside_b_per_s": median(got.a_beside_b),
        "a_drain_ratio": drain_ratio,
        "b_p99_ms_a_idle": b_idle,
        "b_p99_ms_a_draining": b_busy,
        "b_p99_ratio": p99_ratio,
        "b_events_measured_per_round": int(median([float(n) for n in got.b_busy_events])),
        **{
            f"b_{stage}_p99_ms_{when}": median([getattr(s, stage) for s in kept])
            for when, kept in (("a_idle", got.b_idle_stages), ("a_draining", got.b_busy_stages))
            for stage in STAGES
        },
        "b_p99_ms_a_importing": median(got.b_import_ms),
        "b_events_measured_importing": int(median([float(n) for n in got.b_import_events])),
    }
    targets: dict[str, Target] = {
        "b_p99_ms_a_draining": at_most(b_busy, P99_MS_TARGET),
        "b_p99_ratio": at_most(p99_ratio, P99_RATIO_TARGET),
        "a_drain_ratio": at_least(drain_ratio, DRAIN_RATIO_TARGET),
        "b_p99_ms_a_importing": at_most(median(got.b_import_ms), IMPORT_P99_MS_TARGET),
    }
    notes = [
        f"fairness: account A has {A_ENDPOINTS} endpoints and a backlog of {backlog:,} due "
        f"deliveries; account B one endpoint and {B_RATE:g} contacts written a second; one relay",
        f"each of {rounds} rounds: B alone for {idle_seconds:g} s, A's drain alone, A's drain "
        "again with B writing; B's p99 over the events it committed during A's drain; medians of "
        "per-round ratios",
        "B's stages (p99s, ms): fan_out from its event's transaction to its delivery written, "
        "claim to its first attempt's start, send to its arrival at the receiver",
        f"import: A inserts {IMPORT_ROWS:,} contacts in one statement "
        f"({IMPORT_ROWS * A_ENDPOINTS:,} deliveries) while B writes for {IMPORT_SECONDS:g} s; "
        "B's p99 over the events it committed after the import did",
    ]
    return figures, targets, notes
