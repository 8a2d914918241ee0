"""`outbox listen`: verifies both signatures, answers 401 to a bad one, fails on request."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO

import httpx
import pytest

from outbox import receiver, signing
from outbox.commands import listen
from tests.support import env_without_outbox, outbox_cmd, stop

SECRET = signing.generate_secret()
BODY = b'{"id":"evt_1","type":"contact.created","created_at":"2024-01-15T10:30:00Z","data":{}}'
EVENT_ID = "evt_0005f1c2d3e4a5b6c7d8e9f0a1"  # as long as the ids outbox.new_id makes


def _read_line(
    stream: IO[bytes] | None, proc: subprocess.Popen[bytes], timeout: float = 20.0
) -> str:
    """The next line of a child's pipe, failing the test if none comes in time."""
    assert stream is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                break
            buffer += chunk
            if buffer.endswith(b"\n"):
                return buffer.decode()
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no line from `outbox listen` within {timeout}s (got {buffer!r})")


@contextmanager
def listening(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`outbox listen` on a free loopback port; yields the process and its base URL."""
    with subprocess.Popen(
        outbox_cmd("listen", "--port", "0", "--secret", SECRET, *args),
        env={**env_without_outbox(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            banner = _read_line(proc.stderr, proc)
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
            assert match, banner
            yield proc, f"http://127.0.0.1:{match[1]}/hooks"
        finally:
            stop(proc)


def _headers(secret: str = SECRET, attempt: int = 1) -> dict[str, str]:
    return signing.delivery_headers(
        secret=secret,
        event_id=EVENT_ID,
        event_type="contact.created",
        delivery_id="7",
        attempt=attempt,
        body=BODY,
        timestamp=int(time.time()),
        user_agent="test",
    )


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """One `outbox listen` shared by the tests that need no options."""
    with listening() as running:
        yield running


def test_a_well_signed_delivery_is_accepted_and_printed_on_one_line(
    listener: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = listener
    response = httpx.post(url, content=BODY, headers=_headers(attempt=2))
    line = _read_line(proc.stdout, proc)
    assert response.status_code == 200
    fields = line.split()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", fields[0])
    assert fields[1:] == ["contact.created", EVENT_ID, "#2", "200", "ok"]
    assert len(line.rstrip("\n")) <= 80


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h: h.update({"X-Stover-Signature": "sha256=" + "0" * 64}), id="stover"),
        pytest.param(lambda h: h.update({"webhook-signature": "v1,AAAA"}), id="standard"),
        pytest.param(lambda h: h.pop("webhook-timestamp"), id="no-timestamp"),
        pytest.param(lambda h: h.update(_headers(signing.generate_secret())), id="other-secret"),
    ],
)
def test_a_bad_signature_is_answered_401(
    listener: tuple[subprocess.Popen[bytes], str], tamper: object
) -> None:
    proc, url = listener
    headers = _headers()
    tamper(headers)  # type: ignore[operator]
    response = httpx.post(url, content=BODY, headers=headers)
    line = _read_line(proc.stdout, proc)
    assert response.status_code == 401
    assert line.split()[-3:] == ["401", "bad", "sig"]


def test_a_changed_body_is_answered_401(listener: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = listener
    response = httpx.post(url, content=BODY + b" ", headers=_headers())
    _read_line(proc.stdout, proc)
    assert response.status_code == 401


def test_fail_rate_one_answers_every_good_request_with_500() -> None:
    with listening("--fail-rate", "1.0") as (proc, url):
        codes = [httpx.post(url, content=BODY, headers=_headers()).status_code for _ in range(3)]
        lines = [_read_line(proc.stdout, proc) for _ in range(3)]
    assert codes == [500, 500, 500]
    assert all(line.split()[-2:] == ["500", "failed"] for line in lines)


def test_a_malformed_secret_is_refused_in_one_line() -> None:
    result = subprocess.run(
        outbox_cmd("listen", "--port", "0", "--secret", "not-a-secret"),
        env=env_without_outbox(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "whsec_" in result.stderr


@pytest.mark.parametrize(
    ("event_type", "event_id", "attempt", "status"),
    [
        ("attribution.tracked", EVENT_ID, "12", 500),
        ("x" * 200, "evt_" + "f" * 200, "123456", 401),
        (None, None, None, 401),
        ("contact.created\x1b[2J", EVENT_ID, "1", 200),
    ],
)
def test_every_printed_line_fits_80_columns_without_control_codes(
    event_type: str | None, event_id: str | None, attempt: str | None, status: int
) -> None:
    seen = receiver.Seen(
        at=datetime.now(UTC),
        event_type=event_type,
        event_id=event_id,
        delivery_id=None,
        attempt=attempt,
        status=status,
        verdict="",
        problem=None,
        body=b"",
    )
    line = listen.format_line(seen)
    assert len(line) <= 80
    assert line.isprintable()
