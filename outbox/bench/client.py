"""The baselines, each in its own process at a fixed concurrency: a bare HTTP client (aiohttp or
pyreqwest) POSTing prepared requests, and the contract floor, the least a sender can do per
delivery and keep the delivery lines of the contract (`floor`). Run as `python -m
outbox.bench.client SPEC.json`; prints one JSON line of results."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
from pyreqwest.client import Client, ClientBuilder

from outbox import payload, signing
from outbox.db.benchdb import EventRow
from outbox.errors import OutboxError
from outbox.sender import BODY_READ_LIMIT
from outbox.signing import USER_AGENT
from outbox.sqlfiles import queries

ENGINES = ("aiohttp", "pyreqwest", "floor")
Q = queries("bench")


@dataclass(frozen=True)
class ClientResult:
    sent: int
    ok: int
    elapsed_s: float
    cpu_s: float


def prepare(rows: list[EventRow], secret: str) -> list[tuple[str, dict[str, str]]]:
    """The bodies and signed headers the relay would send for these events (signed once here)."""
    prepared = []
    for index, (event_id, event_type, created_at, data, previous) in enumerate(rows):
        body = payload.render_event(event_id, event_type, created_at, data, previous)
        headers = signing.delivery_headers(
            secret=secret,
            event_id=event_id,
            event_type=event_type,
            delivery_id=str(index + 1),
            attempt=1,
            body=body,
            timestamp=int(time.time()),
            user_agent=USER_AGENT,
        )
        prepared.append((body.decode(), headers))
    return prepared


def run_client(
    spec: dict[str, Any], engine: str, workdir: Path, env: dict[str, str]
) -> ClientResult:
    """Run the `engine` client's process to completion with `spec` (url, concurrency, count,
    requests)."""
    path = workdir / "client-spec.json"
    path.write_text(json.dumps({**spec, "engine": engine}))
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "outbox.bench.client", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=max(120.0, spec["count"] / 100.0),
        check=False,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise OutboxError(f"the baseline client failed ({done.returncode}): {tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return ClientResult(**result)


async def _post_all(spec: dict[str, Any]) -> ClientResult:
    if spec["engine"] == "floor":
        return await _drain_floor(spec)
    if spec["engine"] == "pyreqwest":
        return await _post_all_pyreqwest(spec)
    return await _post_all_aiohttp(spec)


def _pyreqwest_client() -> Client:
    return (
        ClientBuilder()
        .timeout(timedelta(seconds=30.0))
        .pool_idle_timeout(timedelta(seconds=4.0))
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .build()
    )


async def _post_all_aiohttp(spec: dict[str, Any]) -> ClientResult:
    url: str = spec["url"]
    count: int = spec["count"]
    concurrency: int = spec["concurrency"]
    requests = [(body.encode(), headers) for body, headers in spec["requests"]]
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, keepalive_timeout=4.0
    )
    ok = 0
    counter = itertools.count()
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=30.0),
        skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type"),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def worker() -> None:
            nonlocal ok
            while (index := next(counter)) < count:
                body, headers = requests[index % len(requests)]
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok += response.status == 200

        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ClientResult(count, ok, time.perf_counter() - started, time.process_time() - cpu)


async def _post_all_pyreqwest(spec: dict[str, Any]) -> ClientResult:
    url: str = spec["url"]
    count: int = spec["count"]
    concurrency: int = spec["concurrency"]
    requests = [(body.encode(), headers) for body, headers in spec["requests"]]
    ok = 0
    counter = itertools.count()
    client = _pyreqwest_client()
    async with client:

        async def worker() -> None:
            nonlocal ok
            while (index := next(counter)) < count:
                body, headers = requests[index % len(requests)]
                response = await client.post(url).headers(headers).body_bytes(body).build().send()
                ok += response.status == 200

        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ClientResult(count, ok, time.perf_counter() - started, time.process_time() - cpu)


class _Floor:
    """The contract floor: pyreqwest as bare, plus only what the contract's delivery lines cost.
    Due deliveries claimed in batches under a lease with FOR UPDATE SKIP LOCKED, each body
    rendered and signed twice at send time, and each attempt recorded as an attempts row with its
    delivery updated beside it, a batch per statement. Nothing else: no fairness, no caps, no
    retry ladder or breaker, no metrics, no logs (sql/queries/bench.sql)."""

    def __init__(
        self,
        spec: dict[str, Any],
        claims: psycopg.AsyncConnection[Any],
        records: psycopg.AsyncConnection[Any],
        client: Client,
    ) -> None:
        self.count: int = spec["count"]
        self.concurrency: int = spec["concurrency"]
        self.batch: int = spec["batch"]
        self.claims, self.records, self.client = claims, records, client
        self.claimed = self.finished = self.ok = 0
        self.queue: deque[tuple[Any, ...] | None] = deque()
        self.waiting: deque[asyncio.Future[tuple[Any, ...] | None]] = deque()
        self.outcomes: list[list[Any]] = []
        self.room = asyncio.Event()
        self.full = asyncio.Event()

    async def claim_all(self) -> None:
        while self.claimed < self.count:
            free = self.concurrency - (self.claimed - self.finished)
            if free < min(self.batch, self.count - self.claimed):
                self.room.clear()
                await self.room.wait()
                continue
            cursor = await self.claims.execute(Q["bench_floor_claim"], {"limit": free})
            rows = await cursor.fetchall()
            if not rows:
                await asyncio.sleep(0.002)
                continue
            self.claimed += len(rows)
            for row in rows:
                if self.waiting:
                    self.waiting.popleft().set_result(row)
                else:
                    self.queue.append(row)
        for _ in range(self.concurrency):
            if self.waiting:
                self.waiting.popleft().set_result(None)
            else:
                self.queue.append(None)

    async def work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            row: tuple[Any, ...] | None
            if self.queue:
                row = self.queue.popleft()
            else:
                waiter: asyncio.Future[tuple[Any, ...] | None] = loop.create_future()
                self.waiting.append(waiter)
                row = await waiter
            if row is None:
                return
            (delivery_id, lease, attempts, url, secret, event_id, event_type, created_at, data,
             previous, record, sequence) = row  # fmt: skip
            body = payload.render_event(
                event_id, event_type, created_at, data, previous, record=record, sequence=sequence
            )
            started = datetime.now(UTC)
            headers = signing.delivery_headers(
                secret=secret,
                event_id=event_id,
                event_type=event_type,
                delivery_id=str(delivery_id),
                attempt=attempts + 1,
                body=body,
                timestamp=int(started.timestamp()),
                user_agent=USER_AGENT,
            )
            clock = time.perf_counter()
            request = self.client.post(url).headers(headers).body_bytes(body).build_streamed()
            async with request as response:
                status = response.status
                length = response.get_header("content-length")
                if length is not None and length.isdigit() and int(length) <= BODY_READ_LIMIT:
                    await response.bytes()  # else the connection is dropped unread
            elapsed_ms = (time.perf_counter() - clock) * 1000.0
            self.ok += 200 <= status < 300
            self.outcomes.append([delivery_id, lease, attempts + 1, started, elapsed_ms, status])
            self.finished += 1
            self.room.set()
            if len(self.outcomes) >= self.batch:
                self.full.set()

    async def record_all(self, workers: asyncio.Future[Any]) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.full.wait(), 0.01)
            self.full.clear()
            if self.outcomes:
                batch, self.outcomes = self.outcomes, []
                await self.records.execute(
                    Q["bench_floor_record"], {"outcomes": orjson.dumps(batch).decode()}
                )
            elif workers.done():
                return


async def _drain_floor(spec: dict[str, Any]) -> ClientResult:
    url: str = spec["database_url"]
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as claims,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as records,
        _pyreqwest_client() as client,
    ):
        floor = _Floor(spec, claims, records, client)
        cpu = time.process_time()
        started = time.perf_counter()
        workers = asyncio.gather(*(floor.work() for _ in range(floor.concurrency)))
        await asyncio.gather(floor.claim_all(), workers, floor.record_all(workers))
        return ClientResult(
            floor.count, floor.ok, time.perf_counter() - started, time.process_time() - cpu
        )


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    # The same event loop as `outbox relay` (uvloop where installed), so the two compare fairly.
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 - optional, as in the relay

        runner = uvloop.run
    result: ClientResult = runner(_post_all(spec))
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
