"""POST one delivery attempt to a receiver and describe what happened, never raising for it."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Final

from pyreqwest import exceptions as rq
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.http import Url
from pyreqwest.response import Response

from outbox import netguard

AUDIT_BODY_BYTES: Final = 4096
# Beyond this a response body is not read any further and its connection is dropped, so an
# endless or huge answer costs neither time nor memory.
BODY_READ_LIMIT: Final = 64 * 1024
# Shorter than the 5 s idle timeout of Node's http server, so a pooled connection is rarely
# reused in the instant the receiver closes it (a POST is not retried on a stale connection).
KEEPALIVE_SECONDS: Final = 4.0
# How long a host's checked addresses are trusted before the name is looked up again. A lookup
# is cheap; a changed answer costs a new client (~5 ms of CPU: it loads the system's roots).
READDRESS_SECONDS: Final = 60.0
MAX_TRACKED_HOSTS: Final = 1024
SETTLE_SECONDS: Final = 0.05  # see Sender.__aexit__
_BAD_HEADER: Final = "invalid_header: a header name or value that HTTP cannot carry"
_OS_ERROR: Final = re.compile(r" \(os error \d+\)$")

HostKey = tuple[str, str, int | None]  # scheme, host, port: one line of attempts per target
# Looks a name up: the addresses it has, best first (the default asks the system's resolver).
Lookup = Callable[[str, int], Awaitable[list[str]]]


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


@dataclass(frozen=True, slots=True)
class _Target:
    """A vetted URL: what to connect to, and whether its name must be pinned to checked
    addresses (a name, with the SSRF guard on)."""

    url: str
    host: str  # as the URL parser that connects reads it; an IPv6 literal without brackets
    port: int
    key: HostKey
    pinned: bool


@dataclass(slots=True)
class _Route:
    """A client whose only way to a host is one address that the guard has checked."""

    client: Client
    address: str
    checked_at: float
    failed: bool = False


class Sender:
    """The relay's HTTP client: pooled connections, one `send` per delivery attempt.

    With the SSRF guard on, every host name gets its own client whose resolver knows one
    address, checked before the client was built: the address connected to is the one checked,
    so a name re-pointed at a private address between the check and the connect gets nowhere.
    The name is looked up again every READDRESS_SECONDS and after a failed connect."""

    def __init__(
        self,
        *,
        timeout: float,
        allow_private_networks: bool,
        max_connections: int = 256,
        max_per_host: int = 64,
        user_agent: str,
        lookup: Lookup | None = None,
        is_blocked: Callable[[str], bool] = netguard.is_blocked_address,
    ) -> None:
        if max_connections < 1 or max_per_host < 1:
            raise ValueError("max_connections and max_per_host must be at least 1")
        self._timeout = timeout
        self._allow_private = allow_private_networks
        self._max_per_host = max_per_host
        self._user_agent = user_agent
        self._lookup = lookup or _system_lookup
        self._is_blocked = is_blocked
        self._timeout_error = f"timeout: no response within {timeout:g}s"
        self._shared: Client | None = None
        self._routes: dict[str, _Route] = {}
        self._readdressing: dict[str, asyncio.Task[_Route | str]] = {}
        # Attempts queue here, first come first served, rather than in the client's pool, so
        # the timeout (which the client starts at send) never includes waiting for a turn.
        self._slots = Slots(max_connections)
        self._host_slots: dict[HostKey, Slots] = {}

    async def __aenter__(self) -> Sender:
        self._shared = self._build(None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._readdressing.values():
            task.cancel()
        self._readdressing.clear()
        clients = [route.client for route in self._routes.values()]
        self._routes.clear()
        if self._shared is not None:
            clients.append(self._shared)
            self._shared = None
        for client in clients:
            await client.close()
        # pyreqwest's runtime thread finishes tearing a closed client down after close()
        # returns; if the interpreter is finalizing by then, that thread aborts the process
        # (measured: 3-5 exits in 40 with SIGABRT right after a one-off send; none with a
        # 1 ms pause). A process leaves its last Sender only on its way out, so wait longer.
        await asyncio.sleep(SETTLE_SECONDS)

    def _build(self, pin: tuple[str, str] | None) -> Client:
        builder = (
            ClientBuilder()
            .timeout(timedelta(seconds=self._timeout))  # connect, send and the whole answer
            .follow_redirects(False)
            .referer(False)
            .gzip(False)  # no Accept-Encoding: receivers answer uncompressed
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .no_proxy()
            .pool_idle_timeout(timedelta(seconds=KEEPALIVE_SECONDS))
            .pool_max_idle_per_host(self._max_per_host)
            .user_agent(self._user_agent)
        )
        if pin is not None:
            name, address = pin
            builder = builder.resolve(name, address, 0)  # port 0: the URL's port is used
        return builder.build()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """POST `body` to `url` with `headers` (the client adds Host, Content-Length and
        `Accept: */*`, and the User-Agent when not given); redirects are reported, not
        followed."""
        shared = self._shared
        if shared is None:
            raise RuntimeError("Sender.send called outside `async with Sender(...)`")
        target = _vet(url, self._allow_private)
        if isinstance(target, str):
            return _failed(target, None, time.perf_counter())
        host_slots = self._host_slots.get(target.key) or self._add_host(target.key)
        slots = self._slots
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
        try:
            client = await self._client_for(target) if target.pinned else shared
            if isinstance(client, str):
                return _failed(client, None, started)
            # The answer comes with up to 64 KiB of its body already read (pyreqwest's stream
            # buffer): one hand-over from the client's thread instead of two (~6 us a delivery,
            # against handing it over at its headers). So a body that breaks off or stalls in
            # its first 64 KiB is recorded without the status code that came before it.
            try:
                request = client.post(target.url).headers(headers).body_bytes(body).build_streamed()
            except ValueError:
                # Never the value itself in the error: headers can carry credentials.
                return _failed(_BAD_HEADER, None, started)
            async with request as response:
                status = response.status
                kept = await _read_capped(response)
                return _answered(response, status, kept, started)
        except rq.PyreqwestError as exc:
            error = _describe(exc, target, self._timeout_error)
            if target.pinned and (
                isinstance(exc, rq.ConnectTimeoutError) or error.startswith("connect:")
            ):
                self._forget_address(target.host)
        finally:
            slots.give()
            host_slots.give()
        return _failed(error, status, started)

    async def _client_for(self, target: _Target) -> Client | str:
        """The host's pinned client, or why no request may be made to it."""
        route = self._routes.get(target.host)
        fresh = route is not None and time.monotonic() - route.checked_at < READDRESS_SECONDS
        if route is not None and fresh and not route.failed:
            return route.client
        task = self._readdressing.get(target.host)
        if task is None:
            task = asyncio.create_task(self._readdress(target, route))
            self._readdressing[target.host] = task
            task.add_done_callback(lambda _: self._readdressing.pop(target.host, None))
        found = await asyncio.shield(task)  # one lookup per host, however many attempts wait
        return found if isinstance(found, str) else found.client

    async def _readdress(self, target: _Target, route: _Route | None) -> _Route | str:
        """Look the host up and check its addresses; keep the client when its address is
        still among them."""
        host = target.host
        allowed = await self._allowed_addresses(host, target.port)
        if isinstance(allowed, str):
            # Pooled connections to the old address go with its client: nothing more is sent
            # to the name until it resolves to an address the guard allows.
            self._routes.pop(host, None)
            return allowed
        now = time.monotonic()
        if route is not None and route.address in allowed:
            if not route.failed:
                route.checked_at = now
                return route
            # The address stopped answering: try the next one the name has, if any.
            address = allowed[(allowed.index(route.address) + 1) % len(allowed)]
        else:
            address = allowed[0]
        if route is not None and route.address == address:
            route.failed, route.checked_at = False, now
            return route
        if len(self._routes) >= MAX_TRACKED_HOSTS:
            self._forget_stale(now)
        fresh = self._routes[host] = _Route(self._build((host, address)), address, now)
        return fresh

    async def _allowed_addresses(self, host: str, port: int) -> list[str] | str:
        """The host's addresses that the guard allows, best first, or why there are none."""
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await self._lookup(host, port)
        except TimeoutError:
            return f"dns: cannot resolve {host}: no answer in time"
        except OSError as exc:
            return f"dns: cannot resolve {host}: {_reason(exc)}"
        if not addresses:
            return f"dns: cannot resolve {host}: no addresses found"
        allowed = [address for address in addresses if not self._is_blocked(address)]
        if not allowed:
            first = addresses[0]
            return f"blocked: {host} resolves to private address {first} {netguard.ALLOW_HINT}"
        return allowed

    def _forget_address(self, host: str) -> None:
        route = self._routes.get(host)
        if route is not None:
            route.failed = True

    def _forget_stale(self, now: float) -> None:
        # A client dropped here finishes the attempts it has in flight and then goes.
        for host, route in list(self._routes.items()):
            if now - route.checked_at >= READDRESS_SECONDS:
                del self._routes[host]

    def _add_host(self, host: HostKey) -> Slots:
        if len(self._host_slots) >= MAX_TRACKED_HOSTS:
            for key, slots in list(self._host_slots.items()):
                if slots.idle():
                    del self._host_slots[key]
        slots = self._host_slots[host] = Slots(self._max_per_host)
        return slots


