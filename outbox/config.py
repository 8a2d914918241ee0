"""Settings parsed once from the environment into a frozen object that is passed down."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import croniter
import psycopg
from psycopg.conninfo import conninfo_to_dict

from outbox.ages import parse_age
from outbox.errors import ConfigError, hide, scrub

DEFAULT_LADDER = (0.0, 60.0, 300.0, 1800.0, 7200.0)
# A rung longer than a month is no retry policy any receiver expects, and every rung must fit the
# timestamp it is added to.
MAX_RUNG = 30 * 86_400.0
DEFAULT_TIMEOUT = 30.0
# At least a second: an attempt needs a connection, often TLS, and an answer, and the relay looks
# for overdue attempts every tenth of the timeout (at most every 0.1 s), so a tiny timeout would
# keep an idle relay busy. At most an hour: the claim lease, and so the wait for a crashed relay's
# deliveries, is the timeout plus 15 s.
TIMEOUT_RANGE = (1.0, 3600.0)
# 1 MiB: nginx's default client_max_body_size, the limit most receivers sit behind (Express's own
# JSON parser stops at 100 kB). A body over the cap is a recorded failure, never a retry loop.
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
MAX_PAYLOAD_BYTES_RANGE = (1_024, 64 * 1_048_576)
# Endpoints one account may have: Svix's and Hookdeck's default is of this order, and a page of
# the account's dashboard lists them all.
DEFAULT_MAX_ENDPOINTS_PER_ACCOUNT = 20
MAX_ENDPOINTS_PER_ACCOUNT_RANGE = (1, 10_000)
EMBEDDED_PGDATA = Path(".outbox") / "pgdata"
# Retention: what `outbox prune --older-than` removes, run by the relays on a schedule (UTC).
DEFAULT_RETENTION = timedelta(days=30)
# At least an hour: a retention in seconds or minutes is more likely a typo (30s for 30d) than a
# wish, and it would remove events soon after they were delivered.
MIN_RETENTION = timedelta(hours=1)
DEFAULT_RETENTION_SCHEDULE = "15 3 * * *"
DEFAULT_DISABLE_SCHEDULE = "* * * * *"  # the auto-disable sweep: every minute
BREAKER_AFTER_RANGE = (1, 1_000_000)
DEFAULT_DISABLE_AFTER = timedelta(days=5)
# The dashboard's login token: long enough that guessing it over HTTP is hopeless.
MIN_DASHBOARD_TOKEN = 16


@dataclass(frozen=True)
class Breaker:
    """When an endpoint's circuit breaker opens and how its probes are spaced."""

    after: int = 10  # consecutive failed attempts that open it
    first_probe: float = 5.0  # seconds from opening to the first probe; doubled per failed probe
    longest_probe: float = 300.0  # the most seconds between two probes


@dataclass(frozen=True)
class Settings:
    """Everything the program reads from its environment."""

    database_url: str | None = None
    retry_ladder: tuple[float, ...] = DEFAULT_LADDER
    timeout: float = DEFAULT_TIMEOUT
    allow_private_networks: bool = False
    log_format: str = "console"
    log_level: int = logging.INFO
    embedded_pgdata: Path = field(default=EMBEDDED_PGDATA)
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_endpoints_per_account: int = DEFAULT_MAX_ENDPOINTS_PER_ACCOUNT
    retention: timedelta | None = DEFAULT_RETENTION  # None: the relays remove nothing
    retention_schedule: str = DEFAULT_RETENTION_SCHEDULE
    breaker: Breaker = field(default_factory=Breaker)
    disable_after: timedelta = DEFAULT_DISABLE_AFTER  # an endpoint failing this long is disabled
    disable_schedule: str = DEFAULT_DISABLE_SCHEDULE
    dashboard_token: str | None = field(default=None, repr=False)  # None: no login
    portal_frame_ancestors: str | None = None  # CSP sources that may frame a portal link's page
    portal_database_url: str | None = None  # a login granted outbox_account, for portal pages

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays invisible to other relays."""
        return self.timeout + 15.0


def parse_ladder(text: str) -> tuple[float, ...]:
    """Parse `OUTBOX_RETRY_LADDER`: comma-separated, non-negative seconds, at least one rung."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or any(part == "" for part in parts):
        raise ConfigError(
            f"OUTBOX_RETRY_LADDER={text!r} is malformed: expected comma-separated seconds "
            "such as 0,60,300,1800,7200"
        )
    rungs: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"OUTBOX_RETRY_LADDER={text!r} is malformed: {part!r} is not a number of seconds"
            ) from None
        if not 0 <= value <= MAX_RUNG:
            raise ConfigError(
                f"OUTBOX_RETRY_LADDER={text!r} is malformed: {part!r} must be from 0 to "
                f"{MAX_RUNG:,.0f} seconds (30 days)"
            )
        rungs.append(value)
    if len(rungs) > 100:
        raise ConfigError(f"OUTBOX_RETRY_LADDER has {len(rungs)} rungs; at most 100 are allowed")
    return tuple(rungs)


