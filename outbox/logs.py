"""structlog configuration: readable lines on a terminal, JSON lines elsewhere, always on stderr."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
import structlog


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route structlog to stderr in the chosen format; stdout stays free for command results."""
    renderer: structlog.typing.Processor
    factory: Callable[..., Any]
    if log_format == "json":
        # The relay writes a line per attempt: orjson straight to stderr's bytes measured far
        # cheaper than the stdlib encoder and a text stream.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _IsoUtcStamper(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        # Not cached: tests reconfigure logging in one process, and a cached logger would keep
        # writing to the stream of the configuration it first saw.
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # pgserver narrates every start-up step at INFO; its failures still surface as errors.
    logging.getLogger("pgserver").setLevel(logging.WARNING)


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