async def _system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


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
def _vet(url: str, allow_private: bool) -> _Target | str:
    """Where `url` leads, or why no request may be made to it (cached: endpoints repeat)."""
    problem = netguard.check_url(url)
    if problem is not None:
        return f"invalid_url: {problem}"
    # The URL as the parser that connects reads it: the host judged is the host connected to.
    try:
        parsed = Url(url)
    except ValueError as exc:
        return f"invalid_url: not a valid URL: {_one_line(str(exc), 200)}"
    raw = parsed.host_str or ""
    host = raw[1:-1] if raw.startswith("[") else raw
    literal = netguard.literal_address(host)
    written = netguard.url_host(url)
    if netguard.literal_address(written) != literal or (literal is None and written != host):
        return "invalid_url: not a valid URL: its parts are ambiguous"
    # An IP literal is never looked up, so it is checked here.
    if not allow_private and literal is not None and netguard.is_blocked_address(host):
        return f"blocked: {literal} is a private address {netguard.ALLOW_HINT}"
    port = parsed.port_or_known_default or 0
    key = (parsed.scheme, host, parsed.port)
    return _Target(url, host, port, key, pinned=not allow_private and literal is None)


async def _read_capped(response: Response) -> bytes:
    """The first AUDIT_BODY_BYTES of the body, reading at most about BODY_READ_LIMIT of it."""
    length = response.get_header("content-length")
    if length is not None and length.isdigit() and int(length) <= BODY_READ_LIMIT:
        data = await response.bytes()
        return bytes(data if len(data) <= AUDIT_BODY_BYTES else data[:AUDIT_BODY_BYTES])
    reader = response.body_reader
    kept = bytearray()
    seen = 0
    while seen <= BODY_READ_LIMIT:
        chunk = await reader.read_chunk()
        if chunk is None:
            return bytes(kept)
        seen += len(chunk)
        if len(kept) < AUDIT_BODY_BYTES:
            kept += bytes(chunk[: AUDIT_BODY_BYTES - len(kept)])
    # Leaving the response unread to its end closes its connection instead of pooling it.
    return bytes(kept)


