"""The `outbox` command line: parses arguments, loads settings, wires the verbs together."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from outbox import __version__, config, logs
from outbox.errors import OutboxError, first_line

# Each module in outbox.commands adds its verb(s) with `register(subparsers)`.
COMMANDS = (
    "migrate",
    "relay",
    "endpoints",
    "deliveries",
    "prune",
    "listen",
    "demo",
    "bench",
)
# Verbs registered by a module of another name.
_VERB_MODULE = {"redeliver": "deliveries", "replay": "deliveries"}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2, like every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _modules_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    """Only the module of the verb being run: importing every verb (aiohttp, the benchmark's
    pgqueuer) would cost each invocation a second of start-up. Help listings import them all."""
    if argv is None:
        return COMMANDS
    words = [word for word in argv if not word.startswith("-")]
    if not words:
        return COMMANDS
    module = _VERB_MODULE.get(words[0], words[0])
    return (module,) if module in COMMANDS else COMMANDS


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `argv`, only the verbs that argv can select are loaded."""
    parser = _Parser(
        prog="outbox",
        description="Outgoing webhooks for Stover: a PostgreSQL outbox and its delivery relay.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _modules_for(argv):
        try:
            module = importlib.import_module(f"outbox.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"outbox.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
    try:
        settings = config.load()
        logs.configure(settings.log_format, settings.log_level)
        logs.structured_notices(
            settings.log_format == "json" and getattr(args, "structured_log", False)
        )
        code: int = args.func(args, settings)
    except OutboxError as exc:
        logs.fatal(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("outbox: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        logs.fatal(f"unexpected {type(exc).__name__}: {first_line(exc)}")
        return 1
    return code
