"""The `outbox` command line: parses arguments, loads settings, wires the verbs together."""

from __future__ import annotations

import argparse
import importlib
import itertools
import re
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
    "dashboard",
    "portal",
)
# Verbs registered by a module of another name.
_VERB_MODULE = {"redeliver": "deliveries", "replay": "deliveries", "portal-link": "portal"}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2, like every other error here."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = sys.argv[1:] if args is None else list(args)
        for position, word in enumerate(words, start=1):
            problem = _unreadable(word)
            if problem is not None:
                self.error(f"argument {position} {problem}")
        # `--status --` and `--status=--`: argparse takes the `--` that ends the options as an
        # empty list of values for the option, which would then read as "no filter".
        for word, following in itertools.pairwise([*words, ""]):
            option, equals, value = word.partition("=")
            empty = value == "--" if equals else following == "--"
            if empty and isinstance(self._option_string_actions.get(option), argparse._StoreAction):
                self.error(f"argument {option}: expected one argument")
        return super().parse_known_args(words, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        # A check that names its option already ("--since 'x' is not…") needs no "argument
        # --since: " before it.
        message = re.sub(r"^argument (\S+): (?=\1\b)", "", message)
        self.exit(2, f"outbox: error: {message}\n")


def _unreadable(word: str) -> str | None:
    """Why an argument cannot be read as text, if it cannot: its bytes are not UTF-8 (Python
    hands them over as lone surrogates, which nothing later could print, store or send)."""
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = word.encode("utf-8", "surrogateescape")  # the bytes as they were given
        except UnicodeEncodeError:
            raw = word.encode("utf-8", "backslashreplace")
        shown = raw if len(raw) <= 40 else raw[:40] + b"..."
        return f"is not UTF-8 text: {shown!r}"
    return None


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
