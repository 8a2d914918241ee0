"""`latency`: commit to receiver arrival at 500 events/s, with a relay that idles between bursts."""

from __future__ import annotations

from collections.abc import Sequence

from outbox.bench import writer
from outbox.bench.drain import drain_timeout
from outbox.bench.harness import Bench, Progress, Report, at_most, wait_for
from outbox.bench.receiver import Receiver
from outbox.db.benchdb import BenchDb

RATE = 500.0
SECONDS = 30.0
QUICK_SECONDS = 2.0
WARMUP = 1.0  # seconds of writes left out: connections and caches warming up
# Fan-out is a step of the delivery path now: it may add little to what capture writing the
# deliveries itself gave here (p50 1.6 ms, p99 3.9 ms).
P50_TARGET_MS = 3.0
P99_TARGET_MS = 8.0


STAGES = ("commit_to_step", "step_to_attempt", "attempt_to_arrival")


def stages(
    commits: Sequence[tuple[int, float]],
    contacts: dict[str, int],
    path: Sequence[tuple[str, float, float, float | None]],
    records: Sequence[tuple[str, float]],
    since: float,
) -> dict[str, list[float]]:
    """Each measured event's way from its writer's commit to its arrival, in three stages (ms):
    to the fan-out step that wrote its delivery, to its first attempt's start, to its arrival.
    An event committed before `since`, or not attempted or arrived, is left out."""
    committed = dict(commits)
    begun = {
        event_id: commit
        for event_id, contact in contacts.items()
        if (commit := committed.get(contact)) is not None and commit >= since
    }
    return dict(zip(STAGES, writer.stage_times(path, records, begun), strict=True))


def run(bench: Bench) -> Report:
    seconds = QUICK_SECONDS if bench.quick else SECONDS
    progress = Progress("latency")
    with bench.database("latency") as url, BenchDb(url) as db, Receiver() as rx:
        db.add_endpoint(rx.url())
        with bench.relay(url) as relay:
            rx.record(on=True)
            cpu = relay.cpu()
            writes = writer.paced(url, RATE, seconds, progress=progress, label="latency")
            expected = len(writes.commits)

            def arrived() -> bool:
                relay.check()
                got = rx.count()
                progress(f"latency: {got:,}/{expected:,} arrived")
                return got >= expected and db.pending() == 0

            wait_for(arrived, drain_timeout(expected), f"delivery of {expected:,} events")
            relay_cpu = relay.cpu() - cpu
        records, contacts = rx.records(), db.event_contacts()
        timed = writer.arrivals(writes.commits, records, contacts)
        steady = [lat * 1000.0 for when, lat in timed if when >= writes.started + WARMUP]
        p50, p99 = writer.percentile(steady, 0.50), writer.percentile(steady, 0.99)
        path = stages(
            writes.commits, contacts, db.account_path(None), records, writes.started + WARMUP
        )
        figures = {
            "events": expected,
            "offered_per_s": RATE,
            "written_per_s": writes.rate,
            "writer_connections": writes.connections,
            "measured": len(steady),
            "p50_ms": p50,
            "p90_ms": writer.percentile(steady, 0.90),
            "p99_ms": p99,
            "max_ms": max(steady, default=float("nan")),
            "relay_cpu_us_per_delivery": relay_cpu * 1e6 / max(expected, 1),
            **{
                f"{stage}_{name}_ms": writer.percentile(times, q)
                for stage, times in path.items()
                for name, q in (("p50", 0.50), ("p99", 0.99))
            },
        }
        notes = [
            f"{seconds:g} s of single-row durable INSERTs into stover.contacts at {RATE:g}/s, "
            f"one per transaction, from {writes.connections} connections; the first "
            f"{WARMUP:g} s left out",
            "latency: the writer's clock right after COMMIT returned, to the receiver's clock "
            "when the request arrived (same machine), matched by X-Stover-Event-Id",
            "stages, which add up to it: commit_to_step, to the start of the fan-out step that "
            "wrote the delivery (its transaction's now(); below zero when that step began "
            "between the commit and the writer's reading of its clock); step_to_attempt, to the "
            "first attempt's start (the rest of the step, the claim, the hand-over to a "
            "worker); attempt_to_arrival, the request",
        ]
        notes += writer.shortfall(writes, RATE)
        return bench.report(
            db,
            "latency",
            f"commit to receiver arrival at {RATE:g} events/s",
            figures=figures,
            targets={"p50_ms": at_most(p50, P50_TARGET_MS), "p99_ms": at_most(p99, P99_TARGET_MS)},
            notes=notes,
        )
