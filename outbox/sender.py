"""POST one delivery attempt to a receiver and describe what happened, never raising for it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import istr
from yarl import URL

from outbox import netguard

AUDIT_BODY_BYTES: Final = 4096
# Beyond this a response body is not read any further and its connection is dropped, so an
# endless or huge answer costs neither time nor memory.
BODY_READ_LIMIT: Final = 64 * 1024
# Shorter than the 5 s idle timeout of Node's http server, so a pooled connection is rarely
# reused in the instant the receiver closes it (a POST is not retried on a stale connection).
KEEPALIVE_SECONDS: Final = 4.0
MAX_TRACKED_HOSTS: Final = 1024
SWEEP_SECONDS: Final = 0.1  # how often overdue attempts are looked for (at most timeout / 10)
_RESET_ERRNOS: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
_SSL_SOURCE: Final = re.compile(r" \(_ssl\.c:\d+\)")

HostKey = tuple[str, str, int | None]  # scheme, host, port: what aiohttp pools connections by


@dataclass(slots=True)  # not frozen: a frozen dataclass takes ~4x as long to build
class Outcome:
    """One attempt's result, as the relay records it."""

    ok: bool
    status_code: int | None
    error: str | None
    response_body: bytes
    duration_ms: float
    retry_after: str | None
    gone: bool


class BlockedAddressError(OSError):
    """A hostname resolved only to addresses the SSRF guard refuses."""


