"""Paced business writes (one contact per durable transaction) and how long each took to arrive."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from outbox.bench.harness import Progress
from outbox.db.benchdb import ContactWriter


@dataclass
class Writes:
    """What a paced writer committed: (contact id, time.time() right after its commit)."""

    commits: list[tuple[int, float]] = field(default_factory=list)
    started: float = 0.0  # time.time() of the first scheduled write
    finished: float = 0.0
    connections: int = 0

    @property
    def rate(self) -> float:
        span = self.finished - self.started
        return len(self.commits) / span if span > 0 else 0.0


def connections_for(rate: float) -> int:
    """Enough connections that durable commits (a few ms each, fsync-bound) keep the pace."""
    return max(4, math.ceil(rate / 50))


def paced(
    url: str,
    rate: float,
    seconds: float,
    *,
    progress: Progress,
    label: str,
    tick: Callable[[], None] | None = None,
    account: int | None = None,
) -> Writes:
    """Insert `rate` contacts a second for `seconds`, each in its own transaction.

    Write i is due at start + i/rate; connection k takes writes k, k+n, k+2n... and catches up
    without sleeping when it falls behind, so the offered load stays at `rate`. `tick` is called
    a few times a second from this thread while the writers run. The contacts are of
    `account` (an id in stover.accounts), or of none.
    """
    total = max(1, round(rate * seconds))
    count = min(connections_for(rate), total)
    writers = [ContactWriter(url, account) for _ in range(count)]
    writes = Writes(connections=count)
    failures: list[BaseException] = []
    start = time.monotonic() + 0.05
    writes.started = time.time() + 0.05

    def work(k: int) -> None:
        writer = writers[k]
        try:
            for slot in range(k, total, count):
                delay = start + slot / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                contact = writer.insert()
                writes.commits.append((contact, time.time()))
        except Exception as exc:  # reported by the caller's thread below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            progress(f"{label}: {len(writes.commits):,}/{total:,} written")
            if tick is not None:
                tick()
            time.sleep(0.2)
    finally:
        writes.finished = time.time()
        for writer in writers:
            writer.close()
    if failures:
        raise failures[0]
    return writes


def shortfall(writes: Writes, rate: float) -> list[str]:
    """A note when the writers could not commit at the offered rate (the machine's limit)."""
    if writes.rate >= 0.95 * rate:
        return []
    return [
        f"the writers fell behind: {rate:,.0f}/s offered, {writes.rate:,.0f}/s committed "
        "(durable commits on this machine could not keep the pace)"
    ]


def first_arrivals(records: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Each event id's first arrival among the receiver's (event id, arrival) records."""
    first: dict[str, float] = {}
    for event_id, at in records:
        first.setdefault(event_id, at)
    return first


def arrivals(
    commits: Sequence[tuple[int, float]],
    records: Sequence[tuple[str, float]],
    event_contacts: dict[str, int],
) -> list[tuple[float, float]]:
    """(commit time, seconds from commit to first arrival) per delivered event, by commit time.

    The receiver saw event ids, the writer knew contact ids; the database says which event each
    contact raised.
    """
    committed = dict(commits)
    found = []
    for event_id, at in first_arrivals(records).items():
        when = committed.get(event_contacts.get(event_id, -1))
        if when is not None:
            found.append((when, at - when))
    found.sort()
    return found


def stage_times(
    path: Sequence[tuple[str, float, float, float | None]],
    records: Sequence[tuple[str, float]],
    begun: dict[str, float],
) -> tuple[list[float], list[float], list[float]]:
    """Each event's way to the receiver in three stages (ms), from `begun[event id]` to its
    delivery written by a fan-out step, to its first attempt's start, to its first arrival;
    `path` as BenchDb.account_path gives it. Only the events in `begun` are measured, and of
    those only the ones attempted and arrived."""
    first = first_arrivals(records)
    parts: tuple[list[float], list[float], list[float]] = ([], [], [])
    for event_id, _made, written, started in path:
        begin = begun.get(event_id)
        arrived = first.get(event_id)
        if begin is None or started is None or arrived is None:
            continue
        for part, (start, end) in zip(
            parts, ((begin, written), (written, started), (started, arrived)), strict=True
        ):
            part.append((end - start) * 1000.0)
    return parts


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (q in 0..1) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
