"""`deliver`: how fast one relay process drains due deliveries, beside a bare aiohttp client."""

from __future__ import annotations

from typing import Any

from outbox.bench import client, drain
from outbox.bench.harness import (
    Bench,
    Progress,
    Report,
    at_least,
    at_most,
    interleave,
    median,
    ratio,
)
from outbox.bench.receiver import Receiver
from outbox.db.benchdb import BenchDb
from outbox.relay import Options
from outbox.signing import generate_secret

TOTAL = 50_000
QUICK_TOTAL = 600
SAMPLE = 2_000  # distinct bodies the baseline client cycles through


def baseline_spec(db: BenchDb, url: str, count: int, concurrency: int) -> dict[str, Any]:
    """The client's work: the same rendered bodies and header set the relay sends."""
    rows = db.event_sample(min(SAMPLE, count))
    return {
        "url": url,
        "count": count,
        "concurrency": concurrency,
        "requests": client.prepare(rows, generate_secret()),
    }


def run(bench: Bench) -> Report:
    total = QUICK_TOTAL if bench.quick else TOTAL
    rounds = bench.rounds()
    chunk = total // rounds
    # One endpoint: the relay keeps at most per_endpoint attempts in flight to it, so that is
    # the concurrency the client gets too.
    concurrency = min(Options().concurrency, Options().per_endpoint)
    progress = Progress("deliver")
    with bench.database("deliver") as url, BenchDb(url) as db, Receiver() as rx:
        db.add_endpoint(rx.url())
        spec: dict[str, Any] = {}
        receiver_cpu: list[float] = []
        with bench.relay(url) as relay:

            def ours(index: int) -> drain.Round:
                cpu = rx.cpu()
                done = drain.burst(
                    db, rx, relay, progress, events=chunk, expected=chunk,
                    label=f"relay round {index + 1}/{rounds}",
                )  # fmt: skip
                receiver_cpu.append((rx.cpu() - cpu) * 1e6 / max(done.window.count, 1))
                progress.step(f"relay round {index + 1}: {done.rate:,.0f}/s")
                return done

            def bare(index: int) -> drain.Round:
                if not spec:
                    spec.update(baseline_spec(db, rx.url(), chunk, concurrency))
                rx.reset()
                result = client.run_client(spec, bench.workdir, bench.child_env(url))
                done = drain.Round(rx.window(), result.cpu_s)
                progress.step(f"baseline round {index + 1}: {done.rate:,.0f}/s")
                return done

            relay_rounds, client_rounds = interleave(rounds, ours, bare)
            _, peak = relay.memory()
        counts = db.status_counts()
        rate = median([r.rate for r in relay_rounds])
        base = median([r.rate for r in client_rounds])
        figures = {
            "deliveries": chunk * rounds,
            "rounds": rounds,
            "concurrency": concurrency,
            "deliveries_per_s": rate,
            "baseline_per_s": base,
            "ratio_to_baseline": ratio(
                [r.rate for r in relay_rounds], [r.rate for r in client_rounds]
            ),
            "relay_cpu_us_per_delivery": median([r.cpu_us for r in relay_rounds]),
            "baseline_cpu_us_per_request": median([r.cpu_us for r in client_rounds]),
            "receiver_cpu_us_per_request": median(receiver_cpu),
            "record_lag_ms": median([r.record_lag_ms for r in relay_rounds]),
            "relay_rss_mb": peak,
            "recorded_delivered": counts.get("delivered", 0),
            "left_pending": counts.get("pending", 0),
        }
        targets = {
            "deliveries_per_s": at_least(rate, 2500),
            "ratio_to_baseline": at_least(float(figures["ratio_to_baseline"]), 0.75),
            "relay_cpu_us_per_delivery": at_most(float(figures["relay_cpu_us_per_delivery"]), 400),
        }
        notes = [
            f"{rounds} rounds of {chunk:,} each, relay and baseline alternating; medians shown",
            "rates are first-to-last arrival at the receiver; the relay is idle and woken by "
            "the burst's NOTIFY; recording outcomes finishes before the next round starts",
        ]
        return bench.report(
            db,
            "deliver",
            "due deliveries drained by one relay process",
            figures=figures,
            targets=targets,
            notes=notes,
        )
