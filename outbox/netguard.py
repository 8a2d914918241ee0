"""Decide whether an endpoint URL and the addresses it resolves to may be contacted (SSRF guard)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from yarl import URL

# The sender also checks that the URL parser it connects with (pyreqwest's, the url crate's)
# reads the host judged here, and refuses the URL otherwise.

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
# The characters RFC 3986 lets a URL hold: letters, digits, -._~ and the delimiters, and % only
# in %XX escapes. Brackets only around an IPv6 host. A URL is ASCII: a name of another script is
# written in its xn-- form, any other character percent-encoded, so the text stored is the text
# sent (yarl would otherwise encode, map or drop such characters on the way).
_URL_TEXT: Final = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_ESCAPED_TEXT: Final = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_UNBRACKETED: Final = re.compile(r"[^\[\]]*")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_HOSTNAME: Final = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_NUMERIC_LABEL: Final = re.compile(r"0x[0-9a-f]*|[0-9]+")

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated addresses


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
    """None when `url` is an acceptable endpoint URL, else a one-line reason it is not.

    The rule is the SQL function outbox.url_problem()'s, step for step and word for word: the
    table accepts exactly the URLs the relay sends to (tests/db/test_url_rule.py holds them to it).
    """
    # Reasons never quote the URL: endpoint URLs often carry a token in their path or query.
    problem = _check_text(url)
    if problem is not None:
        return problem
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    problem = _check_port(parts.port) or _check_after_authority(url, parts.rest)
    if problem is None:
        problem = _check_ipv6(parts.host) if parts.bracketed else _check_name(parts.host)
    return problem or _check_parser_agrees(url, parts)


def _check_text(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"URL is longer than {MAX_URL_LENGTH} characters"
    good = _URL_TEXT.match(url)
    if good is not None and good.end() < len(url):
        return _bad_character(url, good.end())
    escaped = _ESCAPED_TEXT.match(url)
    if escaped is not None and escaped.end() < len(url):
        return f"URL has a % at position {escaped.end() + 1} that does not begin a %XX escape"
    scheme = _SCHEME.match(url)
    if scheme is None:
        return "not an absolute http(s) URL"
    name = scheme[1].lower()
    if name not in {"http", "https"}:
        return f"not an absolute http(s) URL (scheme {_quote(_clip(name, 20))})"
    return None


def _bad_character(url: str, index: int) -> str:
    return (
        f"URL has U+{ord(url[index]):04X} at position {index + 1}, which a URL cannot hold: "
        "percent-encode it"
    )


@dataclass(frozen=True)
class _Parts:
    """An http(s) URL cut where yarl cuts it."""

    scheme: str
    host: str  # as written, without the brackets of an IPv6 literal
    bracketed: bool
    port: str | None  # as written
    rest: str  # the path, query and fragment


def _split(url: str) -> _Parts | str:
    """The URL's parts, or why its authority (host and port) is unacceptable."""
    scheme, _, after = url.partition(":")
    if not after.startswith("//"):
        return "missing host"
    # The authority ends where yarl ends it: at the first /, ? or #.
    end = min((i for i in map(after.find, "/?#", (2, 2, 2)) if i >= 0), default=len(after))
    authority, rest = after[2:end], after[end:]
    if authority == "":
        return "missing host"
    if "@" in authority:
        return "userinfo (user:password@) is not allowed in the URL; send credentials another way"
    bracketed = authority.startswith("[")
    if bracketed:
        host, closed, port_text = authority[1:].partition("]")
        if not closed or port_text[:1] not in {"", ":"}:
            return "invalid IPv6 host: write it as [address] or [address]:port"
    else:
        host = authority.partition(":")[0]
        port_text = authority[len(host) :]
    port = port_text[1:] if port_text else None
    return _Parts(scheme.lower(), host, bracketed, port, rest)


def _check_port(port: str | None) -> str | None:
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        return "port must be a number from 1 to 65535"
    return None


def _check_after_authority(url: str, rest: str) -> str | None:
    unbracketed = _UNBRACKETED.match(rest)
    if unbracketed is not None and unbracketed.end() < len(rest):
        return _bad_character(url, len(url) - len(rest) + unbracketed.end())
    return None


def _check_ipv6(host: str) -> str | None:
    # ipaddress takes a "%zone" suffix; the rule has no zones.
    if "%" in host or not isinstance(literal_address(host), ipaddress.IPv6Address):
        return f"invalid IPv6 host {_quote(_clip(host, 100))}"
    return None


def _check_name(host: str) -> str | None:
    if host == "":
        return "missing host"
    host = host.lower()
    if not _HOSTNAME.fullmatch(host):
        return f"invalid host {_quote(_clip(host, 100))}"
    labels = host.removesuffix(".").split(".")
    if len(host.removesuffix(".")) > 253:
        return "host name is longer than 253 characters"
    if any(len(label) > 63 for label in labels):
        return "host name has a label longer than 63 characters"
    # A host whose last label is a number is parsed as IPv4 by browsers and by inet_aton.
    if _NUMERIC_LABEL.fullmatch(labels[-1]) and literal_address(host) is None:
        return f"host {_quote(_clip(host, 100))} is not a canonical IPv4 address"
    return None


def _check_parser_agrees(url: str, parts: _Parts) -> str | None:
    """yarl, a WHATWG-style parser like the one the sender connects with, must read the same
    scheme, host and port: a URL whose parts parsers can disagree about is refused here."""
    try:
        parsed = URL(url)
    except ValueError as exc:
        return f"not a valid URL: {_clip(str(exc))}"
    host = parsed.raw_host or ""
    same_host = (
        literal_address(host) == literal_address(parts.host)
        if parts.bracketed
        else host == parts.host.lower()
    )
    port = None if parts.port is None else int(parts.port)
    if (parsed.scheme, parsed.explicit_port, parsed.raw_user, parsed.raw_password) != (
        parts.scheme,
        port,
        None,
        None,
    ) or not same_host:
        return "not a valid URL: its parts are ambiguous"
    return None


def url_host(url: str) -> str:
    """The host of a URL that `check_url` accepts, as the rule reads it: lower case, an IPv6
    literal without its brackets."""
    parts = _split(url)
    return "" if isinstance(parts, str) else parts.host.lower()


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


def _quote(text: str) -> str:
    """Quoted as SQL quotes a literal, so both sides of the rule word a reason alike."""
    return "'" + text.replace("'", "''") + "'"
