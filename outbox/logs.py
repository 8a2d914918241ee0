"""structlog configuration: readable lines on a terminal, JSON lines elsewhere, always on stderr."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route structlog to stderr in the chosen format; stdout stays free for command results."""
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # pgserver narrates every start-up step at INFO; its failures still surface as errors.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
