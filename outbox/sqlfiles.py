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
