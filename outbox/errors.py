"""The exception a command turns into one clear line on stderr and a non-zero exit."""


class OutboxError(Exception):
    """A problem the user can act on; its message is shown as it is, without a traceback."""

    exit_code = 1


class ConfigError(OutboxError):
    """An environment variable or option has a value the program cannot use."""

    exit_code = 2
