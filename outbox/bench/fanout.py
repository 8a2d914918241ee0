"""`fanout`: how fast outbox.fan_out() turns a backlog of committed events into deliveries.

Capture leaves the deliveries to the relay; this is the relay's share of that work, alone: a
backlog of events from many committed transactions, ten endpoints subscribed to everything, and
outbox.fan_out() stepping through it as a relay does, with no relay running and nothing sent.
Then, on a database of its own with no statistics yet, each round one step of a transaction of
updates to as many records as a step takes, first while the records are new and then again once
they are known: numbering costs a probe of each record's key either way, so the two steps should
take about as long.
"""

from __future__ import annotations

import time

from outbox.bench.harness import Bench, Figure, Progress, Report, Target, at_least, median
from outbox.db.benchdb import BenchDb
from outbox.relay.fanout import Pace

ENDPOINTS = 10
EVENTS = 100_000  # the backlog, in transactions of PER_TRANSACTION events
QUICK_EVENTS = 2_000
PER_TRANSACTION = 100
STEP_EVENTS = Pace().max_events  # the relay's step size
TARGET = 30_000.0  # deliveries written per second
FIRST_DEAL = 10_000_000  # the updated records' ids, clear of the backlog's contacts


def run(bench: Bench) -> Report:
    events = QUICK_EVENTS if bench.quick else EVENTS
    progress = Progress("fanout")
    rates: list[float] = []
    steps: list[float] = []
    record_steps: dict[str, list[float]] = {"new": [], "known": []}
    with bench.database("fanout") as url, BenchDb(url) as db:
        for n in range(ENDPOINTS):
            db.add_endpoint(f"http://127.0.0.1:9/fanout/{n}")
        for index in range(bench.rounds()):
            db.reset_outbox()
            for written in range(0, events, PER_TRANSACTION):
                db.insert_events(PER_TRANSACTION, fan_out=False)
                progress(f"round {index + 1}: {written + PER_TRANSACTION:,} events committed")
            db.checkpoint()
            started = time.perf_counter()
            fanned, deliveries, count = 0, 0, 0
            while True:
                step_events, step_deliveries, more = db.fan_out_step(STEP_EVENTS)
                fanned, deliveries, count = (
                    fanned + step_events,
                    deliveries + step_deliveries,
                    count + 1,
                )
                if not more:
                    break
            elapsed = time.perf_counter() - started
            rates.append(deliveries / elapsed)
            steps.append(elapsed * 1000.0 / count)
            progress.step(
                f"round {index + 1}: {fanned:,} events, {deliveries:,} deliveries in "
                f"{elapsed:.2f} s ({deliveries / elapsed:,.0f}/s, {count} steps)"
            )
        # The records' steps on a database of their own, as fresh as a new installation's: the
        # planner has no statistics for the step's events there.
        with bench.database("fanout_records") as records_url, BenchDb(records_url) as fresh:
            fresh.add_endpoint("http://127.0.0.1:9/fanout/records")
            for index in range(bench.rounds()):
                first = FIRST_DEAL * (index + 1)  # records no earlier round numbered
                for known in ("new", "known"):
                    fresh.insert_deal_updates(STEP_EVENTS, first=first)
                    started = time.perf_counter()
                    fresh.fan_out_step(STEP_EVENTS)
                    record_steps[known].append((time.perf_counter() - started) * 1000.0)
                progress.step(
                    f"round {index + 1}: a step of {STEP_EVENTS:,} records' updates "
                    f"{record_steps['new'][-1]:,.0f} ms new, "
                    f"{record_steps['known'][-1]:,.0f} ms known"
                )
        figures: dict[str, Figure] = {
            "events": events,
            "endpoints": ENDPOINTS,
            "deliveries_per_s": median(rates),
            "step_ms": median(steps),
            "step_ms_new_records": median(record_steps["new"]),
            "step_ms_known_records": median(record_steps["known"]),
            "known_over_new_records": median(record_steps["known"])
            / max(median(record_steps["new"]), 1e-9),
        }
        targets: dict[str, Target] = {
            "deliveries_per_s": at_least(median(rates), TARGET),
        }
        notes = [
            f"{events:,} contact.created events committed {PER_TRANSACTION} per transaction, "
            f"{ENDPOINTS} endpoints subscribed to every type; outbox.fan_out({STEP_EVENTS:,}) "
            "called until it leaves nothing, from one connection, no relay running",
            f"medians of {bench.rounds()} rounds; a CHECKPOINT before each",
            f"step_ms_new_records, step_ms_known_records: on a fresh database with one endpoint, "
            f"one step of a transaction of {STEP_EVENTS:,} deal.updated events, one each for "
            f"{STEP_EVENTS:,} deals never seen before, then the same again for the same deals",
        ]
        return bench.report(
            db,
            "fanout",
            "committed events fanned out to deliveries, the relay's step alone",
            figures=figures,
            targets=targets,
            notes=notes,
        )
