"""The claim as sent: compact enough for psycopg to keep its conversion between executions."""

from __future__ import annotations

import pytest
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

from outbox.db.store import CLAIM
from outbox.sqlfiles import compact


@pytest.mark.parametrize(
    ("walk", "limits"), [(False, False), (False, True), (True, False)], ids=str
)
def test_the_claims_a_relay_runs_on_every_turn_fit_psycopgs_statement_cache(
    walk: bool, limits: bool
) -> None:
    # Longer texts are converted again in Python on every execution (~0.1 ms of the relay's
    # CPU a claim); as written, with their comments, the claims are 8 to 12 KB.
    statement = CLAIM[walk, limits]
    assert len(statement.encode()) <= MAX_CACHED_STATEMENT_LENGTH
    assert "--" not in statement


def test_compact_drops_whole_comment_lines_and_indentation_only() -> None:
    statement = (
        "-- what it does\n"
        "select 'a -- b' as text,  -- kept: part of a line\n"
        "\n"
        "       x  from t\n"
        "    -- indented comment\n"
        "where y = '--'"
    )
    assert compact(statement) == (
        "select 'a -- b' as text,  -- kept: part of a line\nx  from t\nwhere y = '--'"
    )
