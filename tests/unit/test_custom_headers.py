"""The custom-header and rate-limit rules as tables of inputs and outputs, and the headers an
attempt is signed and sent with."""

from __future__ import annotations

import re

import pytest

from outbox import custom_headers, signing

PARSED = [
    ("Authorization: Bearer abc", ("Authorization", "Bearer abc")),
    ("X-Tenant:acme", ("X-Tenant", "acme")),
    ("  X-Spaced  :  v  ", ("X-Spaced", "v")),
    ("X-Empty:", ("X-Empty", "")),
    ("X-Colons: a:b:c", ("X-Colons", "a:b:c")),
]


@pytest.mark.parametrize(("text", "parsed"), PARSED)
def test_a_header_option_is_a_name_and_a_value(text: str, parsed: tuple[str, str]) -> None:
    assert custom_headers.parse_header(text) == parsed


REFUSED = [
    ("no colon", "NAME:VALUE"),
    (": value", "not an HTTP token"),
    ("Host: h", "cannot be replaced"),
    ("TRANSFER-ENCODING: chunked", "cannot be replaced"),
    ("x-stover-event-id: e", "cannot be replaced"),
    ("Webhook-Signature: s", "cannot be replaced"),
    ("Proxy-Authorization: p", "cannot be replaced"),
    ("X-A: secret\x7f", "printable ASCII"),
    ("X-A: sécret", "printable ASCII"),
]


@pytest.mark.parametrize(("text", "says"), REFUSED)
def test_a_refused_header_option_says_why_and_never_its_value(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as refused:
        custom_headers.parse_header(text)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "rate"), [("1/s", 1), ("100/s", 100), ("10000/s", 10000), ("off", None)]
)
def test_a_rate_limit_is_starts_a_second_or_off(text: str, rate: int | None) -> None:
    assert custom_headers.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0/s", "10001/s", "abc", "100", "100/m", "-1/s", "1.5/s", ""])
def test_a_rate_limit_outside_the_rule_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a rate limit"):
        custom_headers.parse_rate(text)


def test_changes_merge_by_name_whatever_the_case() -> None:
    current = {"Authorization": "a", "X-Tenant": "t"}
    assert custom_headers.merged(current, {"authorization": "b"}, []) == {
        "X-Tenant": "t",
        "authorization": "b",
    }
    assert custom_headers.merged(current, {}, ["x-tenant"]) == {"Authorization": "a"}
    assert custom_headers.merged(current, {"X-Tenant": "u"}, ["X-TENANT"]) == {
        "Authorization": "a",
        "X-Tenant": "u",
    }
    with pytest.raises(KeyError):
        custom_headers.merged(current, {}, ["X-Missing"])


def test_an_attempt_carries_the_custom_headers_beside_its_own() -> None:
    own = {
        "secret": signing.generate_secret(),
        "event_id": "evt_1",
        "event_type": "deal.created",
        "delivery_id": "7",
        "attempt": 1,
        "body": b"{}",
        "timestamp": 1_700_000_000,
        "user_agent": "Stover-Webhooks/test",
    }
    plain = signing.delivery_headers(**own)  # type: ignore[arg-type]
    custom = (("Authorization", "Bearer x"), ("content-type", "text/plain"), ("X-A", "1"))
    sent = signing.delivery_headers(**own, custom=custom)  # type: ignore[arg-type]
    # The outbox's own are unchanged; a name of theirs written past the table's check is dropped.
    assert sent == {**plain, "Authorization": "Bearer x", "X-A": "1"}
