"""Both signature schemes sign the exact body with the key each scheme's verifiers expect."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from outbox.signing import (
    SECRET_PREFIX,
    delivery_headers,
    generate_secret,
    standard_signature,
    stover_signature,
    verify_standard,
    verify_stover,
)

# The Standard Webhooks reference vector (also in svix's test suites).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
OTHER_SECRET = "whsec_" + base64.b64encode(b"\x01" * 32).decode()


def test_generated_secrets_are_prefixed_base64_of_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith(SECRET_PREFIX)
    assert len(base64.b64decode(first.removeprefix(SECRET_PREFIX), validate=True)) == 32
    assert first != second


@pytest.mark.parametrize(
    ("secret", "body", "expected"),
    [
        # Same as Node's crypto.createHmac("sha256", secret).update(body).digest("hex").
        (SECRET, BODY, "sha256=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"),
        (
            "whsec_abc",
            b"",
            "sha256=" + hmac.new(b"whsec_abc", b"", hashlib.sha256).hexdigest(),
        ),
    ],
)
def test_stover_signature_known_vectors(secret: str, body: bytes, expected: str) -> None:
    assert stover_signature(secret, body) == expected


def test_stover_signature_is_keyed_by_the_whole_secret_string_including_the_prefix() -> None:
    by_whole_string = hmac.new(SECRET.encode("utf-8"), BODY, hashlib.sha256).hexdigest()
    decoded_key = base64.b64decode(SECRET.removeprefix(SECRET_PREFIX))
    by_decoded_bytes = hmac.new(decoded_key, BODY, hashlib.sha256).hexdigest()
    assert stover_signature(SECRET, BODY) == f"sha256={by_whole_string}"
    assert stover_signature(SECRET, BODY) != f"sha256={by_decoded_bytes}"


def test_standard_signature_matches_the_reference_vector() -> None:
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert standard_signature(SECRET, MSG_ID, TIMESTAMP, BODY) == expected


def test_standard_signature_is_keyed_by_the_decoded_secret_bytes() -> None:
    key = base64.b64decode(SECRET.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{MSG_ID}.{TIMESTAMP}.".encode() + BODY, hashlib.sha256).digest()
    assert standard_signature(SECRET, MSG_ID, TIMESTAMP, BODY) == (
        "v1," + base64.b64encode(digest).decode()
    )


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_not base64!", "must be valid base64"),
        ("whsec_abc", "must be valid base64"),
        ("sk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
    ],
)
def test_standard_signature_refuses_a_malformed_secret(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        standard_signature(secret, MSG_ID, TIMESTAMP, BODY)


def _headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return delivery_headers(
        secret=secret,
        event_id="evt_1",
        event_type="contact.created",
        delivery_id="42",
        attempt=3,
        body=body,
        timestamp=timestamp,
        user_agent="Stover-Webhooks/0.1.0",
    )


def test_delivery_headers_carry_every_header_of_the_contract() -> None:
    headers = _headers(SECRET, BODY, TIMESTAMP)
    assert headers == {
        "Content-Type": "application/json",
        "User-Agent": "Stover-Webhooks/0.1.0",
        "X-Stover-Signature": stover_signature(SECRET, BODY),
        "X-Stover-Event-Id": "evt_1",
        "X-Stover-Event-Type": "contact.created",
        "X-Stover-Delivery-Id": "42",
        "X-Stover-Attempt": "3",
        "webhook-id": "evt_1",
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": standard_signature(SECRET, "evt_1", TIMESTAMP, BODY),
    }


def test_the_standardwebhooks_library_accepts_our_headers() -> None:
    secret = generate_secret()
    body = b'{"id":"evt_1","data":{"name":"Zo\xc3\xab"}}'
    headers = _headers(secret, body, int(time.time()))
    assert Webhook(secret).verify(body, headers) == {"id": "evt_1", "data": {"name": "Zoë"}}


@pytest.mark.parametrize(
    ("secret", "body", "age"),
    [
        ("right", b'{"id":"evt_2"}', 0),
        ("wrong", b'{"id":"evt_1"}', 0),
        ("right", b'{"id":"evt_1"}', 3600),
    ],
    ids=["tampered body", "wrong secret", "stale timestamp"],
)
def test_the_standardwebhooks_library_rejects_what_it_should(
    secret: str, body: bytes, age: int
) -> None:
    right = generate_secret()
    headers = _headers(right, b'{"id":"evt_1"}', int(time.time()) - age)
    verifier = Webhook(right if secret == "right" else OTHER_SECRET)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body, headers)


@pytest.mark.parametrize(
    ("secret", "body", "header", "expected"),
    [
        (SECRET, BODY, stover_signature(SECRET, BODY), True),
        (SECRET, BODY + b" ", stover_signature(SECRET, BODY), False),
        (OTHER_SECRET, BODY, stover_signature(SECRET, BODY), False),
        (SECRET, BODY, stover_signature(SECRET, BODY).upper(), False),
        (SECRET, BODY, stover_signature(SECRET, BODY).removeprefix("sha256="), False),
        (SECRET, BODY, None, False),
        (SECRET, BODY, "", False),
        (SECRET, BODY, "sha256=é", False),
    ],
    ids=["valid", "tampered", "wrong secret", "case", "no prefix", "absent", "empty", "unicode"],
)
def test_verify_stover(secret: str, body: bytes, header: str | None, expected: bool) -> None:
    assert verify_stover(secret, body, header) is expected


SIGNATURE = standard_signature(SECRET, MSG_ID, TIMESTAMP, BODY)
GOOD = {"webhook-id": MSG_ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE}


@pytest.mark.parametrize(
    ("changes", "now", "expected"),
    [
        ({}, TIMESTAMP, True),
        ({}, TIMESTAMP + 300, True),
        ({}, TIMESTAMP - 300, True),
        ({}, TIMESTAMP + 301, False),
        ({}, TIMESTAMP - 301, False),
        ({"webhook-signature": f"v1,bm9wZQ== {SIGNATURE}"}, TIMESTAMP, True),
        ({"webhook-signature": f"{SIGNATURE} v1,bm9wZQ=="}, TIMESTAMP, True),
        ({"webhook-signature": "v1,bm9wZQ=="}, TIMESTAMP, False),
        ({"webhook-signature": SIGNATURE.replace("v1,", "v2,")}, TIMESTAMP, False),
        ({"webhook-signature": "garbage"}, TIMESTAMP, False),
        ({"webhook-signature": "é"}, TIMESTAMP, False),
        ({"webhook-id": "msg_other"}, TIMESTAMP, False),
        ({"webhook-timestamp": str(TIMESTAMP + 1)}, TIMESTAMP, False),
        ({"webhook-timestamp": "soon"}, TIMESTAMP, False),
        ({"webhook-timestamp": ""}, TIMESTAMP, False),
        ({"webhook-timestamp": "1" * 400}, TIMESTAMP, False),
        ({}, float("nan"), False),
    ],
)
def test_verify_standard(changes: dict[str, str], now: float, expected: bool) -> None:
    assert verify_standard(SECRET, GOOD | changes, BODY, now=now) is expected


def test_verify_standard_finds_headers_in_any_case() -> None:
    headers = {name.title(): value for name, value in GOOD.items()}
    assert verify_standard(SECRET, headers, BODY, now=TIMESTAMP)


def test_verify_standard_rejects_a_tampered_body_and_a_wrong_secret() -> None:
    assert not verify_standard(SECRET, GOOD, BODY + b" ", now=TIMESTAMP)
    assert not verify_standard(OTHER_SECRET, GOOD, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_standard_rejects_missing_headers(missing: str) -> None:
    headers = {name: value for name, value in GOOD.items() if name != missing}
    assert not verify_standard(SECRET, headers, BODY, now=TIMESTAMP)


def test_verify_standard_returns_false_for_a_malformed_secret() -> None:
    assert not verify_standard("whsec_!!!", GOOD, BODY, now=TIMESTAMP)


def test_verify_standard_honours_a_custom_tolerance() -> None:
    assert not verify_standard(SECRET, GOOD, BODY, now=TIMESTAMP + 10, tolerance=5)
    assert verify_standard(SECRET, GOOD, BODY, now=TIMESTAMP + 5, tolerance=5)
