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


# Credentials the process holds (the database password): every line it writes for people or
# logs passes through scrub() first, so an error that echoes a connection string shows "***".
_hidden: set[str] = set()
MASK = "***"
# A password this long is replaced wherever it appears; a shorter one (the compose file's
# "outbox") only in a connection string's password places, or every "outbox" would go.
RAW_LENGTH = 8
_PLACES = ((":", "@"), ("password=", " "), ("password='", "'"), ("password=", '"'))


def hide(secret: str | None) -> None:
    """Never print `secret`: scrub() replaces it from now on."""
    if secret:
        _hidden.add(secret)


def scrub(text: str) -> str:
    """`text` with every hidden credential replaced by ***: wherever it stands when it is long
    enough not to be an ordinary word, else where a connection string puts a password."""
    for secret in _hidden:
        if secret not in text:
            continue
        if len(secret) >= RAW_LENGTH:
            text = text.replace(secret, MASK)
        else:
            for before, after in _PLACES:
                text = text.replace(f"{before}{secret}{after}", f"{before}{MASK}{after}")
    return text


def hiding() -> bool:
    """Whether any credential is hidden (so scrubbing has anything to do)."""
    return bool(_hidden)
