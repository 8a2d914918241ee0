"""The exception a command turns into one clear line on stderr and a non-zero exit."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none), for logs and
    one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OutboxError(Exception):
    """A problem the user can act on; its message is shown as it is, without a traceback."""

    exit_code = 1


class ConfigError(OutboxError):
    """An environment variable or option has a value the program cannot use."""

    exit_code = 2
