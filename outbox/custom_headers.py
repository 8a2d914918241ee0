"""The rule for an endpoint's own headers, as the table holds it (outbox.headers_problem), and the
`NAME: VALUE` and `N/s` forms the command line takes. No message ever quotes a header's value: it
may be a credential."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

MAX_HEADERS: Final = 20
MAX_NAME: Final = 100
MAX_VALUE: Final = 4096
MAX_TOTAL: Final = 8192
MAX_RATE: Final = 10_000
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_VALUE: Final = re.compile(r"(?:[!-~](?:[ -~]*[!-~])?)?")
_RATE: Final = re.compile(r"([0-9]{1,6})/s")
# Set by the outbox or by HTTP itself: a second one would confuse the receiver or a proxy.
RESERVED: Final = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "user-agent",
    }
)
RESERVED_PREFIXES: Final = ("x-stover-", "webhook-", "proxy-")


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def is_token(name: str) -> bool:
    """Whether `name` is an HTTP token of at most 100 characters (what a header name may be)."""
    return _TOKEN.fullmatch(name) is not None


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a custom header's name, or None."""
    if not _TOKEN.fullmatch(name):
        shown = re.sub(r"[^ -~]", "?", name if len(name) <= 60 else name[:60] + "…")
        return (
            f"header name {_quoted(shown)} is not an HTTP token (letters, digits and "
            "!#$%&'*+-.^_`|~, 1 to 100 characters)"
        )
    lowered = name.lower()
    if lowered in RESERVED or lowered.startswith(RESERVED_PREFIXES):
        return (
            f"header {_quoted(name)} is set by the outbox or by HTTP itself and cannot be "
            "replaced (nor any X-Stover-*, webhook-* or Proxy-* header)"
        )
    return None


def value_problem(name: str, value: str) -> str | None:
    """Why `value` cannot be sent as header `name` (the value itself is never quoted)."""
    if len(value) > MAX_VALUE or not _VALUE.fullmatch(value):
        return (
            f"the value of header {_quoted(name)} must be at most {MAX_VALUE} printable ASCII "
            "characters, without control characters or spaces at either end"
        )
    return None


def headers_problem(headers: Mapping[str, str]) -> str | None:
    """Why this set of custom headers cannot be an endpoint's, or None: the table's rule."""
    if len(headers) > MAX_HEADERS:
        return f"at most {MAX_HEADERS} headers per endpoint"
    seen: set[str] = set()
    total = 0
    for name, value in headers.items():
        problem = name_problem(name)
        if problem is None and name.lower() in seen:
            problem = f"header {_quoted(name)} is given twice (header names ignore case)"
        problem = problem or value_problem(name, value)
        if problem is not None:
            return problem
        seen.add(name.lower())
        total += len(name) + len(value)
    if total > MAX_TOTAL:
        return f"headers take more than {MAX_TOTAL} characters in all"
    return None


def parse_header(text: str) -> tuple[str, str]:
    """`NAME: VALUE` as a name and a value (spaces around the value dropped); ValueError naming
    the problem, never the value."""
    name, colon, value = text.partition(":")
    if not colon:
        raise ValueError("a header is written NAME:VALUE, such as 'Authorization: Bearer …'")
    name, value = name.strip(), value.strip(" \t")
    problem = name_problem(name) or value_problem(name, value)
    if problem is not None:
        raise ValueError(problem)
    return name, value


def parse_rate(text: str) -> int | None:
    """`N/s` (1 to 10,000 attempts started a second) as N, or `off` as None; ValueError else."""
    if text == "off":
        return None
    matched = _RATE.fullmatch(text)
    if matched is None or not 1 <= int(matched.group(1)) <= MAX_RATE:
        raise ValueError(
            f"{text[:40]!r} is not a rate limit: give N/s, the most attempts started a second "
            f"(1 to {MAX_RATE:,}), or off"
        )
    return int(matched.group(1))


def merged(
    current: Mapping[str, str], set_: Mapping[str, str], remove: list[str]
) -> dict[str, str]:
    """`current` with the names in `remove` taken out and `set_` put in, names matched whatever
    their case (a name set again takes the new spelling). KeyError names a removed header the
    endpoint does not have."""
    result = dict(current)
    by_lower = {name.lower(): name for name in result}
    for name in remove:
        held = by_lower.pop(name.lower(), None)
        if held is None:
            raise KeyError(name)
        del result[held]
    for name, value in set_.items():
        held = by_lower.pop(name.lower(), None)
        if held is not None:
            del result[held]
        result[name] = value
        by_lower[name.lower()] = name
    return result