def parse_timeout(text: str) -> float:
    """Parse `OUTBOX_TIMEOUT`: seconds within TIMEOUT_RANGE."""
    low, high = TIMEOUT_RANGE
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"OUTBOX_TIMEOUT={text!r} is not a number of seconds") from None
    if not low <= value <= high:
        raise ConfigError(f"OUTBOX_TIMEOUT={text!r} must be from {low:g} to {high:,.0f} seconds")
    return value


def parse_whole(name: str, text: str, bounds: tuple[int, int], unit: str) -> int:
    """Parse a whole number of `unit` within `bounds` (inclusive), for variable `name`."""
    low, high = bounds
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a whole number of {unit}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={text!r} must be from {low:,} to {high:,} {unit}")
    return value


def parse_retention(text: str) -> timedelta | None:
    """Parse `OUTBOX_RETENTION`: an age of at least an hour, or `off`."""
    if text.strip().lower() == "off":
        return None
    age = parse_age(text, "OUTBOX_RETENTION")
    if age < MIN_RETENTION:
        raise ConfigError(f"OUTBOX_RETENTION={text!r} must be at least 1h (or off)")
    return age


def parse_schedule(name: str, text: str) -> str:
    """Parse a cron expression in UTC: five fields, or six with seconds last, as pgqueuer's
    scheduler reads it (croniter)."""
    fields = text.split()
    if not 5 <= len(fields) <= 6 or not croniter.croniter.is_valid(text):
        raise ConfigError(
            f"{name}={text!r} is not a cron expression such as '15 3 * * *' (minute hour "
            "day-of-month month day-of-week, in UTC; a sixth field gives seconds)"
        )
    try:
        croniter.croniter(text).get_next(float)
    except croniter.CroniterBadDateError:
        raise ConfigError(
            f"{name}={text!r} names no date that exists (such as 30 February)"
        ) from None
    return " ".join(fields)


def parse_max_payload(text: str) -> int:
    """Parse `OUTBOX_MAX_PAYLOAD_BYTES`: a whole number of bytes within the allowed range."""
    return parse_whole("OUTBOX_MAX_PAYLOAD_BYTES", text, MAX_PAYLOAD_BYTES_RANGE, "bytes")


def parse_probe_interval(text: str) -> tuple[float, float]:
    """Parse `OUTBOX_BREAKER_PROBE_INTERVAL`: FIRST,LONGEST seconds, 0 < FIRST <= LONGEST."""
    name = "OUTBOX_BREAKER_PROBE_INTERVAL"
    parts = [part.strip() for part in text.split(",")]
    try:
        first, longest = (float(part) for part in parts)
    except ValueError:
        raise ConfigError(
            f"{name}={text!r} is malformed: expected the seconds to the first probe and the most "
            "between two probes, such as 5,300"
        ) from None
    if not (math.isfinite(longest) and 0 < first <= longest <= 86_400):
        raise ConfigError(
            f"{name}={text!r} must be two numbers of seconds, the first more than 0 and at most "
            "the second, the second at most 86400"
        )
    return first, longest


