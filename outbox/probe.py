"""One-off test sends from the CLI: a signed sample delivery to an endpoint, over httpx.

The relay's hot path uses aiohttp behind outbox.sender; a single request from a command line is
where httpx's synchronous API serves best.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from outbox import netguard, payload, signing


@dataclass(frozen=True)
class ProbeResult:
    """What the endpoint answered to the test send."""

    event_id: str
    status_code: int | None
    error: str | None
    duration_ms: float
    response_body: str

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def send_test(
    url: str, secret: str, event_type: str, *, timeout: float, allow_private_networks: bool
) -> ProbeResult:
    """POST a signed sample event (data {"test": true}) exactly as the relay would send one."""
    now = datetime.now(UTC)
    event_id = f"evt_test_{secrets.token_hex(8)}"
    body = payload.render_event(event_id, event_type, now, json.dumps({"test": True}), None)
    headers = signing.delivery_headers(
        secret=secret,
        event_id=event_id,
        event_type=event_type,
        delivery_id="test",
        attempt=1,
        body=body,
        timestamp=int(now.timestamp()),
        user_agent=signing.USER_AGENT,
    )
    started = time.perf_counter()
    problem = netguard.check_url(url)
    if problem is None and not allow_private_networks:
        problem = _private(httpx.URL(url).host)
    if problem is not None:
        return ProbeResult(event_id, None, f"invalid_url: {problem}", 0.0, "")
    try:
        # No redirects, no proxies from the environment: the same rules as the relay.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        return ProbeResult(
            event_id, None, f"timeout: no response within {timeout:g}s", _ms(started), ""
        )
    except httpx.HTTPError as exc:
        return ProbeResult(event_id, None, f"connect: {exc}", _ms(started), "")
    text = response.content[:4096].decode("utf-8", "replace")
    error = None if 200 <= response.status_code < 300 else f"http: {response.status_code}"
    return ProbeResult(event_id, response.status_code, error, _ms(started), text)


def _private(host: str) -> str | None:
    """Why the host may not be reached without OUTBOX_ALLOW_PRIVATE_NETWORKS, if it may not."""
    if netguard.literal_address(host) is not None:
        addresses = [host]
    else:
        try:
            addresses = [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
        except OSError as exc:
            return f"dns: cannot resolve {host}: {exc}"
    blocked = [a for a in addresses if netguard.is_blocked_address(str(a))]
    if blocked:
        return f"{host} resolves to private address {blocked[0]} {netguard.ALLOW_HINT}"
    return None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
