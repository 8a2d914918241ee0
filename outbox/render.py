"""What commands print on stdout: fixed-width tables, field lists and `--json` documents."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TextIO

PIPE_WIDTH = 80
GAP = "  "
ELLIPSIS = "…"
NONE = "-"


@dataclass(frozen=True)
class Column:
    """A table column; flexible ones give up width, from the end or the middle, to fit the line."""

    header: str
    align: Literal["<", ">"] = "<"
    flex: bool = False
    cut: Literal["end", "middle"] = "end"
    min_width: int = 8
    weight: int = 1


def is_tty(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty()


def line_width(stream: TextIO | None = None) -> int:
    """The terminal's width on a terminal, else 80 so piped output has a predictable shape."""
    if not is_tty(stream):
        return PIPE_WIDTH
    return max(shutil.get_terminal_size((PIPE_WIDTH, 24)).columns, 40)


def clean(value: object) -> str:
    """The value as one line of printable text: newlines, tabs, escape codes and other control
    characters are shown escaped, so data from receivers cannot drive the terminal."""
    text = NONE if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def shorten(text: str, width: int, cut: Literal["end", "middle"] = "end") -> str:
    """`text` in at most `width` characters, with an ellipsis where something was left out."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    if cut == "middle":
        head = width // 2
        tail = width - 1 - head
        return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")
    return text[: width - 1] + ELLIPSIS


def fit(columns: Sequence[Column], natural: Sequence[int], width: int) -> list[int]:
    """Column widths for a line of `width`: fixed columns keep their natural width; flexible ones
    give up width the least useful first (lowest weight; among equals, the later column), each
    down to its minimum before the next gives up any."""
    widths = list(natural)
    fixed = sum(w for i, w in enumerate(natural) if not columns[i].flex)
    room = width - fixed - len(GAP) * (len(columns) - 1)
    flexible = [i for i, c in enumerate(columns) if c.flex]
    excess = sum(natural[i] for i in flexible) - room
    for i in sorted(flexible, key=lambda i: (columns[i].weight, -i)):
        if excess <= 0:
            break
        give = min(excess, natural[i] - min(columns[i].min_width, natural[i]))
        widths[i] -= give
        excess -= give
    return widths


def table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[object]],
    *,
    width: int | None = PIPE_WIDTH,
    bold_header: bool = False,
) -> str:
    """A table whose lines are at most `width` characters (when the fixed columns allow it);
    with `width` None, nothing is cut."""
    cells = [[clean(value) for value in row] for row in rows]
    natural = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    widths = natural if width is None else fit(columns, natural, width)

    def line(values: Sequence[str]) -> str:
        parts = [
            f"{shorten(value, w, col.cut):{col.align}{w}}"
            for value, w, col in zip(values, widths, columns, strict=True)
        ]
        return GAP.join(parts).rstrip()

    header = line([c.header for c in columns])
    if bold_header:
        header = f"\x1b[1m{header}\x1b[0m"
    return "\n".join([header, *(line(row) for row in cells)])


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """`label  value` lines with the values aligned."""
    if not pairs:
        return ""
    label_width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label:<{label_width}}  {clean(value)}".rstrip() for label, value in pairs)


def timestamp(value: datetime | None, *, seconds: bool = True) -> str:
    """UTC, like 2024-01-15 10:30:00Z (or without seconds), or `-` for none."""
    if value is None:
        return NONE
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%M")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(document: object) -> str:
    """One JSON document; timestamps in ISO 8601 UTC, dataclasses as objects."""
    return json.dumps(document, indent=2, default=_json_default)


def emit(text: str, stream: TextIO | None = None) -> None:
    """Write a result to stdout; characters its encoding lacks are replaced, not fatal."""
    stream = stream or sys.stdout
    try:
        stream.write(text + "\n")
    except UnicodeEncodeError:
        encoding = stream.encoding or "ascii"
        stream.write((text + "\n").encode(encoding, "replace").decode(encoding))


def emit_json(document: object, stream: TextIO | None = None) -> None:
    emit(to_json(document), stream)


def emit_table(columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> None:
    """Print a table for stdout: on a terminal, fitted to its width with bold headers; piped,
    every value whole, for the program or file that reads it."""
    tty = is_tty()
    emit(table(columns, rows, width=line_width() if tty else None, bold_header=tty))
