"""`backlog`: the drain rate with a million deliveries due against ten thousand, and the relay's
memory while it works through the big one and through events of 1 MB each."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from outbox.bench import drain
from outbox.bench.harness import (
    Bench,
    Progress,
    Report,
    at_least,
    at_most,
    interleave,
    median,
    ratio,
    wait_for,
)
from outbox.bench.receiver import Receiver, Window
from outbox.db.benchdb import BenchDb

BIG, SMALL, MEASURED = 1_000_000, 10_000, 10_000
QUICK_BIG, QUICK_SMALL, QUICK_MEASURED = 20_000, 1_000, 1_000
SEED_BATCH = 50_000
# Events of about 1 MB (within the default OUTBOX_MAX_PAYLOAD_BYTES of 1 MiB once wrapped), enough
# of them to fill every cache the relay keeps many times over.
LARGE_EVENTS, QUICK_LARGE_EVENTS, LARGE_EVENT_BYTES = 300, 60, 1_000_000
LARGE_BATCH = 10


@dataclass(frozen=True)
class Sized:
    big: int
    small: int
    measured: int  # deliveries timed per round, the first ones out of each backlog


def seed(url: str, count: int, progress: Progress) -> None:
    """Make `count` deliveries due, in batches on one connection per CPU, then VACUUM ANALYZE
    (as autovacuum would have done while a real backlog built up)."""
    batches = [min(SEED_BATCH, count - start) for start in range(0, count, SEED_BATCH)]
    done = 0

    def insert(size: int) -> int:
        with BenchDb(url) as db:
            db.insert_events(size)
        return size

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for size in pool.map(insert, batches):
            done += size
            progress.step(f"seeding the big backlog: {done:,}/{count:,} due")
    with BenchDb(url) as db:
        db.vacuum_analyze()


def timed_drain(
    bench: Bench,
    url: str,
    receiver: Receiver,
    progress: Progress,
    *,
    label: str,
    expected: int,
    settled: drain.Settled,
) -> tuple[Window, float]:
    """Start a relay on a backlog that is already due, stop it once `expected` arrived and
    `settled()` holds; returns the arrivals and the relay's peak RSS in MiB."""
    receiver.reset()
    with bench.relay(url, label=label, idle=False) as relay:

        def finished() -> bool:
            relay.check()
            got = receiver.count()
            progress(f"{label}: {got:,}/{expected:,} received")
            return got >= expected and settled()

        wait_for(finished, drain.drain_timeout(expected), f"{label} ({expected:,} deliveries)")
        peak = relay.memory()[1]
    return receiver.window(), peak


def large_events(bench: Bench, receiver: Receiver, progress: Progress, count: int) -> float:
    """The relay's peak RSS in MiB while it delivers `count` events of about 1 MB each."""
    with bench.database("backlog_large") as url, BenchDb(url) as db:
        db.add_endpoint(receiver.url())
        for start in range(0, count, LARGE_BATCH):
            db.insert_large_events(min(LARGE_BATCH, count - start), LARGE_EVENT_BYTES)
            progress.step(f"events of 1 MB: {start + LARGE_BATCH:,}/{count:,} due")
        _, peak = timed_drain(
            bench, url, receiver, progress, label=f"{count:,} events of 1 MB",
            expected=count, settled=lambda: db.pending() == 0,
        )  # fmt: skip
        progress.step(f"{count:,} events of 1 MB delivered, relay peak RSS {peak:,.0f} MiB")
    return peak


def run(bench: Bench) -> Report:
    size = (
        Sized(QUICK_BIG, QUICK_SMALL, QUICK_MEASURED)
        if bench.quick
        else Sized(BIG, SMALL, MEASURED)
    )
    rounds = bench.rounds()
    progress = Progress("backlog")
    with (
        bench.database("backlog_big") as big_url,
        bench.database("backlog_small") as small_url,
        BenchDb(big_url) as big,
        BenchDb(small_url) as small,
        Receiver() as rx,
    ):
        big.add_endpoint(rx.url())
        small.add_endpoint(rx.url())
        started = time.monotonic()
        seed(big_url, size.big, progress)
        seed_s = time.monotonic() - started
        peaks: list[float] = []

        def from_big(index: int) -> Window:
            window, peak = timed_drain(
                bench, big_url, rx, progress, label=f"{size.big:,} due, round {index + 1}",
                expected=size.measured, settled=lambda: True,
            )  # fmt: skip
            peaks.append(peak)
            progress.step(f"{size.big:,} due, round {index + 1}: {window.rate:,.0f}/s")
            return window

        def from_small(index: int) -> Window:
            small.insert_events(size.small)
            window, peak = timed_drain(
                bench, small_url, rx, progress, label=f"{size.small:,} due, round {index + 1}",
                expected=size.measured, settled=lambda: small.pending() == 0,
            )  # fmt: skip
            peaks.append(peak)
            progress.step(f"{size.small:,} due, round {index + 1}: {window.rate:,.0f}/s")
            return window

        big_rounds, small_rounds = interleave(rounds, from_big, from_small)
        large_count = QUICK_LARGE_EVENTS if bench.quick else LARGE_EVENTS
        large_peak = large_events(bench, rx, progress, large_count)
        share = ratio([w.rate for w in big_rounds], [w.rate for w in small_rounds])
        peak = max(peaks)
        figures = {
            "big_due": size.big,
            "small_due": size.small,
            "measured_per_round": size.measured,
            "rounds": rounds,
            "big_per_s": median([w.rate for w in big_rounds]),
            "small_per_s": median([w.rate for w in small_rounds]),
            "ratio_big_to_small": share,
            "relay_peak_rss_mb": peak,
            "large_events": large_count,
            "relay_peak_rss_mb_1mb_events": large_peak,
            "seed_s": seed_s,
        }
        notes = [
            f"each round starts a relay on a backlog already due and times its first "
            f"{size.measured:,} deliveries (first to last arrival); big and small alternate",
            "the big backlog is seeded in bulk SQL and VACUUM ANALYZEd before the first round",
            "relay_peak_rss_mb: the largest VmHWM of any relay process in the backlog rounds",
            f"relay_peak_rss_mb_1mb_events: VmHWM of a relay delivering {large_count} events of "
            f"about 1 MB each, due at once",
        ]
        return bench.report(
            big,
            "backlog",
            f"drain rate with {size.big:,} due against {size.small:,} due",
            figures=figures,
            targets={
                "ratio_big_to_small": at_least(share, 0.90),
                "relay_peak_rss_mb": at_most(peak, 200.0),
                "relay_peak_rss_mb_1mb_events": at_most(large_peak, 200.0),
            },
            notes=notes,
        )
