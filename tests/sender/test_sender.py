"""The sender against real servers on 127.0.0.1: what receivers get and how each answer is told."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from outbox import netguard
from outbox import sender as sender_module
from outbox.sender import Outcome, Sender

HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "Stover-Webhooks/test",
    "X-Stover-Signature": "sha256=00",
    "X-Stover-Attempt": "1",
}
BODY = '{"id":"evt_1","data":{"name":"Zoë","amount":1000.5}}'.encode()
STREAM_CHUNK = b"x" * 8192


@dataclass
class Receiver:
    """An aiohttp.web receiver recording what it got; `url(path)` addresses it."""

    base: str = ""
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    transports: set[object] = field(default_factory=set)
    landing_hits: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    stream_ended: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return self.base + path

    async def record(self, request: web.Request) -> None:
        self.transports.add(request.transport)
        self.received.append((request.path, dict(request.headers), await request.read()))

    async def ok(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(text="thanks")

    async def status(self, request: web.Request) -> web.Response:
        await self.record(request)
        code = int(request.match_info["code"])
        headers = {"Retry-After": "120"} if code in {429, 503, 500} else {}
        return web.Response(status=code, text=f"status {code}", headers=headers)

    async def redirect(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(status=302, headers={"Location": "/landing"})

    async def landing(self, request: web.Request) -> web.Response:
        self.landing_hits += 1
        return web.Response(text="landed")

    async def big(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(body=bytes(range(256)) * 40)  # 10240 bytes, with Content-Length

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b"part one, ", b"part two"):
            await response.write(piece)
        await response.write_eof()
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(100_000):  # ~800 MB: far beyond any cap, yet bounded
                await response.write(STREAM_CHUNK)
        except ConnectionError:
            pass
        finally:
            self.stream_ended.set()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        await self.record(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.4)  # a slow receiver, not a wait for something to happen
        finally:
            self.in_flight -= 1
        return web.Response(text="slow")

    async def stall_body(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        response = web.StreamResponse()
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"first ten!")
        await self.release.wait()
        return response


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/ok", rec.ok)
    app.router.add_post("/status/{code}", rec.status)
    app.router.add_post("/redirect", rec.redirect)
    app.router.add_route("*", "/landing", rec.landing)
    app.router.add_post("/big", rec.big)
    app.router.add_post("/chunked", rec.chunked)
    app.router.add_post("/endless", rec.endless)
    app.router.add_post("/stall-body", rec.stall_body)
    app.router.add_post("/slow", rec.slow)
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.base = f"http://127.0.0.1:{port}"
    yield rec
    rec.release.set()
    await runner.cleanup()


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    async with Sender(
        timeout=10.0, allow_private_networks=True, user_agent="Stover-Webhooks/default"
    ) as s:
        yield s


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """A plain TCP server on loopback that counts the connections it accepts."""

    port: int
    connections: int = 0


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, host: str = "127.0.0.1", family: int = socket.AF_INET, port: int = 0
) -> AsyncIterator[RawServer]:
    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accept, host, port, family=family)
    info = RawServer(port=server.sockets[0].getsockname()[1])
    try:
        yield info
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.Event().wait()  # cancelled when the server shuts down


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()


async def answer_anything(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()


async def send_json(sender: Sender, url: str) -> Outcome:
    return await sender.send(url, BODY, HEADERS)


async def test_a_2xx_answer_is_success_and_the_receiver_gets_body_and_headers_exactly(
    sender: Sender, receiver: Receiver
) -> None:
    outcome = await send_json(sender, receiver.url("/ok"))

    assert outcome.ok
    assert outcome.status_code == 200
    assert outcome.error is None
    assert outcome.response_body == b"thanks"
    assert outcome.duration_ms > 0
    assert outcome.retry_after is None
    assert not outcome.gone
    [(path, headers, body)] = receiver.received
    assert path == "/ok"
    assert body == BODY
    sent = {name.lower(): value for name, value in HEADERS.items()}
    added_by_http = {"host", "content-length", "accept"}  # the client always sends Accept: */*
    assert {name.lower() for name in headers} == set(sent) | added_by_http
    for name, value in headers.items():
        if name.lower() in sent:
            assert value == sent[name.lower()]
    assert headers["Content-Length"] == str(len(BODY))


async def test_no_encoding_or_content_headers_are_added(sender: Sender, receiver: Receiver) -> None:
    outcome = await sender.send(receiver.url("/ok"), b"raw \x00\xff bytes", {"X-Only": "this"})

    assert outcome.ok
    [(_, headers, body)] = receiver.received
    assert body == b"raw \x00\xff bytes"
    assert headers.get("Content-Type") is None  # only what the caller gives
    assert headers.get("Accept-Encoding") is None
    assert headers.get("Expect") is None
    assert headers["User-Agent"] == "Stover-Webhooks/default"  # the sender's own, when not given
    assert headers["X-Only"] == "this"


async def test_connections_are_reused_between_attempts(sender: Sender, receiver: Receiver) -> None:
    outcomes = [await send_json(sender, receiver.url("/ok")) for _ in range(20)]

    assert all(outcome.ok for outcome in outcomes)
    assert len(receiver.transports) == 1


async def test_attempts_queued_behind_the_per_host_limit_get_their_full_timeout(
    receiver: Receiver,
) -> None:
    # Six attempts, one connection, 0.4 s each: the last waits about 2 s for its turn, longer
    # than the 1.5 s timeout, which bounds only its own exchange.
    async with Sender(
        timeout=1.5, allow_private_networks=True, max_per_host=1, user_agent="t"
    ) as sender:
        outcomes = await asyncio.gather(
            *(send_json(sender, receiver.url("/slow")) for _ in range(6))
        )

    assert [outcome.error for outcome in outcomes] == [None] * 6
    assert receiver.most_in_flight == 1
    assert len(receiver.received) == 6


@pytest.mark.parametrize("code", [400, 401, 404, 422, 500, 502])
async def test_other_statuses_are_failures_with_the_code(
    sender: Sender, receiver: Receiver, code: int
) -> None:
    outcome = await send_json(sender, receiver.url(f"/status/{code}"))

    assert not outcome.ok
    assert outcome.status_code == code
    assert outcome.error == f"http: {code}"
    assert outcome.response_body == f"status {code}".encode()
    assert outcome.retry_after is None  # only 429 and 503 carry it
    assert not outcome.gone


@pytest.mark.parametrize("code", [200, 201, 202, 204])
async def test_every_2xx_is_success(sender: Sender, receiver: Receiver, code: int) -> None:
    outcome = await send_json(sender, receiver.url(f"/status/{code}"))

    assert outcome.ok
    assert outcome.status_code == code
    assert outcome.error is None


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_is_kept_raw_on_429_and_503(
    sender: Sender, receiver: Receiver, code: int
) -> None:
    outcome = await send_json(sender, receiver.url(f"/status/{code}"))

    assert not outcome.ok
    assert outcome.retry_after == "120"
    assert outcome.error == f"http: {code}"


async def test_410_marks_the_endpoint_gone(sender: Sender, receiver: Receiver) -> None:
    outcome = await send_json(sender, receiver.url("/status/410"))

    assert not outcome.ok
    assert outcome.gone
    assert outcome.error == "http: 410"


async def test_redirects_are_reported_not_followed(sender: Sender, receiver: Receiver) -> None:
    outcome = await send_json(sender, receiver.url("/redirect"))

    assert not outcome.ok
    assert outcome.status_code == 302
    assert outcome.error == "redirect: 302 to /landing"
    assert receiver.landing_hits == 0


async def test_only_the_first_4_kib_of_a_body_is_kept(sender: Sender, receiver: Receiver) -> None:
    outcome = await send_json(sender, receiver.url("/big"))

    assert outcome.ok
    assert outcome.response_body == (bytes(range(256)) * 16)


async def test_a_chunked_body_is_read_whole(sender: Sender, receiver: Receiver) -> None:
    outcome = await send_json(sender, receiver.url("/chunked"))

    assert outcome.ok
    assert outcome.response_body == b"part one, part two"


async def test_an_endless_body_is_cut_off_and_its_connection_dropped(
    sender: Sender, receiver: Receiver
) -> None:
    outcome = await send_json(sender, receiver.url("/endless"))

    assert outcome.ok
    assert outcome.status_code == 200
    assert outcome.error is None
    assert outcome.response_body == STREAM_CHUNK[: sender_module.AUDIT_BODY_BYTES]
    async with asyncio.timeout(10):
        await receiver.stream_ended.wait()  # the receiver saw its connection go away
    second = await send_json(sender, receiver.url("/ok"))
    assert second.ok
    assert len(receiver.transports) == 2  # the cut connection was not put back in the pool


async def test_a_receiver_that_never_answers_times_out() -> None:
    async with (
        raw_server(never_answer) as server,
        Sender(timeout=0.5, allow_private_networks=True, user_agent="t") as sender,
    ):
        outcome = await send_json(sender, f"http://127.0.0.1:{server.port}/hook")

    assert not outcome.ok
    assert outcome.status_code is None
    assert outcome.error == "timeout: no response within 0.5s"


async def test_after_a_timeout_the_same_task_sends_again_and_is_not_left_cancelled(
    receiver: Receiver,
) -> None:
    async with (
        raw_server(never_answer) as server,
        Sender(timeout=0.5, allow_private_networks=True, user_agent="t") as sender,
    ):
        hung = await send_json(sender, f"http://127.0.0.1:{server.port}/hook")
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0  # the timeout's cancellation was taken back
        after = await send_json(sender, receiver.url("/ok"))
        await asyncio.sleep(0.2)  # no cancellation is left pending for a later await

    assert hung.error == "timeout: no response within 0.5s"
    assert after.ok


async def test_cancelling_a_send_from_outside_cancels_it_instead_of_timing_it_out() -> None:
    async with (
        raw_server(never_answer) as server,
        Sender(timeout=5.0, allow_private_networks=True, user_agent="t") as sender,
    ):
        sending = asyncio.create_task(send_json(sender, f"http://127.0.0.1:{server.port}/hook"))
        await asyncio.sleep(0.3)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        # Its slots came back: a full set of attempts can still start at once.
        assert sender._slots.idle()


async def test_a_body_that_stalls_after_the_headers_times_out(receiver: Receiver) -> None:
    async with Sender(timeout=0.5, allow_private_networks=True, user_agent="t") as sender:
        outcome = await send_json(sender, receiver.url("/stall-body"))

    assert not outcome.ok
    assert outcome.status_code is None  # the body's first 64 KiB come with the answer
    assert outcome.error == "timeout: no response within 0.5s"


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"hello\r\n")
    await writer.drain()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def hang_up_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    await writer.drain()


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return


@pytest.mark.parametrize(
    ("handler", "error_class", "status"),
    [
        (garbage, "protocol: invalid HTTP response", None),
        (hang_up, "disconnected:", None),
        (close_at_once, "disconnected:", None),
        (hang_up_mid_body, "protocol: response body broken off", None),
    ],
)
async def test_broken_answers_are_failures_with_a_clear_class(
    sender: Sender, handler: Handler, error_class: str, status: int | None
) -> None:
    async with raw_server(handler) as server:
        outcome = await send_json(sender, f"http://127.0.0.1:{server.port}/hook")

    assert not outcome.ok
    assert outcome.status_code == status
    assert outcome.error is not None
    assert outcome.error.startswith(error_class)
    assert "\n" not in outcome.error


async def test_a_refused_connection_is_a_connect_failure(sender: Sender) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = await send_json(sender, f"http://127.0.0.1:{port}/hook")

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(f"connect: cannot connect to 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/hook", "invalid_url: not an absolute http(s) URL"),
        ("http://user:pw@127.0.0.1/hook", "invalid_url: userinfo"),
        ("not-a-url", "invalid_url: not an absolute http(s) URL"),
        ("not a url", "invalid_url: URL has U+0020 at position 4"),
    ],
)
async def test_unusable_urls_fail_without_a_request(sender: Sender, url: str, reason: str) -> None:
    outcome = await send_json(sender, url)

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(reason)


@pytest.mark.parametrize(
    "headers", [{"X-Token": "secret\nInjected: yes"}, {"X Token": "secret"}, {"X-Token": "a\x00"}]
)
async def test_a_header_that_http_cannot_carry_fails_without_a_request_or_its_value(
    sender: Sender, receiver: Receiver, headers: dict[str, str]
) -> None:
    outcome = await sender.send(receiver.url("/ok"), BODY, headers)

    assert outcome.error == "invalid_header: a header name or value that HTTP cannot carry"
    assert receiver.received == []


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_loopback_targets_are_refused_without_connecting() -> None:
    async with (
        raw_server(answer_ok) as server,
        Sender(timeout=5.0, allow_private_networks=False, user_agent="t") as guarded,
    ):
        port = server.port
        refusals = {
            f"http://127.0.0.1:{port}/hook": "blocked: 127.0.0.1 is a private address",
            f"http://localhost:{port}/hook": (
                "blocked: localhost resolves to private address 127.0.0.1"
            ),
            f"http://LocalHost:{port}/hook": "blocked: localhost resolves to private address",
            f"http://[::ffff:127.0.0.1]:{port}/hook": "blocked: ::ffff:7f00:1 is a private",
            f"http://127.1:{port}/hook": "invalid_url: host '127.1' is not a canonical",
            f"http://2130706433:{port}/hook": "invalid_url: host '2130706433' is not a canonical",
        }
        for url, reason in refusals.items():
            outcome = await send_json(guarded, url)
            assert not outcome.ok
            assert outcome.error is not None
            assert outcome.error.startswith(reason), outcome.error
            assert outcome.error.endswith("(set OUTBOX_ALLOW_PRIVATE_NETWORKS=1 to allow)") or (
                outcome.error.startswith("invalid_url:")
            )
        assert server.connections == 0

        async with Sender(timeout=5.0, allow_private_networks=True, user_agent="t") as allowed:
            control = await send_json(allowed, f"http://localhost:{port}/hook")
        assert control.ok
        assert server.connections == 1


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback here")
async def test_ipv6_loopback_is_refused_without_connecting() -> None:
    async with (
        raw_server(answer_ok, host="::1", family=socket.AF_INET6) as server,
        Sender(timeout=5.0, allow_private_networks=False, user_agent="t") as guarded,
    ):
        outcome = await send_json(guarded, f"http://[::1]:{server.port}/hook")
        assert outcome.error == (
            "blocked: ::1 is a private address (set OUTBOX_ALLOW_PRIVATE_NETWORKS=1 to allow)"
        )
        assert server.connections == 0

        async with Sender(timeout=5.0, allow_private_networks=True, user_agent="t") as allowed:
            control = await send_json(allowed, f"http://[::1]:{server.port}/hook")
        assert control.ok
        assert server.connections == 1


class Answers:
    """A name's DNS answers, one list per lookup (the last repeats); nothing is contacted."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def only_first_loopback_is_public(address: str) -> bool:
    """The guard's rule, except that 127.0.0.1 passes as if it were a public address: the
    tests contact nothing but loopback, and need one address the guard lets through."""
    return address != "127.0.0.1" and netguard.is_blocked_address(address)


