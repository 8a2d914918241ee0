"""Decide whether an endpoint URL and the addresses it resolves to may be contacted (SSRF guard)."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from yarl import URL

# yarl is the parser aiohttp itself uses, so the host judged here is the host connected to.

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH: Final = 2048
# Appended to every refusal of a private address, by the relay and by `outbox endpoints test`.
ALLOW_HINT: Final = "(set OUTBOX_ALLOW_PRIVATE_NETWORKS=1 to allow)"

# Explicit tables rather than only `ip.is_global`, whose answers changed between Python releases.
_BLOCKED_V4: Final = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", including the unspecified address
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, home of cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including broadcast
    )
)
_BLOCKED_V6: Final = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, including Teredo
        "2001:db8::/32",
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated addresses

_HOSTNAME: Final = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# A host whose last label is a number is parsed as IPv4 by browsers and by inet_aton.
_NUMERIC_LABEL: Final = re.compile(r"(0x[0-9a-f]*|[0-9]+)\.?")


def is_blocked_address(ip: str) -> bool:
    """True for any address that is not globally routable; unparsable input counts as blocked."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return True
    return _is_blocked(address)


def _is_blocked(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _is_blocked(embedded)
        table: tuple[ipaddress.IPv4Network, ...] | tuple[ipaddress.IPv6Network, ...] = _BLOCKED_V6
    else:
        table = _BLOCKED_V4
    return not address.is_global or any(address in net for net in table)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped, translated, NAT64 or 6to4 IPv6 address stands for."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _SIIT:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_url(url: str) -> str | None:
    """None when `url` is an acceptable endpoint URL, else a one-line reason it is not."""
    parsed = _parse(url)
    if isinstance(parsed, str):
        return parsed
    # Reasons never quote the URL: endpoint URLs often carry a token in their path or query.
    if parsed.scheme not in {"http", "https"}:
        scheme = f" (scheme {_clip(parsed.scheme, 20)!r})" if parsed.scheme else ""
        return f"not an absolute http(s) URL{scheme}"
    host = parsed.raw_host
    if not host:
        return "missing host"
    if parsed.raw_user or parsed.raw_password:
        return "userinfo (user:password@) is not allowed in the URL; send credentials another way"
    if parsed.explicit_port == 0:
        return "port 0 is not a valid port"
    return _check_host(host)


def _parse(url: str) -> URL | str:
    if len(url) > MAX_URL_LENGTH:
        return f"URL is longer than {MAX_URL_LENGTH} characters"
    try:
        return URL(url)
    except ValueError as exc:
        return f"not a valid URL: {_clip(str(exc))}"


def _check_host(host: str) -> str | None:
    if ":" in host:
        return None if literal_address(host) is not None else f"invalid IPv6 host {host!r}"
    if not _HOSTNAME.fullmatch(host):
        return f"invalid host {host!r}"
    last_label = host.rstrip(".").rsplit(".", 1)[-1]
    if _NUMERIC_LABEL.fullmatch(last_label) and literal_address(host) is None:
        return f"host {host!r} is not a canonical IPv4 address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address when `host` (as yarl's `raw_host` spells it) is a canonical IP literal."""
    try:
        # yarl keeps an IPv6 zone percent-encoded ("fe80::1%25eth0").
        return ipaddress.ip_address(host.replace("%25", "%", 1))
    except ValueError:
        return None


def is_blocked_literal(host: str) -> bool:
    """True when `host` is an IP literal that `is_blocked_address` refuses."""
    address = literal_address(host)
    return address is not None and _is_blocked(address)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
