"""Test support: a recording HTTP receiver on loopback, run in its own thread, small waits, and a
long-lived Node.js that says whether it writes a body back byte for byte."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived


class Drop:
    """A behaviour's answer that closes the connection without a response."""


DROP = Drop()

# A behaviour decides the answer to a request: (status, body, delay-seconds), optionally with a
# fourth item of response headers; None to hang until the client gives up; or DROP.
Behaviour = Callable[[Received], "tuple[Any, ...] | Drop | None"]


def ok(_: Received) -> tuple[int, bytes, float]:
    return 200, b"ok", 0.0


@dataclass
class Receiver:
    """A real aiohttp server on 127.0.0.1 that records every request it gets."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    default: Behaviour = ok
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        got = Received(request.path, dict(request.headers), body, time.time())
        with self._cond:
            self.requests.append(got)
            self._cond.notify_all()
        answer = self.behaviours.get(request.path, self.default)(got)
        if answer is None:
            await asyncio.sleep(3600)
            return web.Response(status=599)
        if isinstance(answer, Drop):
            # The client sees the connection closed with no status line.
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=599)
        status, text, delay, *rest = answer
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=text, headers=rest[0] if rest else None)

    def on(self, path: str) -> list[Received]:
        with self._cond:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0) -> None:
        """Block until predicate(requests) holds; fail the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver condition not met within {timeout}s "
                        f"({len(self.requests)} requests so far)"
                    )
                self._cond.wait(min(left, 0.5))

    def wait_count(self, n: int, path: str | None = None, timeout: float = 30.0) -> None:
        self.wait_for(
            lambda reqs: len([r for r in reqs if path is None or r.path == path]) >= n, timeout
        )


@contextmanager
def running_receiver(**kwargs: Any) -> Iterator[Receiver]:
    """Start a Receiver in a background thread; stop it on exit."""
    receiver = Receiver(**kwargs)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    runner_box: dict[str, web.AppRunner] = {}

    async def start() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", receiver._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        # Relays open up to --per-endpoint (128) connections each; with aiohttp's default listen
        # backlog of 128, connections beyond it wait out a 1 s SYN retransmit.
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
        await site.start()
        receiver.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runner_box["runner"] = runner
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("receiver did not start")
    try:
        yield receiver
    finally:
        fut = asyncio.run_coroutine_threadsafe(runner_box["runner"].cleanup(), loop)
        # A handler still hanging must not fail teardown.
        with contextlib.suppress(Exception):
            fut.result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def outbox_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "outbox", *args]


def start_relay(
    env: dict[str, str], *args: str, log_path: str | None = None
) -> subprocess.Popen[bytes]:
    """Start `outbox relay` as a real process (its stderr goes to log_path, or is discarded)."""
    if log_path is None:
        return subprocess.Popen(
            outbox_cmd("relay", *args),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    # The child keeps its own copy of the descriptor; ours closes when Popen returns.
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            outbox_cmd("relay", *args),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM a process and wait for it; SIGKILL if it does not stop in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll a condition (e.g. a database count) until it holds, failing after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def env_without_outbox() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}


NODE_ROUNDTRIP = Path(__file__).parent / "node" / "roundtrip.js"


class NodeRoundtrip:
    """One long-lived `node roundtrip.js`: a body in, Node's verdict out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", str(NODE_ROUNDTRIP)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def verdict(self, body: bytes) -> str:
        """ "1" when JSON.stringify(JSON.parse(body)) === body, else "0" and what Node wrote."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(base64.b64encode(body) + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "node exited early"
        return line.rstrip(b"\n").decode("utf-8")

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@contextmanager
def node_roundtrip() -> Iterator[NodeRoundtrip | None]:
    """A NodeRoundtrip while the block runs, or None where Node.js is not installed."""
    if shutil.which("node") is None:
        yield None
        return
    roundtrip = NodeRoundtrip()
    try:
        yield roundtrip
    finally:
        roundtrip.close()