def guarded(answers: Answers, timeout: float = 5.0) -> Sender:
    return Sender(
        timeout=timeout,
        allow_private_networks=False,
        user_agent="t",
        lookup=answers,
        is_blocked=only_first_loopback_is_public,
    )


async def test_a_name_is_sent_only_to_an_address_of_its_answer_that_the_guard_allows() -> None:
    answers = Answers(["10.0.0.7", "127.0.0.1", "fd00::1"])
    async with raw_server(answer_ok) as server, guarded(answers) as sender:
        outcome = await send_json(sender, f"http://mixed.example:{server.port}/hook")

    assert outcome.ok, outcome.error
    assert server.connections == 1
    assert answers.lookups == ["mixed.example"]


async def test_a_name_with_only_private_addresses_is_refused_without_connecting() -> None:
    answers = Answers(["169.254.169.254", "::1"])
    async with Sender(
        timeout=5.0, allow_private_networks=False, user_agent="t", lookup=answers
    ) as sender:
        outcome = await send_json(sender, "http://metadata.example/latest")

    assert outcome.error == (
        "blocked: metadata.example resolves to private address 169.254.169.254 "
        "(set OUTBOX_ALLOW_PRIVATE_NETWORKS=1 to allow)"
    )


async def test_a_name_re_pointed_at_a_private_address_is_refused_on_its_next_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first answer is the (pretend) public 127.0.0.1; then the name is re-pointed at
    # 127.0.0.2, which the guard refuses. The pooled connection to the old address is not
    # used either: nothing more reaches the name until it resolves to an allowed address.
    monkeypatch.setattr(sender_module, "READDRESS_SECONDS", 0.0)
    answers = Answers(["127.0.0.1"], ["127.0.0.2"])
    async with (
        raw_server(answer_ok) as public,
        raw_server(answer_ok, host="127.0.0.2", port=public.port) as private,
        guarded(answers) as sender,
    ):
        url = f"http://rebind.example:{public.port}/hook"
        first = await send_json(sender, url)
        second = await send_json(sender, url)

    assert first.ok, first.error
    assert second.error == (
        "blocked: rebind.example resolves to private address 127.0.0.2 "
        "(set OUTBOX_ALLOW_PRIVATE_NETWORKS=1 to allow)"
    )
    assert (public.connections, private.connections) == (1, 0)
    assert answers.lookups == ["rebind.example"] * 2


