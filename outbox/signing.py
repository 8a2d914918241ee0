"""Endpoint secrets and the two HMAC-SHA256 signature schemes every delivery carries."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import secrets
from collections.abc import Mapping, Sequence

from outbox import __version__

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format marker every secret starts with
SECRET_BYTES = 32
_STANDARD_VERSION = "v1,"
# Sent with every delivery, by the relay and by `outbox endpoints test`.
USER_AGENT = f"Stover-Webhooks/{__version__}"


def generate_secret() -> str:
    """A fresh endpoint secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def stover_signature(secret: str, body: bytes) -> str:
    """`X-Stover-Signature`: hex HMAC keyed by the whole secret string, as the seed's snippet is."""
    return "sha256=" + _sign(_stover_hmac(secret), body).hex()


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature` (Standard Webhooks): keyed by the bytes the secret's base64 encodes."""
    digest = _sign(_standard_hmac(secret), f"{msg_id}.{timestamp}.".encode(), body)
    return _STANDARD_VERSION + base64.b64encode(digest).decode("ascii")


def delivery_headers(
    *,
    secret: str,
    event_id: str,
    event_type: str,
    delivery_id: str,
    attempt: int,
    body: bytes,
    timestamp: int,
    user_agent: str,
    previous_secret: str | None = None,
    custom: Sequence[tuple[str, str]] = (),
) -> dict[str, str]:
    """Every header of one delivery attempt; `timestamp` is Unix seconds at signing time.
    `custom` are the endpoint's own headers, sent beside these and never in place of one.

    While a rotation's overlap lasts (`previous_secret`), `webhook-signature` carries a signature
    by each secret, and `X-Stover-Signature`, which holds one that the seed's snippet compares
    whole, is still made with the replaced secret: receivers that have not yet taken the new one
    keep verifying until the overlap ends."""
    standard = standard_signature(secret, event_id, timestamp, body)
    if previous_secret is not None:
        standard += " " + standard_signature(previous_secret, event_id, timestamp, body)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": user_agent,
        "X-Stover-Signature": stover_signature(previous_secret or secret, body),
        "X-Stover-Event-Id": event_id,
        "X-Stover-Event-Type": event_type,
        "X-Stover-Delivery-Id": delivery_id,
        "X-Stover-Attempt": str(attempt),
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
    }
    if custom:
        _add_custom(headers, custom)
    return headers


def _add_custom(headers: dict[str, str], custom: Sequence[tuple[str, str]]) -> None:
    """Add the endpoint's own headers to `headers`. The table refuses names the outbox sets; one
    written with its checks switched off is still left out rather than sent twice."""
    own = {name.lower() for name in headers}
    for name, value in custom:
        if name.lower() not in own:
            headers[name] = value


def verify_stover(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the `X-Stover-Signature` of `body`, compared in constant time."""
    if header is None:
        return False
    expected = stover_signature(secret, body).encode("ascii")
    return hmac.compare_digest(expected, header.encode("utf-8", "replace"))


def verify_standard(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """Whether the Standard Webhooks headers sign `body` within `tolerance` seconds of `now`.

    Malformed headers or secrets make it return False; it never raises.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    offered = lowered.get("webhook-signature")
    if msg_id is None or stamp is None or offered is None:
        return False
    timestamp = _parse_timestamp(stamp)
    if timestamp is None or not abs(now - timestamp) <= tolerance:
        return False
    try:
        expected = standard_signature(secret, msg_id, timestamp, body).encode("ascii")
    except ValueError:
        return False
    # Several entries let a sender sign with an old and a new secret while a rotation settles;
    # every entry is compared so the time taken does not depend on which one matched.
    matched = False
    for entry in offered.split(" "):
        matched |= hmac.compare_digest(expected, entry.encode("utf-8", "replace"))
    return matched


def _sign(keyed: hmac.HMAC, *parts: bytes) -> bytes:
    """The HMAC of `parts` joined, from a copy of an already keyed HMAC object."""
    mac = keyed.copy()
    for part in parts:
        mac.update(part)
    return mac.digest()


# An HMAC object keyed once per secret and copied per signature: a third cheaper than keying
# OpenSSL's HMAC afresh for every signature (two signatures per attempt).
@functools.lru_cache(maxsize=1024)
def _stover_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode("utf-8"), digestmod="sha256")


@functools.lru_cache(maxsize=1024)
def _standard_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(_standard_key(secret), digestmod="sha256")


@functools.lru_cache(maxsize=1024)
def _standard_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"an endpoint secret must start with {SECRET_PREFIX!r}")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError(
            f"the part of an endpoint secret after {SECRET_PREFIX!r} must be valid base64"
        ) from None


def _parse_timestamp(text: str) -> int | None:
    stripped = text.strip()
    digits = stripped.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        return None
    return int(stripped)
