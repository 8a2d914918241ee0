"""Deliveries during and after a rotation's overlap: `webhook-signature` carries a signature by
each secret while it lasts, so the `standardwebhooks` library verifies with the old secret and
with the new; `X-Stover-Signature` stays the old secret's until the overlap ends."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from outbox import signing

from . import add_endpoint, emit_one, header, receiving, running_relay

Conn = psycopg.Connection[Any]


def rotate(conn: Conn, endpoint_id: str, overlap: str) -> str:
    row = conn.execute("select secret from outbox.rotate_secret(%s, %s)", [endpoint_id, overlap])
    found = row.fetchone()
    assert found is not None
    return str(found[0])


def end_overlap(conn: Conn, endpoint_id: str) -> None:
    """What the clock does when the overlap runs out."""
    conn.execute(
        "update outbox.endpoints set previous_secret_until = now() - interval '1 second'"
        " where id = %s",
        [endpoint_id],
    )


async def deliver_one(conn: Conn, db_url: str, receiver: Any) -> Any:
    before = len(receiver.requests)
    emit_one(conn)
    async with running_relay(db_url) as relay:
        tally = await relay.run_once()
    assert tally.delivered == 1
    assert len(receiver.requests) == before + 1
    return receiver.requests[-1]


def verifies(secret: str, request: Any) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_both_secrets_verify_during_the_overlap_and_only_the_new_one_after(
    conn: Conn, db_url: str
) -> None:
    with receiving() as receiver:
        endpoint = add_endpoint(conn, receiver.url("/hook"))
        old = endpoint.secret
        new = rotate(conn, endpoint.id, "1 hour")

        during = await deliver_one(conn, db_url, receiver)
        assert verifies(old, during)
        assert verifies(new, during)
        assert len(header(during, "webhook-signature").split(" ")) == 2
        assert signing.verify_stover(old, during.body, header(during, "X-Stover-Signature"))

        end_overlap(conn, endpoint.id)
        after = await deliver_one(conn, db_url, receiver)
        assert verifies(new, after)
        assert not verifies(old, after)
        assert len(header(after, "webhook-signature").split(" ")) == 1
        assert signing.verify_stover(new, after.body, header(after, "X-Stover-Signature"))
        assert not signing.verify_stover(old, after.body, header(after, "X-Stover-Signature"))


@pytest.mark.parametrize("overlap", ["1 hour", "0"])
async def test_a_second_rotation_signs_with_the_secret_it_replaced_only(
    conn: Conn, db_url: str, overlap: str
) -> None:
    with receiving() as receiver:
        endpoint = add_endpoint(conn, receiver.url("/hook"))
        first = endpoint.secret
        second = rotate(conn, endpoint.id, "1 hour")
        third = rotate(conn, endpoint.id, overlap)
        got = await deliver_one(conn, db_url, receiver)
    assert verifies(third, got)
    assert not verifies(first, got)
    assert verifies(second, got) == (overlap != "0")
    stover = header(got, "X-Stover-Signature")
    assert signing.verify_stover(second if overlap != "0" else third, got.body, stover)