async def test_a_name_whose_address_stops_answering_is_looked_up_again() -> None:
    # Nothing listens on 127.0.0.3 at the server's port; the name moves to the server.
    async with raw_server(answer_ok) as server:
        answers = Answers(["127.0.0.3"], ["127.0.0.1"])
        async with Sender(
            timeout=5.0,
            allow_private_networks=False,
            user_agent="t",
            lookup=answers,
            is_blocked=lambda address: address not in {"127.0.0.1", "127.0.0.3"},
        ) as sender:
            url = f"http://moved.example:{server.port}/hook"
            refused = await send_json(sender, url)
            moved = await send_json(sender, url)

    assert refused.error is not None
    assert refused.error.startswith(f"connect: cannot connect to moved.example:{server.port}")
    assert moved.ok, moved.error
    assert server.connections == 1
    assert answers.lookups == ["moved.example"] * 2


async def test_a_name_is_looked_up_once_while_its_answer_is_fresh() -> None:
    answers = Answers(["127.0.0.1"])
    async with raw_server(answer_ok) as server, guarded(answers) as sender:
        url = f"http://steady.example:{server.port}/hook"
        outcomes = await asyncio.gather(*(send_json(sender, url) for _ in range(5)))

    assert all(outcome.ok for outcome in outcomes)
    assert answers.lookups == ["steady.example"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "Name or service not known",
        ),
        ([], "no addresses found"),
    ],
)
async def test_a_failed_lookup_is_a_dns_failure(answer: object, error: str) -> None:
    async def lookup(host: str, port: int) -> list[str]:
        if isinstance(answer, OSError):
            raise answer
        return []

    async with Sender(
        timeout=5.0, allow_private_networks=False, user_agent="t", lookup=lookup
    ) as sender:
        outcome = await send_json(sender, "http://hooks.example/hook")

    assert outcome.error == f"dns: cannot resolve hooks.example: {error}"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:FALSE",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_an_untrusted_certificate_is_a_tls_failure(
    sender: Sender, self_signed: tuple[Path, Path]
) -> None:
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response()

    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        outcome = await send_json(sender, f"https://127.0.0.1:{runner.addresses[0][1]}/hook")
    finally:
        await runner.cleanup()

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("tls: certificate of 127.0.0.1:")
    assert "invalid peer certificate: UnknownIssuer" in outcome.error
    assert hits == []


