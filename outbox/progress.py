"""Counts on stderr while long work runs: one updating line on a terminal, else a line every few
seconds, so a log collector gets periodic counts instead of carriage returns."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`progress(text)` shows `label: text` when the last update is old enough; `step` always."""

    def __init__(self, label: str, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self._last = 0.0
        self._shown = 0

    def __call__(self, text: str) -> None:
        """Show `text` if the last update is old enough (cheap to call in a polling loop)."""
        now = time.monotonic()
        if now - self._last < (0.1 if self.tty else self.every):
            return
        self._last = now
        self._write(text)

    def step(self, text: str) -> None:
        """Show `text` now: the end of a phase."""
        self._last = time.monotonic()
        self._write(text, final=True)

    def _write(self, text: str, *, final: bool = False) -> None:
        line = f"{self.label}: {text}"
        if self.tty:
            pad = max(self._shown - len(line), 0)
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self._shown = 0 if final else len(line) + pad
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = 0
