"""`accounts`: fan-out by account, many small accounts beside one account; and delivery for a
busy account beside a quiet one (outbox.bench.fairness).

The same backlog of committed events is fanned out three times, side by side in each round: to
ten endpoints of one account (the `fanout` scenario's shape), to 10,000 endpoints across 5,000
accounts, each event its own account's (two endpoints), and to two endpoints of one account (the
many accounts' width, with one account's endpoints). Fan-out joins events to endpoints by
account, so the many accounts should cost about what one account of the same width does; testing
every endpoint for every event would make them a thousand times slower. Beside ten endpoints an
event, the work done once per event (reading it, numbering its record) is shared by two
deliveries instead of ten, which the deliveries/s ratio counts against the many accounts.

Beside each layout's fan-out, in the same round, the join floor writes the same events'
deliveries by one INSERT ... SELECT joining events to endpoints by account and type: what the
deliveries themselves cost with every index of outbox.deliveries, and nothing a step adds (its
cursor, numbering records, splitting large transactions, ordered endpoints). Its ratios say how
far a join by account can go on this machine.
"""

from __future__ import annotations

import time

from outbox.bench import fairness
from outbox.bench.harness import (
    Bench,
    Figure,
    Progress,
    Report,
    Target,
    at_least,
    median,
    ratio,
)
from outbox.db.benchdb import BenchDb
from outbox.relay.fanout import Pace

EVENTS = 50_000
QUICK_EVENTS = 2_000
PER_TRANSACTION = 100
STEP_EVENTS = Pace().max_events
# (label, endpoints, accounts)
LAYOUTS = (("one_account", 10, 1), ("many_accounts", 10_000, 5_000), ("one_account_two", 2, 1))
TARGET_RATIO = 0.90


def _commit(db: BenchDb, events: int, accounts: int, progress: Progress, label: str) -> None:
    """An empty outbox, then `events` events spread over `accounts` accounts, committed."""
    db.reset_outbox()
    for written in range(0, events, PER_TRANSACTION):
        db.insert_account_events(PER_TRANSACTION, accounts=accounts, offset=written)
    progress(f"{label}: {events:,} events committed")
    db.checkpoint()


def _fan_out(
    db: BenchDb, events: int, accounts: int, progress: Progress, label: str
) -> tuple[float, int]:
    """Commit the events, fan them out step by step; (deliveries/s, deliveries)."""
    _commit(db, events, accounts, progress, label)
    started = time.perf_counter()
    fanned, deliveries = db.fan_out(STEP_EVENTS)
    elapsed = time.perf_counter() - started
    if fanned != events:
        progress.step(f"{label}: fanned out {fanned:,} events of {events:,}")
    return deliveries / elapsed, deliveries


def _floor(
    db: BenchDb, events: int, accounts: int, progress: Progress, label: str
) -> tuple[float, int]:
    """Commit the same events, write their deliveries by the join floor; (deliveries/s,
    deliveries)."""
    _commit(db, events, accounts, progress, label)
    started = time.perf_counter()
    deliveries = db.fan_out_floor()
    return deliveries / (time.perf_counter() - started), deliveries


def run(bench: Bench) -> Report:
    events = QUICK_EVENTS if bench.quick else EVENTS
    progress = Progress("accounts")
    rates: dict[str, list[float]] = {label: [] for label, _, _ in LAYOUTS}
    floors: dict[str, list[float]] = {label: [] for label, _, _ in LAYOUTS}
    written: dict[str, tuple[int, int]] = {}
    with bench.database("accounts") as url, BenchDb(url) as db:
        for index in range(bench.rounds()):
            # Alternate the order, so no layout always runs first or last.
            for label, endpoints, accounts in LAYOUTS if index % 2 == 0 else LAYOUTS[::-1]:
                db.set_account_endpoints(endpoints, accounts=accounts)
                rate, deliveries = _fan_out(db, events, accounts, progress, label)
                floor, floor_deliveries = _floor(db, events, accounts, progress, label)
                rates[label].append(rate)
                floors[label].append(floor)
                written[label] = (deliveries, floor_deliveries)
                progress.step(
                    f"round {index + 1}, {label}: {rate:,.0f} deliveries/s "
                    f"(the join floor {floor:,.0f}/s)"
                )
        one, many = median(rates["one_account"]), median(rates["many_accounts"])
        many_over_one = ratio(rates["many_accounts"], rates["one_account"])
        same_width = ratio(rates["many_accounts"], rates["one_account_two"])
        figures: dict[str, Figure] = {
            "events": events,
            "one_account_deliveries_per_s": one,
            "many_accounts_deliveries_per_s": many,
            "one_account_two_deliveries_per_s": median(rates["one_account_two"]),
            "many_over_one": many_over_one,
            "many_over_same_width": same_width,
            "floor_many_accounts_deliveries_per_s": median(floors["many_accounts"]),
            "floor_many_over_one": ratio(floors["many_accounts"], floors["one_account"]),
            "floor_many_over_same_width": ratio(floors["many_accounts"], floors["one_account_two"]),
            "step_over_floor_many_accounts": ratio(rates["many_accounts"], floors["many_accounts"]),
            "many_accounts_deliveries": written["many_accounts"][0],
            "floor_many_accounts_deliveries": written["many_accounts"][1],
        }
        targets: dict[str, Target] = {
            "many_over_one": at_least(many_over_one, TARGET_RATIO),
            "many_over_same_width": at_least(same_width, TARGET_RATIO),
        }
        fair_figures, fair_targets, fair_notes = fairness.measure(bench, url, progress)
        figures.update(fair_figures)
        targets.update(fair_targets)
        notes = [
            f"{events:,} app.thing events committed {PER_TRANSACTION} per transaction, then "
            f"outbox.fan_out({STEP_EVENTS:,}) until nothing is left, no relay running",
            "one_account: 10 endpoints of one account, each event to all 10; many_accounts: "
            "10,000 endpoints across 5,000 accounts, each event to its own account's 2; "
            "one_account_two: 2 endpoints of one account, each event to both",
            f"the ratio is of deliveries/s, paired round by round; medians of {bench.rounds()} "
            "rounds, the layouts' order alternating",
            "floor_*: the join floor, the same events' deliveries written by one INSERT ... "
            "SELECT joining events to endpoints by account and type, after each layout's "
            "fan-out in the same round (no cursor, numbering, splitting or ordering)",
            *fair_notes,
        ]
        return bench.report(
            db,
            "accounts",
            "fan-out to many accounts' endpoints beside one account's",
            figures=figures,
            targets=targets,
            notes=notes,
        )