async def test_certificates_are_checked_against_the_system_trust_store(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SSL_CERT_FILE names the system's roots (as for OpenSSL); here it holds the test's own.
    cert, key = self_signed
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(answer_ok, "127.0.0.1", 0, ssl=context)
    async with (
        server,
        Sender(timeout=5.0, allow_private_networks=True, user_agent="t") as sender,
    ):
        port = server.sockets[0].getsockname()[1]
        outcome = await send_json(sender, f"https://127.0.0.1:{port}/hook")

    assert outcome.ok, outcome.error


async def test_https_to_a_plain_http_server_is_a_tls_failure(sender: Sender) -> None:
    async with raw_server(answer_anything) as server:
        outcome = await send_json(sender, f"https://127.0.0.1:{server.port}/hook")

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(f"tls: handshake with 127.0.0.1:{server.port} failed")


async def test_sending_outside_the_context_is_a_programming_error() -> None:
    idle = Sender(timeout=1.0, allow_private_networks=True, user_agent="t")

    with pytest.raises(RuntimeError, match="outside"):
        await idle.send("http://127.0.0.1:9/hook", BODY, HEADERS)


ONE_SEND_AND_EXIT = """
import asyncio, sys
from outbox.sender import Sender

async def main() -> None:
    async with Sender(timeout=5.0, allow_private_networks=True, user_agent="t") as sender:
        outcome = await sender.send(sys.argv[1], b"{}", {})
    print(outcome.error)

asyncio.run(main())
"""


def test_a_process_that_sends_and_exits_exits_cleanly() -> None:
    # The HTTP client's own thread can still be at work when the interpreter shuts down; the
    # sender waits for it on the way out (without that, about one exit in eight aborted).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    codes = []
    for _ in range(8):
        done = subprocess.run(
            [sys.executable, "-c", ONE_SEND_AND_EXIT, f"http://127.0.0.1:{port}/hook"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        codes.append(done.returncode)
        assert done.stdout.startswith("connect: cannot connect"), done.stdout + done.stderr
    assert codes == [0] * 8
