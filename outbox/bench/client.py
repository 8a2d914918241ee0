"""The baselines: a bare HTTP client (aiohttp or pyreqwest) in its own process, POSTing prepared
requests at a fixed concurrency. Run as `python -m outbox.bench.client SPEC.json`; prints one JSON
line of results."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from pyreqwest.client import ClientBuilder

from outbox import payload, signing
from outbox.db.benchdb import EventRow
from outbox.errors import OutboxError
from outbox.signing import USER_AGENT

ENGINES = ("aiohttp", "pyreqwest")


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
    if spec["engine"] == "pyreqwest":
        return await _post_all_pyreqwest(spec)
    return await _post_all_aiohttp(spec)


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
    client = (
        ClientBuilder()
        .timeout(timedelta(seconds=30.0))
        .pool_idle_timeout(timedelta(seconds=4.0))
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .build()
    )
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
