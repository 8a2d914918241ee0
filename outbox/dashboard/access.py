"""Who may use the dashboard: the bind rule, signed session cookies and per-session CSRF tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from outbox.commands import shown
from outbox.errors import ConfigError

COOKIE = "outbox_session"
SESSION_SECONDS = 12 * 3600
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:")


def check_host(text: str) -> str:
    """A host to bind: an IP address or a host name, as written."""
    if not text or len(text) > 253 or not set(text) <= _HOST_CHARS:
        raise ConfigError(f"--host {shown(text)} is not an IP address or host name")
    return text


def is_loopback(host: str) -> bool:
    """Does binding `host` keep the dashboard on this machine? Only loopback addresses do (and
    `localhost`); a name that might resolve elsewhere does not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """ConfigError, before anything is bound, for a bind beyond loopback without a login token."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--host {host} is not a loopback address: set OUTBOX_DASHBOARD_TOKEN (at least 16 "
            "characters; the login for the page) to serve the dashboard beyond this machine"
        )


def session_key(token: str | None) -> bytes:
    """The key sessions are signed with: derived from the token, so logins outlive a restart;
    without one, fresh per process (sessions then end with it)."""
    if token is None:
        return secrets.token_bytes(32)
    return hmac.digest(token.encode("utf-8"), b"outbox dashboard sessions", hashlib.sha256)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign(key: bytes, text: str) -> str:
    return _b64(hmac.digest(key, text.encode("utf-8"), hashlib.sha256))


def verify(key: bytes, text: str, signature: str) -> bool:
    return hmac.compare_digest(sign(key, text), signature)


@dataclass(frozen=True)
class Session:
    """A visitor's session: a random id, when it was made, whether it logged in."""

    sid: str
    issued: int
    authed: bool

    def cookie(self, key: bytes) -> str:
        text = f"{self.sid}.{self.issued}.{int(self.authed)}"
        return f"{text}.{sign(key, text)}"

    def csrf(self, key: bytes) -> str:
        """The token every form of this session carries."""
        return sign(key, f"csrf:{self.sid}")


def new_session(*, authed: bool) -> Session:
    return Session(secrets.token_urlsafe(18), int(time.time()), authed)


def read_session(key: bytes, cookie: str | None, now: float | None = None) -> Session | None:
    """The session a cookie carries, if its signature holds and it has not expired."""
    if not cookie:
        return None
    parts = cookie.split(".")
    if len(parts) != 4 or not verify(key, ".".join(parts[:3]), parts[3]):
        return None
    sid, issued, authed = parts[:3]
    if not issued.isdigit() or authed not in {"0", "1"}:
        return None
    current = time.time() if now is None else now
    if not 0 <= current - int(issued) <= SESSION_SECONDS:
        return None
    return Session(sid, int(issued), authed == "1")


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
