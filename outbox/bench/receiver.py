"""A fast loopback HTTP receiver in its own process: answers 200 (or never, or 500 to the events
it is told to fail) and counts arrivals.

It speaks just enough HTTP/1.1 for keep-alive POSTs with a Content-Length, on a raw asyncio
protocol (uvloop when installed), so it costs the machine a few microseconds per request and the
clients it serves, not it, set the pace. The parent drives it over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, cast

from outbox.bench.procs import cpu_seconds
from outbox.errors import OutboxError

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
FAILURE = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
_LENGTH = b"\r\ncontent-length:"
_EVENT_ID = b"\r\nx-stover-event-id:"


@dataclass
class Window:
    """Requests one or more ports received since the last reset: how many, first and last."""

    count: int = 0
    first: float = 0.0  # time.time() of the first arrival
    last: float = 0.0

    @property
    def rate(self) -> float:
        """Arrivals per second from the first to the last (0 with fewer than two)."""
        if self.count < 2 or self.last <= self.first:
            return 0.0
        return (self.count - 1) / (self.last - self.first)

    def merge(self, other: Window) -> Window:
        if not other.count:
            return self
        if not self.count:
            return other
        return Window(
            self.count + other.count, min(self.first, other.first), max(self.last, other.last)
        )


@dataclass
class _State:
    windows: list[Window]
    recording: bool = False
    records: list[tuple[str, float]] = field(default_factory=list)
    hung: set[asyncio.Transport] = field(default_factory=set)
    failing: set[bytes] = field(default_factory=set)  # event ids answered 500, not counted
    failed: int = 0


def _header(head: bytes, name: bytes) -> bytes | None:
    lower = head.lower()
    at = lower.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = lower.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


class _Http(asyncio.Protocol):
    def __init__(self, state: _State, port: int, hang: bool) -> None:
        self.state = state
        self.port = port
        self.hang = hang
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        if self.hang:
            self.state.hung.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.state.hung.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            length = _header(head, _LENGTH)
            stop = end + 4 + (int(length) if length else 0)
            if len(buf) < stop:
                break
            self._arrived(head)
            pos = stop
        self.buf = buf[pos:]

    def _arrived(self, head: bytes) -> None:
        now = time.time()
        state = self.state
        if state.failing and _header(head, _EVENT_ID) in state.failing:
            state.failed += 1
            if self.transport is not None:
                self.transport.write(FAILURE)
            return
        window = state.windows[self.port]
        if not window.count:
            window.first = now
        window.count += 1
        window.last = now
        if state.recording:
            event_id = _header(head, _EVENT_ID)
            state.records.append((event_id.decode() if event_id else "", now))
        if not self.hang and self.transport is not None:
            self.transport.write(RESPONSE)


def _answer(state: _State, message: tuple[Any, ...]) -> Any:
    command = message[0]
    if command == "stats":
        return [(w.count, w.first, w.last) for w in state.windows]
    if command == "reset":
        state.windows[:] = [Window() for _ in state.windows]
        return None
    if command == "record":
        state.recording = bool(message[1])
        return None
    if command == "records":
        records, state.records = state.records, []
        return records
    if command == "fail":
        state.failing.update(event_id.encode() for event_id in message[1])
        return state.failed
    if command == "drop_hung":
        hung = list(state.hung)
        for transport in hung:
            transport.abort()
        return len(hung)
    raise ValueError(f"unknown receiver command {command!r}")


def _control(
    control: Connection,
    loop: asyncio.AbstractEventLoop,
    state: _State,
    stopped: asyncio.Future[None],
) -> None:
    """Answer the parent's commands, each computed on the event loop's thread."""
    while True:
        try:
            message = control.recv()
        except EOFError:
            message = ("stop",)
        if message[0] == "stop":
            loop.call_soon_threadsafe(_finish, stopped)
            return
        answer = asyncio.run_coroutine_threadsafe(_on_loop(state, message), loop)
        control.send(answer.result())


def _finish(stopped: asyncio.Future[None]) -> None:
    if not stopped.done():
        stopped.set_result(None)


async def _on_loop(state: _State, message: tuple[Any, ...]) -> Any:
    return _answer(state, message)


async def _main(control: Connection, ports: int, hang: Sequence[int]) -> None:
    loop = asyncio.get_running_loop()
    state = _State([Window() for _ in range(ports)])
    servers = []
    for port in range(ports):
        server = await loop.create_server(
            lambda port=port: _Http(state, port, port in hang),  # type: ignore[misc]
            "127.0.0.1",
            0,
            backlog=2048,
        )
        servers.append(server)
    control.send([s.sockets[0].getsockname()[1] for s in servers])
    stopped: asyncio.Future[None] = loop.create_future()
    # The pipe is served from a thread with blocking I/O: an event loop's reader would make the
    # descriptor non-blocking, and a large answer (the records) would then fail half-written.
    threading.Thread(target=_control, args=(control, loop, state, stopped), daemon=True).start()
    await stopped
    for server in servers:
        server.close()
    for transport in list(state.hung):
        transport.abort()


def _serve(control: Connection, ports: int, hang: Sequence[int]) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up for the receiver process only

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_main(control, ports, hang))


class Receiver:
    """The parent's handle on a receiver process listening on `ports` loopback ports."""

    def __init__(self, ports: int = 1, hang: Sequence[int] = ()) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, theirs = context.Pipe()
        self._proc = context.Process(
            target=_serve, args=(theirs, ports, tuple(hang)), daemon=True, name="bench-receiver"
        )
        self._proc.start()
        theirs.close()
        if not self._control.poll(30):
            self._proc.kill()
            raise OutboxError("the benchmark receiver did not start within 30s")
        self.ports: list[int] = self._control.recv()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def url(self, port: int = 0, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def _ask(self, *message: Any) -> Any:
        self._control.send(message)
        if not self._control.poll(30):
            raise OutboxError("the benchmark receiver stopped answering")
        return self._control.recv()

    def windows(self) -> list[Window]:
        return [Window(c, f, last) for c, f, last in self._ask("stats")]

    def window(self, ports: Sequence[int] | None = None) -> Window:
        """The arrivals on `ports` (all by default) merged into one window."""
        chosen = self.windows()
        merged = Window()
        for index, window in enumerate(chosen):
            if ports is None or index in ports:
                merged = merged.merge(window)
        return merged

    def count(self, ports: Sequence[int] | None = None) -> int:
        return self.window(ports).count

    def reset(self) -> None:
        self._ask("reset")

    def record(self, *, on: bool) -> None:
        """Start or stop keeping (X-Stover-Event-Id, arrival time) for every request."""
        self._ask("record", on)

    def records(self) -> list[tuple[str, float]]:
        """The records kept since the last call."""
        records: list[tuple[str, float]] = self._ask("records")
        return records

    def fail(self, event_ids: Sequence[str]) -> None:
        """Answer 500 to these events' requests from now on, counting them apart (`failed`)."""
        self._ask("fail", list(event_ids))

    def failed(self) -> int:
        """Requests answered 500 because their event was to fail."""
        return int(self._ask("fail", []))

    def drop_hung(self) -> int:
        """Close every connection held open on a never-answering port."""
        return int(self._ask("drop_hung"))

    def cpu(self) -> float:
        return cpu_seconds(self._proc.pid) if self._proc.pid else float("nan")

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._control.send(("stop",))
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._control.close()
