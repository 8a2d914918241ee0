"""scrub(): a hidden database password never survives into a line, and ordinary words do."""

from __future__ import annotations

import pytest

from outbox import errors


@pytest.fixture(autouse=True)
def _clean() -> None:
    errors._hidden.clear()


def test_a_long_password_is_replaced_wherever_it_stands() -> None:
    errors.hide("s3cret-Pa55")
    assert errors.scrub('bad URI "postgres://u:s3cret-Pa55@[::1/db"') == (
        'bad URI "postgres://u:***@[::1/db"'
    )
    assert errors.scrub("s3cret-Pa55 alone") == "*** alone"


def test_a_short_password_is_replaced_in_connection_strings_only() -> None:
    errors.hide("outbox")
    assert errors.scrub("postgres://outbox:outbox@postgres/outbox") == (
        "postgres://outbox:***@postgres/outbox"
    )
    assert errors.scrub("host=db password=outbox user=outbox") == (
        "host=db password=*** user=outbox"
    )
    assert errors.scrub("run `outbox migrate`") == "run `outbox migrate`"


def test_nothing_hidden_changes_nothing() -> None:
    assert not errors.hiding()
    assert errors.scrub("postgres://u:pw@h/db") == "postgres://u:pw@h/db"
