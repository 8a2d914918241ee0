"""Whose turn the next claim starts with: accounts take turns, and endpoints within an account.

The claim (sql/queries/deliveries.sql) walks the enabled endpoints in descending order of account
starting below the account the previous claim reached last, and within each account in descending
order of endpoint id starting below the endpoint that account's previous turn reached, wrapping
round at both levels. After each claim the relay notes where it got to, so the next claim starts
after it. Past 100 enabled endpoints the claim walks endpoints alone (`after`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson


def _reached(endpoints: Iterable[str], after: str) -> str:
    """The endpoint a descending walk starting below `after`, and wrapping round, came to last."""
    return min(endpoints, key=lambda ep: (ep < after, ep))


@dataclass
class Turns:
    """Where the last claim got to."""

    after: str = ""  # the last endpoint reached, for the walk past 100 endpoints
    after_account: str = ""  # the last account reached ('' is the account-less endpoints)
    afters: dict[str, str] = field(default_factory=dict)  # account -> its last endpoint reached

    def params(self) -> dict[str, Any]:
        return {
            "after": self.after,
            "after_account": self.after_account,
            "afters": orjson.dumps(self.afters).decode(),
        }

    def advance(self, claimed: Iterable[tuple[str | None, str]], *, walking: bool) -> None:
        """Note where a claim of these (account, endpoint) pairs got to."""
        pairs = [(account or "", endpoint) for account, endpoint in claimed]
        if not pairs:
            return
        self.after = _reached((endpoint for _, endpoint in pairs), self.after)
        if walking:
            self.afters.clear()  # the walk does not use them; thousands of accounts may pass
            return
        accounts: dict[str, list[str]] = {}
        for account, endpoint in pairs:
            accounts.setdefault(account, []).append(endpoint)
        last = min(accounts, key=lambda account: (account < self.after_account, account))
        for account, endpoints in accounts.items():
            self.afters[account] = _reached(endpoints, self.afters.get(account, ""))
        self.after_account = last
