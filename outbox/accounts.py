"""Account ids as the outbox keeps them: the application's tenant key, as text."""

from __future__ import annotations

import re

from outbox.errors import ConfigError

# The same rule as the SQL constraint endpoint_account_format and outbox.emit(): a bigint, a uuid
# or a slug, 1 to 128 characters.
ACCOUNT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
MAX_LENGTH = 128


def check_account(text: str, option: str = "--account") -> str:
    """The account id if it is well formed, else a ConfigError saying what is wrong with it."""
    if text == "":
        raise ConfigError(f"{option} is empty; give the account's id, such as 42")
    if len(text) > MAX_LENGTH:
        raise ConfigError(
            f"{option} is {len(text)} characters long; at most {MAX_LENGTH} are allowed"
        )
    if not ACCOUNT_PATTERN.fullmatch(text):
        raise ConfigError(
            f"{option} {text!r} must be letters, digits and . _ : @ - "
            "(starting with a letter or digit)"
        )
    return text