def parse_breaker(env: Mapping[str, str]) -> Breaker:
    """`OUTBOX_BREAKER_AFTER` and `OUTBOX_BREAKER_PROBE_INTERVAL` as a Breaker."""
    after = parse_whole(
        "OUTBOX_BREAKER_AFTER",
        env.get("OUTBOX_BREAKER_AFTER", str(Breaker.after)),
        BREAKER_AFTER_RANGE,
        "failed attempts",
    )
    first, longest = parse_probe_interval(
        env.get(
            "OUTBOX_BREAKER_PROBE_INTERVAL", f"{Breaker.first_probe:g},{Breaker.longest_probe:g}"
        )
    )
    return Breaker(after, first, longest)


def parse_disable_after(text: str) -> timedelta:
    """Parse `OUTBOX_DISABLE_AFTER`: an age such as 5d or 36h, as `prune --older-than` takes."""
    return parse_age(text, "OUTBOX_DISABLE_AFTER")


# The password of a URI libpq cannot parse (postgres://user:password@host...), so that even the
# error saying so does not show it.
_URI_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^@/]*)@")


def parse_database_url(text: str) -> str:
    """Check `DATABASE_URL` as libpq will read it, hiding its password from every later line.

    A malformed URI, or a connect_timeout that is not a whole number, is a ConfigError that names
    the variable and never shows the password."""
    found = _URI_PASSWORD.match(text)
    if found:
        hide(found.group(1))
    try:
        params = conninfo_to_dict(text)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        reason = scrub(reason.replace(text, "DATABASE_URL"))
        raise ConfigError(
            f"DATABASE_URL is not a PostgreSQL connection URI libpq can read ({reason}); "
            "use one such as postgresql://user:password@host:5432/dbname"
        ) from None
    password = params.get("password")
    hide(str(password) if password is not None else None)
    timeout = params.get("connect_timeout")
    if timeout is not None:
        try:
            int(str(timeout))
        except ValueError:
            raise ConfigError(
                f"DATABASE_URL: connect_timeout={scrub(str(timeout))!r} is not a whole number "
                "of seconds"
            ) from None
    return text


def parse_flag(name: str, text: str) -> bool:
    """Parse a boolean variable written as 1/0, true/false, yes/no or on/off."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={text!r} must be 1 or 0")


def parse_log_format(text: str | None, *, isatty: bool) -> str:
    """Parse `OUTBOX_LOG_FORMAT`, defaulting to console on a terminal and JSON elsewhere."""
    if text is None or text == "":
        return "console" if isatty else "json"
    if text not in {"json", "console"}:
        raise ConfigError(f"OUTBOX_LOG_FORMAT={text!r} must be json or console")
    return text


LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def parse_log_level(text: str) -> int:
    """Parse `OUTBOX_LOG_LEVEL`: debug adds a line per delivered attempt to info's summaries."""
    level = LOG_LEVELS.get(text.strip().lower())
    if level is None:
        raise ConfigError(f"OUTBOX_LOG_LEVEL={text!r} must be one of {', '.join(LOG_LEVELS)}")
    return level


def _readable(env: Mapping[str, str]) -> Mapping[str, str]:
    """`env` once every variable the program reads is text: a value whose bytes are not UTF-8
    reaches Python with lone surrogates, which no later step could print or send."""
    for name, value in env.items():
        if (name == "DATABASE_URL" or name.startswith("OUTBOX_")) and not _is_utf8(value):
            raise ConfigError(f"{name} is not UTF-8 text; set it to text or unset it")
    return env


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_dashboard_token(text: str | None) -> str | None:
    """OUTBOX_DASHBOARD_TOKEN: unset (no login), or at least 16 printable characters. Hidden from
    every line the program writes from here on."""
    if text is None:
        return None
    if len(text) < MIN_DASHBOARD_TOKEN or not text.isprintable() or text != text.strip():
        raise ConfigError(
            f"OUTBOX_DASHBOARD_TOKEN must be at least {MIN_DASHBOARD_TOKEN} printable characters "
            "without surrounding spaces (try `openssl rand -hex 24`), or unset"
        )
    hide(text)
    return text


