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
    """A visitor's session: a random id, its lifetime, whether it logged in, and for a portal
    link's session the one account it may see (and whether it may change anything)."""

    sid: str
    issued: int
    expires: int
    authed: bool
    account: str | None = None
    read_only: bool = False

    def cookie(self, key: bytes) -> str:
        account = "" if self.account is None else _b64(self.account.encode("utf-8"))
        text = (
            f"{self.sid}.{self.issued}.{self.expires}.{int(self.authed)}.{account}."
            f"{int(self.read_only)}"
        )
        return f"{text}.{sign(key, text)}"

    def csrf(self, key: bytes) -> str:
        """The token every form of this session carries."""
        return sign(key, f"csrf:{self.sid}")


def new_session(
    *,
    authed: bool,
    account: str | None = None,
    read_only: bool = False,
    issued: int | None = None,
    expires: int | None = None,
) -> Session:
    start = int(time.time()) if issued is None else issued
    end = start + SESSION_SECONDS if expires is None else expires
    return Session(secrets.token_urlsafe(18), start, end, authed, account, read_only)


def read_session(key: bytes, cookie: str | None, now: float | None = None) -> Session | None:
    """The session a cookie carries, if its signature holds and it has not expired."""
    if not cookie:
        return None
    parts = cookie.split(".")
    if len(parts) != 7 or not verify(key, ".".join(parts[:6]), parts[6]):
        return None
    sid, issued, expires, authed, account, read_only = parts[:6]
    if not (issued.isdigit() and expires.isdigit()):
        return None
    if (time.time() if now is None else now) >= int(expires):
        return None
    name = base64.urlsafe_b64decode(account + "=" * (-len(account) % 4)).decode("utf-8")
    return Session(sid, int(issued), int(expires), authed == "1", name or None, read_only == "1")


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
