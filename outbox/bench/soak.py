"""`soak`: minutes of steady business writes at 1,000 events/s; does delivery keep pace, does the
tail latency hold, do dead tuples in outbox.deliveries stay bounded."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from outbox.bench import writer
from outbox.bench.drain import drain_timeout
from outbox.bench.harness import (
    Bench,
    Figure,
    Progress,
    Report,
    at_most,
    median,
    wait_for,
)
from outbox.bench.procs import Child
from outbox.bench.receiver import Receiver
from outbox.db.benchdb import BenchDb

RATE, QUICK_RATE = 1_000.0, 200.0
MINUTES = 10.0
QUICK_SECONDS = 3.0
WARMUP = 2.0  # seconds of writes left out of the first window
# Dead tuples in outbox.deliveries climb between autovacuum's visits and drop at each one, so a
# run shows whether they stay bounded only once it spans several visits: a shorter run compares a
# climb with a later stretch of the same climb.
NAPTIMES_TO_JUDGE = 3


@dataclass(frozen=True)
class Sample:
    """The state of things at one moment of the soak."""

    at: float  # time.time()
    arrived: int
    pending: int
    dead_tuples: int
    autovacuums: int
    relay_rss_mb: float


class Sampler:
    """Takes a Sample every `every` seconds when called, and drains the receiver's records."""

    def __init__(self, db: BenchDb, rx: Receiver, relay: Child, every: float) -> None:
        self.db, self.rx, self.relay, self.every = db, rx, relay, every
        self.samples: list[Sample] = []
        self.records: list[tuple[str, float]] = []
        self._last = 0.0

    def __call__(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        self.relay.check()
        self.records.extend(self.rx.records())
        dead, _, autovacuums = self.db.dead_tuples()
        rss, _ = self.relay.memory()
        arrived = self.rx.count()
        self.samples.append(Sample(time.time(), arrived, self.db.pending(), dead, autovacuums, rss))


def _rate(arrivals: Sequence[float], start: float, end: float) -> float:
    return sum(1 for at in arrivals if start <= at < end) / (end - start) if end > start else 0.0


def _peak(samples: Sequence[Sample], start: float, end: float) -> int:
    return max((s.dead_tuples for s in samples if start <= s.at <= end), default=0)


def _p99_by_window(
    timed: Sequence[tuple[float, float]], start: float, end: float, window: float
) -> list[float]:
    """The p99 commit-to-arrival latency (ms) of each whole `window` of commits from `start`."""
    count = max(1, int((end - start) // window))
    buckets: list[list[float]] = [[] for _ in range(count)]
    for when, latency in timed:
        index = int((when - start) // window)
        if 0 <= index < count:
            buckets[index].append(latency * 1000)
    return [writer.percentile(b, 0.99) for b in buckets if b]


def dead_tuples_judged(seconds: float, naptime: float) -> bool:
    """Whether a soak of `seconds` spans enough of autovacuum's visits (every `naptime` seconds)
    for its dead-tuple growth to say anything."""
    return seconds >= NAPTIMES_TO_JUDGE * naptime


def _trend(p99s: Sequence[float]) -> float:
    """The median window p99 of the last third of the run over that of the first third: a tail
    that grows with time shows here, one window hit by a checkpoint or a neighbour does not."""
    third = max(1, len(p99s) // 3)
    first = median(p99s[:third])
    return median(p99s[-third:]) / first if first else float("nan")


def run(bench: Bench) -> Report:
    if bench.minutes is not None:
        seconds = bench.minutes * 60.0
    else:
        seconds = QUICK_SECONDS if bench.quick else MINUTES * 60.0
    rate = QUICK_RATE if bench.quick else RATE
    window = min(60.0, seconds / 3.0)
    progress = Progress("soak")
    with bench.database("soak") as url, BenchDb(url) as db, Receiver() as rx:
        db.add_endpoint(rx.url())
        with bench.relay(url) as relay:
            rx.record(on=True)
            # Every second: the relay vacuums every 10 s, and a coarser period that divides it
            # would see the dead-tuple sawtooth at the same phase each time, not at its peaks.
            sampler = Sampler(db, rx, relay, every=1.0)
            writes = writer.paced(url, rate, seconds, progress=progress, label="soak", tick=sampler)
            expected = len(writes.commits)

            def caught_up() -> bool:
                sampler()
                got = rx.count()
                progress(f"soak: {got:,}/{expected:,} arrived")
                return got >= expected and db.pending() == 0

            wait_for(
                caught_up, drain_timeout(expected), f"delivery of the soak's {expected:,} events"
            )
            sampler(force=True)
        timed = writer.arrivals(writes.commits, sampler.records, db.event_contacts())
        arrivals = sorted(when + latency for when, latency in timed)
        first = (writes.started + WARMUP, writes.started + WARMUP + window)
        last = (writes.finished - window, writes.finished)
        early = [lat * 1000 for when, lat in timed if first[0] <= when < first[1]]
        late = [lat * 1000 for when, lat in timed if last[0] <= when < last[1]]
        rate_first, rate_last = _rate(arrivals, *first), _rate(arrivals, *last)
        decay = 1.0 - rate_last / rate_first if rate_first else float("nan")
        p99_first, p99_last = writer.percentile(early, 0.99), writer.percentile(late, 0.99)
        p99_growth = p99_last / p99_first if p99_first else float("nan")
        by_window = _p99_by_window(timed, writes.started + WARMUP, writes.finished, window)
        trend = _trend(by_window)
        samples = sampler.samples
        third = (writes.finished - writes.started) / 3.0
        dead_early = _peak(samples, writes.started, writes.finished - third)
        dead_late = _peak(samples, writes.finished - third, writes.finished)
        dead_growth = dead_late / max(dead_early, 1)
        naptime = db.autovacuum_naptime()
        judged = dead_tuples_judged(seconds, naptime)
        figures: dict[str, Figure] = {
            "seconds": round(seconds, 1),
            "events": expected,
            "offered_per_s": rate,
            "written_per_s": writes.rate,
            "window_s": round(window, 1),
            "first_window_per_s": rate_first,
            "last_window_per_s": rate_last,
            "throughput_decay": decay,
            "first_window_p50_ms": writer.percentile(early, 0.5),
            "first_window_p99_ms": p99_first,
            "last_window_p50_ms": writer.percentile(late, 0.5),
            "last_window_p99_ms": p99_last,
            "p99_growth": p99_growth,
            "p99_by_window_ms": " · ".join(f"{p:.1f}" for p in by_window),
            "p99_worst_window_ms": max(by_window, default=float("nan")),
            "p99_trend": trend,
            "dead_tuples_peak_early": dead_early,
            "dead_tuples_peak_late": dead_late,
            "dead_tuples_growth": dead_growth,
            "autovacuum_naptime_s": naptime,
            "autovacuums": samples[-1].autovacuums if samples else 0,
            "max_pending": max((s.pending for s in samples), default=0),
            "relay_rss_mb_first": samples[0].relay_rss_mb if samples else float("nan"),
            "relay_rss_mb_last": samples[-1].relay_rss_mb if samples else float("nan"),
        }
        notes = [
            f"{writes.connections} writer connections, one contact per durable transaction",
            f"windows: the first {window:g} s (after {WARMUP:g} s of warm-up) and the last "
            f"{window:g} s of writing",
            "throughput: deliveries arriving per second in each window; p99: commit to arrival "
            "of the events committed in each window",
            f"p99 by window: every {window:g} s of commits after the warm-up; p99_trend (the "
            "target for a stable tail) = median window p99 of the last third / of the first "
            "third; p99_growth = last window / first window, which one slow window swings",
            "dead tuples: n_dead_tup of outbox.deliveries sampled every "
            f"{sampler.every:g} s; growth = peak in the last third / peak before it",
        ]
        if not judged:
            notes.append(
                f"dead-tuple growth not judged: the run is shorter than {NAPTIMES_TO_JUDGE} of "
                f"autovacuum's visits ({NAPTIMES_TO_JUDGE * naptime:g} s at autovacuum_naptime "
                f"{naptime:g} s), so its peaks are points on one climb"
            )
        notes += writer.shortfall(writes, rate)
        return bench.report(
            db,
            "soak",
            f"{seconds / 60:g} minutes of writes at {rate:,.0f} events/s",
            figures=figures,
            targets={
                "throughput_decay": at_most(decay, 0.10),
                "p99_trend": at_most(trend, 1.5),
                "dead_tuples_growth": at_most(dead_growth if judged else float("nan"), 1.5),
            },
            notes=notes,
        )
