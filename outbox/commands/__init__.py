"""One module per CLI verb; each exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def counting_up_to(maximum: int) -> Callable[[str], int]:
    """An argparse type for a count: a whole number from 1 to `maximum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to {maximum}")
        return value

    return parse
