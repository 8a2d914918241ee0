"""`outbox endpoints test` sends one signed sample event as a relay attempt and reports the
answer: the relay's guard, timeout over the whole attempt, response cap and failure words."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook
from support import outbox_cmd, running_receiver

from outbox import signing


def _endpoint(conn: psycopg.Connection[Any], url: str, types: str = "{deal.*}") -> tuple[str, str]:
    row = conn.execute(
        "insert into outbox.endpoints (url, event_types) values (%s, %s) returning id, secret",
        [url, types],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_sends_a_sample_both_signatures_verify(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    with running_receiver() as receiver:
        endpoint_id, secret = _endpoint(conn, receiver.url())
        conn.execute(
            """update outbox.endpoints set headers = '{"X-Tenant": "acme"}' where id = %s""",
            [endpoint_id],
        )
        done = subprocess.run(
            outbox_cmd("endpoints", "test", endpoint_id),
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "HTTP 200" in done.stdout
        (got,) = receiver.requests
    assert got.headers["X-Stover-Event-Type"] == "deal.closed_lost"  # first subscribed type
    assert signing.verify_stover(secret, got.body, got.headers["X-Stover-Signature"])
    Webhook(secret).verify(got.body, got.headers)
    assert b'"data":{"test":true}' in got.body
    assert got.headers["X-Tenant"] == "acme"  # the endpoint's own headers, as attempts carry
    # Nothing is recorded for a test send.
    assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (0,)


def test_a_failing_answer_exits_non_zero(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    with running_receiver(default=lambda _: (503, b"down", 0.0)) as receiver:
        endpoint_id, _ = _endpoint(conn, receiver.url(), "{*}")
        done = subprocess.run(
            outbox_cmd("endpoints", "test", endpoint_id, "--type", "contact.created"),
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert "HTTP 503" in done.stdout
    assert "down" in done.stdout


def test_private_addresses_are_refused_without_the_opt_in(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    with running_receiver() as receiver:
        endpoint_id, _ = _endpoint(conn, receiver.url().replace("127.0.0.1", "localhost"))
        env = dict(cli_env, OUTBOX_ALLOW_PRIVATE_NETWORKS="0")
        done = subprocess.run(
            outbox_cmd("endpoints", "test", endpoint_id),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert "private address" in done.stdout
        assert receiver.requests == []


@contextmanager
def raw_receiver(answer: Callable[[socket.socket], None]) -> Iterator[tuple[str, list[int]]]:
    """A bare HTTP/1.1 server on 127.0.0.1 that reads one request and then runs `answer` on the
    socket; yields its URL and a list that `answer` may fill (bytes it managed to write)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    written: list[int] = []

    def serve() -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        with client:
            client.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                data += client.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            while len(body) < length:
                body += client.recv(65536)
            with contextlib.suppress(OSError):
                answer(client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook", written
    finally:
        listener.close()
        thread.join(40)


def _run_test(
    cli_env: dict[str, str], endpoint_id: str, **outbox: str
) -> subprocess.CompletedProcess[str]:
    env = dict(cli_env, **{f"OUTBOX_{k.upper()}": v for k, v in outbox.items()})
    return subprocess.run(
        outbox_cmd("endpoints", "test", endpoint_id),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_timeout_bounds_the_whole_attempt(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    """A receiver that trickles its answer a byte at a time, each byte well inside the timeout,
    is cut off at OUTBOX_TIMEOUT over the whole attempt, as the relay does."""
    stop = threading.Event()

    def trickle(client: socket.socket) -> None:
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n")
        for _ in range(60):
            if stop.wait(0.5):
                return
            client.sendall(b"x")

    with raw_receiver(trickle) as (url, _):
        endpoint_id, _ = _endpoint(conn, url)
        done = _run_test(cli_env, endpoint_id, timeout="2")
        stop.set()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "timeout: no response within 2s" in done.stdout
    assert "Traceback" not in done.stderr


def test_an_endless_answer_is_read_only_to_the_relays_cap(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    """A 2xx with a 256 MB body: the command reads about the relay's cap, then drops the
    connection, and reports the answer."""
    total = 256 * 1024 * 1024
    chunk = b"y" * 65536

    def endless(client: socket.socket) -> None:
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        sent = 0
        try:
            while sent < total:
                client.sendall(chunk)
                sent += len(chunk)
        finally:
            written.append(sent)

    with raw_receiver(endless) as (url, written):
        endpoint_id, _ = _endpoint(conn, url)
        done = _run_test(cli_env, endpoint_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HTTP 200" in done.stdout
    # The kernel's socket buffers take a few MB beyond what the client read; the whole body is
    # two orders of magnitude more.
    assert written, "the receiver never finished writing"
    assert written[0] < 32 * 1024 * 1024, written


@pytest.mark.parametrize("case", ["refused", "redirect", "reset"])
def test_failures_are_described_as_the_relay_records_them(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], case: str
) -> None:
    """`endpoints test` prints, for each kind of failure, the very `attempts.error` the relay
    records for a delivery to the same endpoint."""
    answers: dict[str, Callable[[socket.socket], None]] = {
        "redirect": lambda c: c.sendall(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\n"
            b"Content-Length: 0\r\n\r\n"
        ),
        "reset": lambda c: c.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        ),
    }
    if case == "refused":
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        endpoint_id, _ = _endpoint(conn, f"http://127.0.0.1:{port}/hook", "{*}")
        probe_run = _run_test(cli_env, endpoint_id)
        recorded = _relay_error(conn, cli_env)
    else:
        with raw_receiver(answers[case]) as (url, _):
            endpoint_id, _ = _endpoint(conn, url, "{*}")
            probe_run = _run_test(cli_env, endpoint_id)
        with raw_receiver(answers[case]) as (url2, _):
            conn.execute("update outbox.endpoints set url = %s where id = %s", [url2, endpoint_id])
            recorded = _relay_error(conn, cli_env)
    assert probe_run.returncode == 1, probe_run.stdout + probe_run.stderr
    assert recorded, "the relay recorded no error"
    assert f"({recorded})" in probe_run.stdout, (recorded, probe_run.stdout)


def _relay_error(conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> str:
    """Emit one event, let `outbox relay --once` attempt it, and return its attempt's error."""
    conn.execute("select outbox.emit('contact.created', '{\"id\": 1}'::jsonb)")
    env = dict(cli_env, OUTBOX_RETRY_LADDER="0,60")
    done = subprocess.run(
        outbox_cmd("relay", "--once"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    row = conn.execute(
        "select error from outbox.attempts order by started_at desc limit 1"
    ).fetchone()
    assert row is not None, done.stderr
    error: str = row[0]
    return error
