"""`isolation`: ten endpoints, one of which never answers, against ten healthy ones: how much of
the relay's delivery rate the healthy endpoints keep."""

from __future__ import annotations

from outbox.bench import drain
from outbox.bench.harness import Bench, Progress, Report, at_least, interleave, median, ratio
from outbox.bench.receiver import Receiver
from outbox.db.benchdb import BenchDb

ENDPOINTS = 10
EVENTS, QUICK_EVENTS = 1_500, 30  # per round; each fans out to every enabled endpoint
HEALTHY = list(range(ENDPOINTS - 1))  # ports of the endpoints that are healthy in every round
TENTH = ENDPOINTS - 1  # port of the tenth endpoint when it is healthy
SILENT = ENDPOINTS  # port that reads requests and never answers


def run(bench: Bench) -> Report:
    events = QUICK_EVENTS if bench.quick else EVENTS
    rounds = bench.rounds()
    progress = Progress("isolation")
    with (
        bench.database("isolation") as url,
        BenchDb(url) as db,
        Receiver(ports=ENDPOINTS + 1, hang=[SILENT]) as rx,
    ):
        for port in HEALTHY:
            db.add_endpoint(rx.url(port))
        tenth = db.add_endpoint(rx.url(TENTH))
        silent = db.add_endpoint(rx.url(SILENT), enabled=False)
        held: list[int] = []  # requests the silent endpoint was sitting on, per round
        with bench.relay(url) as relay:

            def all_healthy(index: int) -> drain.Round:
                db.enable(tenth, on=True)
                done = drain.burst(
                    db, rx, relay, progress, events=events, expected=events * ENDPOINTS,
                    label=f"10 healthy, round {index + 1}/{rounds}", ports=[*HEALTHY, TENTH],
                    settled=lambda: db.pending(enabled_only=True) == 0,
                )  # fmt: skip
                db.enable(tenth, on=False)
                progress.step(f"10 healthy, round {index + 1}: {done.rate:,.0f}/s")
                return done

            def one_silent(index: int) -> drain.Round:
                db.enable(silent, on=True)
                expected = events * len(HEALTHY)
                done = drain.burst(
                    db, rx, relay, progress, events=events, expected=expected,
                    label=f"1 silent, round {index + 1}/{rounds}", ports=HEALTHY,
                    settled=lambda: True,
                )  # fmt: skip
                held.append(rx.count([SILENT]))
                db.enable(silent, on=False)
                # Its attempts would hang until the relay's timeout; end them now so the next
                # round starts with every slot free. They fail and wait for their next rung.
                rx.drop_hung()
                progress.step(f"1 silent, round {index + 1}: {done.rate:,.0f}/s")
                return done

            healthy_rounds, silent_rounds = interleave(rounds, all_healthy, one_silent)
        share = ratio([r.rate for r in silent_rounds], [r.rate for r in healthy_rounds])
        counts = db.status_counts()
        figures = {
            "endpoints": ENDPOINTS,
            "events_per_round": events,
            "rounds": rounds,
            "all_healthy_per_s": median([r.rate for r in healthy_rounds]),
            "one_silent_healthy_per_s": median([r.rate for r in silent_rounds]),
            "ratio": share,
            "silent_held_per_round": int(median(held)),
            "silent_left_pending": counts.get("pending", 0),
        }
        notes = [
            "rates: deliveries per second reaching the healthy endpoints (10 of them, or the 9 "
            "beside the silent one), first to last arrival; each endpoint on its own port",
            "the silent endpoint reads each request and never answers, for the whole round "
            "(shorter than the relay's timeout); rounds alternate",
        ]
        return bench.report(
            db,
            "isolation",
            "healthy endpoints' delivery rate beside one that never answers",
            figures=figures,
            targets={"ratio": at_least(share, 0.90)},
            notes=notes,
        )
