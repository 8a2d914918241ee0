"""Where the project's .sql files live, in a source checkout and inside an installed wheel."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import LiteralString, cast

_HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The `sql/` folder: packaged as `outbox/sql` in the wheel, at the top of a checkout."""
    for candidate in (_HERE / "sql", _HERE.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError("the sql/ folder is missing from this installation")


@cache
def queries(table: str) -> dict[str, LiteralString]:
    """The named queries of `sql/queries/<table>.sql`, keyed by their `-- name:` header."""
    text = (sql_dir() / "queries" / f"{table}.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    named: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # The files ship with the package and are never built from input, so they are
        # as trusted as a literal in the source.
        named[name] = cast(LiteralString, body.strip())
    return named


def compact(statement: LiteralString) -> LiteralString:
    """`statement` without its whole-line comments, indentation and blank lines.

    psycopg keeps a statement's conversion (its placeholders found and replaced) only for texts
    of at most 4,096 bytes (psycopg._queries.MAX_CACHED_STATEMENT_LENGTH); a longer one is
    parsed again in Python on every execution. The claim, documented line by line, is 8 to 12 KB
    as written and runs on every turn of the relay's loop; compacted, every form of it but one
    (walking the index past 100 endpoints, with rate limits: 4.6 KB) fits. Only whole lines are
    dropped, never part of one, so nothing inside a string literal changes (sql/ has no literal
    spanning lines that starts one with `--`).
    """
    lines = (line.strip() for line in statement.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))