def _answered(response: Response, status: int, kept: bytes, started: float) -> Outcome:
    error: str | None = None
    if 300 <= status < 400:
        location = response.get_header("location")
        target = f"to {_one_line(location)}" if location else "without a Location header"
        error = f"redirect: {status} {target}"
    elif not 200 <= status < 300:
        error = f"http: {status}"
    retry_after = response.get_header("retry-after") if status in {429, 503} else None
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


def _describe(  # noqa: PLR0911 - a flat ladder, one class a line
    exc: rq.PyreqwestError, target: _Target, timeout_error: str
) -> str:
    """One line naming the failure's class (`timeout`, `connect:`, `tls:`...) and its cause."""
    if isinstance(exc, rq.RequestTimeoutError):
        return timeout_error
    causes = _causes(exc)
    cause = causes[-1] if causes else exc.message
    where = f"{target.host}:{target.port}"
    text = " ".join(causes)
    if "connection closed before message completed" in text or "reset by peer" in text:
        return "disconnected: the server closed the connection before answering"
    if isinstance(exc, rq.ConnectError):
        if "dns error" in causes:
            return f"dns: cannot resolve {target.host}: {cause}"
        if "tcp connect error" in causes or target.key[0] != "https":
            return f"connect: cannot connect to {where}: {cause}"
        if "certificate" in cause:
            return f"tls: certificate of {where} rejected: {cause}"
        return f"tls: handshake with {where} failed: {cause}"
    if isinstance(exc, rq.ReadError) or "body" in text:
        return f"protocol: response body broken off: {cause}"
    if "parse" in text or "invalid" in text:
        return f"protocol: invalid HTTP response: {cause}"
    return f"connection: {cause}"


def _causes(exc: rq.PyreqwestError) -> list[str]:
    details = getattr(exc, "details", None)
    found = (details or {}).get("causes") or []
    return [_OS_ERROR.sub("", _one_line(c["message"])) for c in found]


def _reason(exc: OSError) -> str:
    return _one_line(exc.strerror or str(exc) or type(exc).__name__)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"
