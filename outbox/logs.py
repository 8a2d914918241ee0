"""structlog configuration: readable lines on a terminal, JSON lines elsewhere, always on stderr,
for the project's own loggers and the standard library's (psycopg, aiohttp, asyncio) alike."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
import structlog

from outbox.errors import hiding, scrub

_structured_notices = False


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route structlog to stderr in the chosen format; stdout stays free for command results."""
    renderer: structlog.typing.Processor
    foreign: structlog.typing.Processor
    factory: Callable[..., Any]
    stamper = _IsoUtcStamper()
    if log_format == "json":
        # The relay writes a line per attempt: orjson straight to stderr's bytes measured far
        # cheaper than the stdlib encoder and a text stream.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
        foreign = structlog.processors.JSONRenderer(serializer=_json_text)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
        foreign = renderer
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamper,
            structlog.processors.format_exc_info,
            _scrub_credentials,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        # Not cached: tests reconfigure logging in one process, and a cached logger would keep
        # writing to the stream of the configuration it first saw.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(foreign, stamper)


def _route_stdlib(renderer: structlog.typing.Processor, stamper: _IsoUtcStamper) -> None:
    """The standard library's loggers (psycopg.pool's reconnect warnings, aiohttp's, asyncio's)
    through the same rendering, with `logger` naming where a line came from."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                stamper,
                structlog.processors.format_exc_info,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _scrub_credentials,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # pgserver narrates every start-up step at INFO; its failures still surface as errors.
    logging.getLogger("pgserver").setLevel(logging.WARNING)


def _scrub_credentials(
    logger: object, name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """No hidden credential (the database password) in any text of a record."""
    if hiding():
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = scrub(value)
    return event_dict


def _json_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value).decode()


def structured_notices(on: bool) -> None:
    """Whether notice() and fatal() write JSON records (a relay logging JSON: every line of a
    sidecar's stderr parses) or plain lines (other commands, for the person at the terminal)."""
    global _structured_notices  # noqa: PLW0603 - one switch for the process's notices
    _structured_notices = on


def notice(text: str) -> None:
    """A command's note on stderr, such as which database it uses."""
    text = scrub(text)
    if _structured_notices:
        structlog.get_logger("outbox").info(text)
    else:
        print(text, file=sys.stderr)


def fatal(text: str) -> None:
    """The one line a command ends with when it fails."""
    text = scrub(text)
    if _structured_notices:
        structlog.get_logger("outbox").error(text)
    else:
        print(f"outbox: error: {text}", file=sys.stderr)


class _IsoUtcStamper:
    """`timestamp` as structlog's TimeStamper(fmt="iso", utc=True) writes it, at a third of the
    cost: the date and time of day are formatted once per second (the relay logs every attempt)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: object, name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = min(int((now - second) * 1_000_000), 999_999)
        event_dict["timestamp"] = f"{self._prefix}.{micros:06d}Z"
        return event_dict
