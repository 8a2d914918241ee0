"""Portal links: a signed, expiring token naming one account, made by `outbox portal-link` and
opened by the dashboard (the same OUTBOX_DASHBOARD_TOKEN keys both)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

from outbox.accounts import ACCOUNT_PATTERN
from outbox.dashboard.access import sign, verify


def link_key(token: str) -> bytes:
    """The key links are signed with: derived from the dashboard token, apart from sessions'."""
    return hmac.digest(token.encode("utf-8"), b"outbox portal links", hashlib.sha256)


@dataclass(frozen=True)
class Link:
    """What a portal link grants: one account, until `expires`, perhaps read-only."""

    account: str
    issued: int
    expires: int
    read_only: bool

    def token(self, key: bytes) -> str:
        name = base64.urlsafe_b64encode(self.account.encode()).rstrip(b"=").decode("ascii")
        text = f"{name}.{self.issued}.{self.expires}.{int(self.read_only)}"
        return f"{text}.{sign(key, 'link:' + text)}"


def make(account: str, seconds: float, *, read_only: bool, now: float | None = None) -> Link:
    issued = int(time.time() if now is None else now)
    return Link(account, issued, issued + int(seconds), read_only)


def read(key: bytes, token: str, now: float | None = None) -> Link | str:
    """The link a token carries, or why it is refused (tampered, malformed or expired)."""
    parts = token.split(".")
    if len(parts) != 5 or not verify(key, "link:" + ".".join(parts[:4]), parts[4]):
        return "this link is not valid: it was changed or not made by `outbox portal-link`"
    name, issued, expires, read_only = parts[:4]
    try:
        account = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "this link is not valid"
    if not (issued.isdigit() and expires.isdigit() and read_only in {"0", "1"}):
        return "this link is not valid"
    if not ACCOUNT_PATTERN.fullmatch(account):
        return "this link is not valid"
    if (time.time() if now is None else now) >= int(expires):
        return "this link has expired: ask for a new one"
    return Link(account, int(issued), int(expires), read_only == "1")
