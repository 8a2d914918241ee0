"""Where the next claim starts: after the account and, within it, the endpoint reached last."""

from __future__ import annotations

import orjson
import pytest

from outbox.db.turns import Turns


@pytest.mark.parametrize(
    ("start", "claimed", "after_account", "afters", "after"),
    [
        # One account-less endpoint: the feed of a single-account installation.
        (Turns(), [(None, "ep_b")], "", {"": "ep_b"}, "ep_b"),
        # Accounts walked down from below a2: a1, then wrapping round, a3, the last reached;
        # a1's endpoints down from the top (its first turn): ep_c, then ep_a. The walk by
        # endpoint alone (past 100 endpoints) would have come to ep_a last.
        (
            Turns(after_account="a2"),
            [("a1", "ep_c"), ("a1", "ep_a"), ("a3", "ep_z")],
            "a3",
            {"a1": "ep_a", "a3": "ep_z"},
            "ep_a",
        ),
        # Within an account, starting below ep_m: ep_k then, wrapping, ep_z: ep_z was last.
        (
            Turns(after_account="", afters={"a1": "ep_m"}),
            [("a1", "ep_k"), ("a1", "ep_z")],
            "a1",
            {"a1": "ep_z"},
            "ep_k",
        ),
    ],
)
def test_a_claim_moves_the_turn_to_where_it_got_to(
    start: Turns,
    claimed: list[tuple[str | None, str]],
    after_account: str,
    afters: dict[str, str],
    after: str,
) -> None:
    start.advance(claimed, walking=False)
    assert (start.after_account, start.afters, start.after) == (after_account, afters, after)


def test_an_empty_claim_leaves_the_turn_where_it_was() -> None:
    turns = Turns(after="ep_q", after_account="a1", afters={"a1": "ep_q"})
    turns.advance([], walking=False)
    assert turns == Turns(after="ep_q", after_account="a1", afters={"a1": "ep_q"})


def test_the_walk_past_a_hundred_endpoints_keeps_no_per_account_turns() -> None:
    turns = Turns(afters={"a1": "ep_q"})
    turns.advance([("a1", "ep_c"), ("a2", "ep_d")], walking=True)
    assert (turns.after, turns.afters) == ("ep_c", {})


def test_the_claims_parameters() -> None:
    params = Turns(after="ep_1", after_account="7", afters={"7": "ep_1"}).params()
    assert params["after"] == "ep_1"
    assert params["after_account"] == "7"
    assert orjson.loads(params["afters"]) == {"7": "ep_1"}
