"""Durations written the way operators write them: 30d, 12h, 90m, 1d12h, 2w."""

from __future__ import annotations

import re
from datetime import timedelta

from outbox.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"([0-9]+)([smhdw])")
_MAX_AGE = timedelta(days=36_500)


def parse_age(text: str, option: str = "--older-than", *, zero: bool = False) -> timedelta:
    """A duration such as 30d, 12h, 90m, 1d12h or 2w, longer than zero (or `0` when `zero`
    allows it), given as `option` (a command's option, or a variable such as OUTBOX_RETENTION,
    which errors name)."""
    shown = repr(text if len(text) <= 60 else text[:60] + "…")
    said = f"{option}={shown}" if option.startswith("OUTBOX_") else f"{option} {shown}"
    compact = text.strip().lower()
    if zero and compact == "0":
        return timedelta(0)
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(
            f"{said} is not a duration such as 30d, 12h, 90m or 1d12h (units s, m, h, d, w)"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0 and not zero:
        raise ConfigError(f"{said} must be longer than zero")
    if seconds > _MAX_AGE.total_seconds():
        raise ConfigError(f"{said} is longer than 100 years")
    return timedelta(seconds=seconds)
