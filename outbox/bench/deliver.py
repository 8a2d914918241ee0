"""`deliver`: how fast one relay process drains due deliveries, beside bare aiohttp and pyreqwest
clients and the contract floor (the least a sender can do per delivery and keep the contract's
delivery lines: `client._Floor`), each round of it draining a database of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from outbox.bench import client, drain
from outbox.bench.harness import (
    Bench,
    Progress,
    Report,
    at_least,
    at_most,
    median,
    ratio,
    rotate,
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
    with (
        bench.database("deliver") as url,
        BenchDb(url) as db,
        bench.database("deliver_floor") as floor_url,
        BenchDb(floor_url) as floor_db,
        Receiver() as rx,
    ):
        db.add_endpoint(rx.url())
        floor_db.add_endpoint(rx.url())
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

            def bare(engine: str) -> Callable[[int], drain.Round]:
                def run_round(index: int) -> drain.Round:
                    if not spec:
                        spec.update(baseline_spec(db, rx.url(), chunk, concurrency))
                    rx.reset()
                    result = client.run_client(spec, engine, bench.workdir, bench.child_env(url))
                    done = drain.Round(rx.window(), result.cpu_s)
                    progress.step(f"bare {engine} round {index + 1}: {done.rate:,.0f}/s")
                    return done

                return run_round

            def floor(index: int) -> drain.Round:
                rx.reset()
                floor_db.insert_events(chunk)  # fanned out; no relay runs on this database
                floor_spec = {
                    "database_url": floor_url,
                    "count": chunk,
                    "concurrency": concurrency,
                    "batch": Options().batch,
                }
                result = client.run_client(
                    floor_spec, "floor", bench.workdir, bench.child_env(floor_url)
                )
                done = drain.Round(rx.window(), result.cpu_s)
                progress.step(f"contract floor round {index + 1}: {done.rate:,.0f}/s")
                return done

            relay_rounds, aiohttp_rounds, pyreqwest_rounds, floor_rounds = rotate(
                rounds, [ours, bare("aiohttp"), bare("pyreqwest"), floor]
            )
            _, peak = relay.memory()
        counts = db.status_counts()
        floor_counts = floor_db.status_counts()
        floor_attempts = floor_db.attempts_count()
        rates = [r.rate for r in relay_rounds]
        cpu = median([r.cpu_us for r in relay_rounds])
        bare_rates = {
            "aiohttp": [r.rate for r in aiohttp_rounds],
            "pyreqwest": [r.rate for r in pyreqwest_rounds],
        }
        bare_cpu = {
            "aiohttp": median([r.cpu_us for r in aiohttp_rounds]),
            "pyreqwest": median([r.cpu_us for r in pyreqwest_rounds]),
        }
        fastest = max(bare_rates, key=lambda engine: median(bare_rates[engine]))
        to_aiohttp = ratio(rates, bare_rates["aiohttp"])
        to_pyreqwest = ratio(rates, bare_rates["pyreqwest"])
        relay_cpu = [r.cpu_us for r in relay_rounds]
        floor_cpu = [r.cpu_us for r in floor_rounds]
        cpu_to_aiohttp = ratio(relay_cpu, [r.cpu_us for r in aiohttp_rounds])
        figures: dict[str, float | int | str] = {
            "deliveries": chunk * rounds,
            "rounds": rounds,
            "concurrency": concurrency,
            "deliveries_per_s": median(rates),
            "aiohttp_per_s": median(bare_rates["aiohttp"]),
            "pyreqwest_per_s": median(bare_rates["pyreqwest"]),
            "fastest_bare_client": fastest,
            "ratio_to_aiohttp": to_aiohttp,
            "ratio_to_pyreqwest": to_pyreqwest,
            "ratio_to_fastest": ratio(rates, bare_rates[fastest]),
            "relay_cpu_us_per_delivery": cpu,
            "aiohttp_cpu_us_per_request": bare_cpu["aiohttp"],
            "pyreqwest_cpu_us_per_request": bare_cpu["pyreqwest"],
            "cpu_ratio_to_aiohttp": cpu_to_aiohttp,
            "receiver_cpu_us_per_request": median(receiver_cpu),
            "record_lag_ms": median([r.record_lag_ms for r in relay_rounds]),
            "relay_rss_mb": peak,
            "recorded_delivered": counts.get("delivered", 0),
            "left_pending": counts.get("pending", 0),
            "floor_per_s": median([r.rate for r in floor_rounds]),
            "floor_ratio_to_aiohttp": ratio([r.rate for r in floor_rounds], bare_rates["aiohttp"]),
            "floor_ratio_to_pyreqwest": ratio(
                [r.rate for r in floor_rounds], bare_rates["pyreqwest"]
            ),
            "floor_cpu_us_per_delivery": median(floor_cpu),
            "floor_cpu_ratio_to_aiohttp": ratio(floor_cpu, [r.cpu_us for r in aiohttp_rounds]),
            "relay_cpu_ratio_to_floor": ratio(relay_cpu, floor_cpu),
            "floor_recorded_delivered": floor_counts.get("delivered", 0),
            "floor_attempts": floor_attempts,
        }
        targets = {
            "deliveries_per_s": at_least(median(rates), 2500),
            "ratio_to_aiohttp": at_least(to_aiohttp, 1.4),
            "ratio_to_pyreqwest": at_least(to_pyreqwest, 0.5),
            "relay_cpu_us_per_delivery": at_most(cpu, 400),
            "cpu_ratio_to_aiohttp": at_most(cpu_to_aiohttp, 0.75),
        }
        notes = [
            f"{rounds} rounds of {chunk:,} each, the relay and the two bare clients in turn "
            "(each round starting one later); medians shown, ratios are medians of each "
            "round's ratios",
            "rates are first-to-last arrival at the receiver; the relay is idle and woken by "
            "the burst's NOTIFY; recording outcomes finishes before the next round starts",
            "the contract floor: bare pyreqwest plus only what the contract's delivery lines "
            "cost (claimed under a lease with FOR UPDATE SKIP LOCKED, rendered and signed twice "
            "at send time, each attempt a row of outbox.attempts with its delivery updated), in "
            "batches of the relay's claim size, on a database of its own",
        ]
        return bench.report(
            db,
            "deliver",
            "due deliveries drained by one relay process",
            figures=figures,
            targets=targets,
            notes=notes,
        )