class GuardedResolver(AbstractResolver):
    """Wraps a resolver and drops blocked addresses; the connector connects only to what is left,
    so a name cannot be re-pointed at a private address between the check and the connect."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results:
            # The connector cannot cope with an empty answer; make it a lookup failure.
            raise OSError(None, "no addresses found")
        allowed = [r for r in results if not netguard.is_blocked_address(r["host"])]
        if not allowed:
            address = results[0]["host"]
            raise BlockedAddressError(
                f"blocked: {host} resolves to private address {address} {netguard.ALLOW_HINT}"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class _ExactRequest(aiohttp.ClientRequest):
    """Sends the caller's headers plus only what HTTP/1.1 needs (Host, Content-Length).

    Dropping aiohttp's Accept and Accept-Encoding defaults here, rather than through
    `skip_auto_headers`, saves rebuilding a skip list on every request; without Accept-Encoding
    receivers answer uncompressed. A caller that gives no Content-Type still gets aiohttp's
    `application/octet-stream`."""

    DEFAULT_HEADERS: dict[istr, str] = {}  # noqa: RUF012 - aiohttp reads it, never mutates it


class Sender:
    """The relay's HTTP client: one pooled session, one `send` per delivery attempt."""

    def __init__(
        self,
        *,
        timeout: float,
        allow_private_networks: bool,
        max_connections: int = 256,
        max_per_host: int = 64,
        user_agent: str,
    ) -> None:
        if max_connections < 1 or max_per_host < 1:
            raise ValueError("max_connections and max_per_host must be at least 1")
        self._timeout = timeout
        self._allow_private = allow_private_networks
        self._max_connections = max_connections
        self._max_per_host = max_per_host
        self._user_agent = user_agent
        self._timeout_error = f"timeout: no response within {timeout:g}s"
        self._session: aiohttp.ClientSession | None = None
        # Attempts queue here, first come first served, rather than in aiohttp's pool: there a
        # task that has just released a connection takes it straight back ahead of older
        # waiters, and the waiting counts against the timeout, so queued attempts can time out
        # without ever being sent.
        self._slots = Slots(max_connections)
        self._host_slots: dict[HostKey, Slots] = {}
        # Each attempt's deadline, by the task making it. One sweeper takes out the overdue ones
        # and cancels their tasks every SWEEP_SECONDS: aiohttp's own timeout schedules and
        # cancels a timer per request (~3% of the relay's CPU at full drain). A deadline may be
        # a little late, never early.
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sender:
        resolver: AbstractResolver = aiohttp.DefaultResolver()
        if not self._allow_private:
            resolver = GuardedResolver(resolver)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_per_host,
            resolver=resolver,
            keepalive_timeout=KEEPALIVE_SECONDS,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The deadline `send` sets covers connecting, sending and reading the whole (capped)
            # response. The slots in `send` admit no more requests than the pool allows, so it
            # never includes waiting for a pooled connection. No timeout of aiohttp's own.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=None),
            headers={"User-Agent": self._user_agent},
            request_class=_ExactRequest,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="outbox-sender-deadlines")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        every = min(SWEEP_SECONDS, self._timeout / 10)
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    del self._deadlines[task]
                    task.cancel()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """POST `body` to `url` with exactly `headers`; redirects are reported, not followed."""
        session = self._session
        if session is None:
            raise RuntimeError("Sender.send called outside `async with Sender(...)`")
        target = _vet(url, self._allow_private)
        if isinstance(target, str):
            return _failed(target, None, time.perf_counter())
        parsed, host = target
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Sender.send must run in an asyncio task")
        host_slots = self._host_slots.get(host) or self._add_host(host)
        slots = self._slots
        # One coroutine per attempt: the slots are taken by plain calls unless they are full, and
        # the request is made here rather than in a helper, since every wake-up of the request
        # resumes each coroutine that awaits it.
        if not host_slots.take_now():
            await host_slots.wait()
        if not slots.take_now():
            try:
                await slots.wait()
            except BaseException:
                host_slots.give()
                raise
        started = time.perf_counter()
        status: int | None = None
        self._deadlines[task] = task.get_loop().time() + self._timeout
        try:
            async with session.post(
                parsed, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                kept = await _read_capped(response)
                return _answered(response, status, kept, started)
        except asyncio.CancelledError:
            # The sweeper's cancellation (it took the deadline out) becomes a timeout; anyone
            # else's goes on up.
            if task in self._deadlines or task.uncancel():
                raise
            error = self._timeout_error
        except aiohttp.ClientError as exc:
            error = _describe(exc)
        except OSError as exc:
            error = _describe_os_error(exc)
        finally:
            self._deadlines.pop(task, None)
            slots.give()
            host_slots.give()
        return _failed(error, status, started)

    def _add_host(self, host: HostKey) -> Slots:
        if len(self._host_slots) >= MAX_TRACKED_HOSTS:
            # Forget idle hosts; aiohttp's own per-host limit still holds meanwhile.
            for key, slots in list(self._host_slots.items()):
                if slots.idle():
                    del self._host_slots[key]
        slots = self._host_slots[host] = Slots(self._max_per_host)
        return slots


class Slots:
    """A first-come-first-served counting semaphore whose uncontended take is a plain call:
    asyncio.Semaphore's `async with` costs three coroutines however free it is."""

    __slots__ = ("_free", "_size", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = self._size = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def idle(self) -> bool:
        return self._free == self._size

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody is waiting for it; else `await wait()`."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait in line for a slot; it is the caller's when this returns."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot in the same instant as being cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Hand the slot to the longest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


@functools.lru_cache(maxsize=4096)
def _vet(url: str, allow_private: bool) -> tuple[URL, HostKey] | str:
    """The parsed URL and its host, or why no request may be made to it (cached: endpoints
    repeat)."""
    problem = netguard.check_url(url)
    if problem is not None:
        return f"invalid_url: {problem}"
    parsed = URL(url)
    host = parsed.raw_host
    # An IP literal never reaches the resolver, so it is checked here.
    if not allow_private and host is not None and netguard.is_blocked_literal(host):
        return f"blocked: {parsed.host} is a private address {netguard.ALLOW_HINT}"
    return parsed, (parsed.scheme, host or "", parsed.port)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The first AUDIT_BODY_BYTES of the body, reading at most about BODY_READ_LIMIT of it."""
    length = response.content_length
    if length is not None and length <= BODY_READ_LIMIT:
        data = await response.read()
        return data if len(data) <= AUDIT_BODY_BYTES else data[:AUDIT_BODY_BYTES]
    kept = bytearray()
    seen = 0
    while seen <= BODY_READ_LIMIT:
        chunk = await response.content.readany()
        if not chunk:
            return bytes(kept)
        seen += len(chunk)
        if len(kept) < AUDIT_BODY_BYTES:
            kept += chunk[: AUDIT_BODY_BYTES - len(kept)]
    response.close()  # drops the connection instead of draining the rest into the pool
    return bytes(kept)


def _answered(
    response: aiohttp.ClientResponse, status: int, kept: bytes, started: float
) -> Outcome:
    error: str | None = None
    if 300 <= status < 400:
        location = response.headers.get("Location")
        target = f"to {_one_line(location)}" if location else "without a Location header"
        error = f"redirect: {status} {target}"
    elif not 200 <= status < 300:
        error = f"http: {status}"
    retry_after = response.headers.get("Retry-After") if status in {429, 503} else None
    return Outcome(
        ok=error is None,
        status_code=status,
        error=error,
        response_body=kept,
        duration_ms=(time.perf_counter() - started) * 1000.0,
        retry_after=retry_after,
        gone=status == 410,
    )


def _failed(error: str, status: int | None, started: float) -> Outcome:
    return Outcome(
        ok=False,
        status_code=status,
        error=error,
        response_body=b"",
        duration_ms=(time.perf_counter() - started) * 1000.0,
        retry_after=None,
        gone=False,
    )


def _describe(exc: aiohttp.ClientError) -> str:  # noqa: PLR0911 - a flat ladder, one class a line
    """One line naming the failure's class (`dns:`, `tls:`, `connect:`...) and its cause."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, BlockedAddressError):
            return str(exc.os_error)
        return f"dns: cannot resolve {exc.host}: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"tls: certificate of {exc.host}:{exc.port} rejected: {_reason(exc.certificate_error)}"
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"tls: handshake with {exc.host}:{exc.port} failed: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect: cannot connect to {exc.host}:{exc.port}: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected: the server closed the connection before answering"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno in _RESET_ERRNOS:
        return f"disconnected: {_reason(exc)}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"protocol: invalid HTTP response: {_one_line(exc.message)}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"protocol: response body broken off: {_reason(exc)}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid_url: {_reason(exc)}"
    return f"connection: {_reason(exc)}"


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"tls: {_reason(exc)}"
    return f"connection: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return _one_line(exc.verify_message)
    if isinstance(exc, OSError) and exc.strerror:
        return _one_line(exc.strerror)
    return _one_line(str(exc) or type(exc).__name__)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(_SSL_SOURCE.sub("", text).split())
    return flat if len(flat) <= limit else flat[:limit] + "…"