_FRAME_SOURCE = re.compile(r"'self'|https?://(?:\*\.)?[A-Za-z0-9.-]+(?::[0-9]{1,5})?")


def parse_frame_ancestors(text: str | None) -> str | None:
    """OUTBOX_PORTAL_FRAME_ANCESTORS: the pages that may frame a portal link's pages, as CSP
    sources separated by spaces ('self', https://crm.example.com, https://*.example.com)."""
    if text is None or not text.strip():
        return None
    sources = text.split()
    for source in sources:
        if not _FRAME_SOURCE.fullmatch(source):
            raise ConfigError(
                f"OUTBOX_PORTAL_FRAME_ANCESTORS: {source[:80]!r} is not 'self' or an origin "
                "such as https://crm.example.com"
            )
    return " ".join(sources)


def _database_url(env: Mapping[str, str]) -> str | None:
    text = env.get("DATABASE_URL")
    if text is None:
        return None
    if not text.strip():
        # Empty is not unset: a deployment that meant to name its database must not run against
        # an embedded one.
        raise ConfigError(
            "DATABASE_URL is set but empty; set it to a connection URI, or unset it to use the "
            "embedded PostgreSQL"
        )
    return parse_database_url(text)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment (or the mapping given), failing with one line."""
    env = _readable(os.environ if environ is None else environ)
    return Settings(
        database_url=_database_url(env),
        retry_ladder=parse_ladder(env.get("OUTBOX_RETRY_LADDER", "0,60,300,1800,7200")),
        timeout=parse_timeout(env.get("OUTBOX_TIMEOUT", "30")),
        allow_private_networks=parse_flag(
            "OUTBOX_ALLOW_PRIVATE_NETWORKS", env.get("OUTBOX_ALLOW_PRIVATE_NETWORKS", "0")
        ),
        log_format=parse_log_format(env.get("OUTBOX_LOG_FORMAT"), isatty=sys.stderr.isatty()),
        log_level=parse_log_level(env.get("OUTBOX_LOG_LEVEL") or "info"),
        max_payload_bytes=parse_max_payload(
            env.get("OUTBOX_MAX_PAYLOAD_BYTES", str(DEFAULT_MAX_PAYLOAD_BYTES))
        ),
        max_endpoints_per_account=parse_whole(
            "OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT",
            env.get("OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT", str(DEFAULT_MAX_ENDPOINTS_PER_ACCOUNT)),
            MAX_ENDPOINTS_PER_ACCOUNT_RANGE,
            "endpoints",
        ),
        retention=parse_retention(env.get("OUTBOX_RETENTION", "30d")),
        retention_schedule=parse_schedule(
            "OUTBOX_RETENTION_SCHEDULE",
            env.get("OUTBOX_RETENTION_SCHEDULE", DEFAULT_RETENTION_SCHEDULE),
        ),
        breaker=parse_breaker(env),
        disable_after=parse_disable_after(env.get("OUTBOX_DISABLE_AFTER", "5d")),
        disable_schedule=parse_schedule(
            "OUTBOX_DISABLE_SCHEDULE",
            env.get("OUTBOX_DISABLE_SCHEDULE", DEFAULT_DISABLE_SCHEDULE),
        ),
        dashboard_token=parse_dashboard_token(env.get("OUTBOX_DASHBOARD_TOKEN")),
        portal_frame_ancestors=parse_frame_ancestors(env.get("OUTBOX_PORTAL_FRAME_ANCESTORS")),
        portal_database_url=(
            parse_database_url(env["OUTBOX_PORTAL_DATABASE_URL"])
            if env.get("OUTBOX_PORTAL_DATABASE_URL")
            else None
        ),
    )
