"""`peer`: the same drain through the queue a Python team would otherwise build on, a tuned
pgqueuer worker whose entrypoint signs and POSTs with aiohttp, interleaved with our relay.

`python -m outbox.bench.peer DSN POOL HTTP` is that worker: the asyncpg pool driver, batches of
100, up to 1,000 jobs held at once, 100 HTTP connections, uvloop. It keeps no per-attempt audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator

import aiohttp
import asyncpg
import uvloop
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Job, Queries, QueueManager

from outbox import payload, signing
from outbox.bench import deliver, drain, procs
from outbox.bench.harness import Bench, Progress, Report, at_least, interleave, median, ratio
from outbox.bench.receiver import Receiver
from outbox.db import benchdb
from outbox.db.benchdb import BenchDb
from outbox.signing import USER_AGENT

ENTRYPOINT = "webhook"
BATCH = 100
HELD = 1_000
HTTP_CONNECTIONS = 100
POOL = 100
READY = "pgqueuer worker ready"


async def _worker(dsn: str, pool_size: int, http_connections: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=pool_size)
    manager = QueueManager(Queries(AsyncpgPoolDriver(pool)))
    connector = aiohttp.TCPConnector(
        limit=http_connections, limit_per_host=http_connections, keepalive_timeout=4.0
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=30.0),
        skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type"),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    @manager.entrypoint(ENTRYPOINT)
    async def send(job: Job) -> None:
        message = json.loads(job.payload or b"{}")
        body = message["body"].encode()
        headers = signing.delivery_headers(
            secret=message["secret"],
            event_id=message["event_id"],
            event_type=message["event_type"],
            delivery_id=str(job.id),
            attempt=job.attempts + 1,
            body=body,
            timestamp=int(time.time()),
            user_agent=USER_AGENT,
        )
        async with session.post(message["url"], data=body, headers=headers) as response:
            await response.read()
            if not 200 <= response.status < 300:
                raise RuntimeError(f"receiver answered {response.status}")

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, manager.shutdown.set)
    print(READY, flush=True)
    try:
        await manager.run(batch_size=BATCH, max_concurrent_tasks=HELD)
    finally:
        await session.close()
        await pool.close()


async def _install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def _enqueue(dsn: str, payloads: list[bytes]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        count = len(payloads)
        jobs: list[bytes | None] = list(payloads)
        await Queries(AsyncpgDriver(conn)).enqueue([ENTRYPOINT] * count, jobs, [0] * count)
    finally:
        await conn.close()


def _payloads(db: BenchDb, url: str, count: int) -> list[bytes]:
    """Jobs carrying what our relay reads from its tables: the rendered event and its endpoint."""
    secret = signing.generate_secret()
    jobs = []
    for event_id, event_type, created_at, data, previous in db.event_sample(deliver.SAMPLE):
        body = payload.render_event(event_id, event_type, created_at, data, previous)
        message = {
            "url": url,
            "secret": secret,
            "event_id": event_id,
            "event_type": event_type,
            "body": body.decode(),
        }
        jobs.append(json.dumps(message).encode())
    return [jobs[i % len(jobs)] for i in range(count)]


def run(bench: Bench) -> Report:
    total = deliver.QUICK_TOTAL if bench.quick else deliver.TOTAL
    rounds = bench.rounds()
    chunk = total // rounds
    progress = Progress("peer")
    with bench.database("peer") as url, BenchDb(url) as db, Receiver() as rx:
        dsn = benchdb.as_uri(url)
        asyncio.run(_install(dsn))
        db.add_endpoint(rx.url())
        # The embedded server allows 100 connections; the pool gets what is left of them.
        pool = max(4, min(POOL, db.connections_free() - 12))
        jobs: list[bytes] = []
        with bench.relay(url) as relay, _pgqueuer_worker(bench, url, dsn, pool) as worker:

            def ours(index: int) -> drain.Round:
                done = drain.burst(
                    db, rx, relay, progress, events=chunk, expected=chunk,
                    label=f"relay round {index + 1}/{rounds}",
                )  # fmt: skip
                progress.step(f"relay round {index + 1}: {done.rate:,.0f}/s")
                return done

            def theirs(index: int) -> drain.Round:
                if not jobs:
                    jobs.extend(_payloads(db, rx.url(), chunk))
                done = drain.burst(
                    db, rx, worker, progress, events=chunk, expected=chunk,
                    label=f"pgqueuer round {index + 1}/{rounds}",
                    start=lambda: asyncio.run(_enqueue(dsn, jobs)),
                    settled=lambda: db.pgqueuer_left() == 0,
                )  # fmt: skip
                progress.step(f"pgqueuer round {index + 1}: {done.rate:,.0f}/s")
                return done

            relay_rounds, peer_rounds = interleave(rounds, ours, theirs)
        rate = median([r.rate for r in relay_rounds])
        theirs_rate = median([r.rate for r in peer_rounds])
        share = ratio([r.rate for r in relay_rounds], [r.rate for r in peer_rounds])
        figures = {
            "deliveries": chunk * rounds,
            "rounds": rounds,
            "ours_per_s": rate,
            "pgqueuer_per_s": theirs_rate,
            "ratio_to_pgqueuer": share,
            "ours_cpu_us_per_delivery": median([r.cpu_us for r in relay_rounds]),
            "pgqueuer_cpu_us_per_delivery": median([r.cpu_us for r in peer_rounds]),
            "pgqueuer_pool_max": pool,
        }
        notes = [
            f"pgqueuer: asyncpg pool driver (max {pool} connections), batch {BATCH}, "
            f"max_concurrent_tasks {HELD}, {HTTP_CONNECTIONS} HTTP connections, uvloop; "
            "its entrypoint signs both signatures and POSTs the same rendered bodies",
            f"{rounds} rounds of {chunk:,} each, alternating; rates first-to-last arrival",
            "ours records every attempt in outbox.attempts; pgqueuer keeps only its job log",
        ]
        return bench.report(
            db,
            "peer",
            "our relay against a tuned pgqueuer worker, same drain, same receiver",
            figures=figures,
            targets={"ratio_to_pgqueuer": at_least(share, 1.25)},
            notes=notes,
        )


@contextlib.contextmanager
def _pgqueuer_worker(bench: Bench, url: str, dsn: str, pool: int) -> Iterator[procs.Child]:
    """The pgqueuer worker as a child process, returned once its queue manager is starting."""
    log = bench.workdir / "pgqueuer.log"
    args = ["-m", "outbox.bench.peer", dsn, str(pool), str(HTTP_CONNECTIONS)]
    with procs.child(args, bench.child_env(url), log, "pgqueuer worker") as worker:
        procs.wait_ready(worker, lambda: READY in log.read_text(errors="replace"))
        yield worker


def main(argv: list[str]) -> int:
    dsn, pool, http = argv[0], int(argv[1]), int(argv[2])
    uvloop.run(_worker(dsn, pool, http))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
