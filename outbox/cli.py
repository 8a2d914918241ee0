"""The `outbox` command line: parses arguments, loads settings, wires the verbs together."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from outbox import __version__, config, logs
from outbox.errors import OutboxError

# Each module in outbox.commands adds its verb(s) with `register(subparsers)`.
COMMANDS = (
    "migrate",
    "relay",
    "endpoints",
    "deliveries",
    "listen",
    "demo",
    "bench",
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2, like every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="outbox",
        description="Outgoing webhooks for Stover: a PostgreSQL outbox and its delivery relay.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"outbox.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"outbox.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = config.load()
        logs.configure(settings.log_format)
        code: int = args.func(args, settings)
    except OutboxError as exc:
        print(f"outbox: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("outbox: interrupted", file=sys.stderr)
        return 130
    return code
