"""The SSRF guard's address and URL rules, as tables of inputs and verdicts."""

from __future__ import annotations

import pytest

from outbox.netguard import check_url, is_blocked_address, is_blocked_literal

# None of these addresses is contacted: the tests only classify strings.
BLOCKED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.255",
    "0.0.0.0",  # noqa: S104 - a string to classify, never bound
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "::",
    "::1",
    "fc00::1",
    "fd12:3456:789a::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "2001::1",  # Teredo
    "100::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0:7f00:1",  # IPv4-translated loopback
    "::127.0.0.1",  # deprecated IPv4-compatible
    "::8.8.8.8",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::808:808",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "",
    "localhost",
    "not an address",
    "127.1",
    "2130706433",
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below carrier-grade NAT
    "100.128.0.0",  # just above it
    "172.15.255.255",
    "172.32.0.0",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of a public address
    "2002:808:808::1",  # 6to4 of a public address
]


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert is_blocked_address(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_blocked_address(address)


ACCEPTABLE_URLS = [
    "http://example.com/hook",
    "https://example.com:8443/hooks/stover?x=1",
    "HTTPS://Example.COM/hook",
    "http://example.com./hook",
    "http://hooks.example.com/a#fragment",
    "http://127.0.0.1:8080/hook",  # acceptable as a URL; whether it may be contacted is separate
    "http://[::1]:8080/hook",
    "http://[2606:4700::1111]/hook",
    "http://under_score.example.com/",
    "http://1password.com/",
    "http://example.123abc/",
]


@pytest.mark.parametrize("url", ACCEPTABLE_URLS)
def test_well_formed_http_urls_are_accepted(url: str) -> None:
    assert check_url(url) is None


REJECTED_URLS = [
    ("ftp://example.com/hook", "not an absolute http(s) URL"),
    ("file:///etc/passwd", "not an absolute http(s) URL"),
    ("gopher://example.com/", "not an absolute http(s) URL"),
    ("/relative/path", "not an absolute http(s) URL"),
    ("example.com/hook", "not an absolute http(s) URL"),
    ("", "not an absolute http(s) URL"),
    ("http:///hook", "missing host"),
    ("http:example.com", "missing host"),
    ("http://user:secret@example.com/", "userinfo"),
    ("http://user@example.com/", "userinfo"),
    ("http://:secret@example.com/", "userinfo"),
    ("http://@example.com/", "userinfo"),
    ("http://example.com:0/", "port must be a number from 1 to 65535"),
    ("http://example.com:99999/", "port must be a number from 1 to 65535"),
    ("http://example.com:/", "port must be a number from 1 to 65535"),
    ("http://example.com:8_0/", "port must be a number from 1 to 65535"),
    ("http://127.0.0.1\\@evil.example/", "U+005C at position 17"),
    ("http://exa mple.com/", "U+0020 at position 11"),
    ("http://example.com/\thook", "U+0009 at position 20"),
    (" http://example.com/", "U+0020 at position 1"),
    ("http://例子.测试/hook", "U+4F8B at position 8"),
    ("http://example.com/é", "U+00E9 at position 20"),
    ("http://example.com/{id}", "U+007B at position 20"),
    ("http://example.com/a?b[]=1", "U+005B at position 23"),
    ("http://example.com/%zz", "% at position 20 that does not begin a %XX escape"),
    ("http://[::1", "invalid IPv6 host"),
    ("http://[::1]x/", "invalid IPv6 host"),
    ("http://[fe80::1%25eth0]/", "invalid IPv6 host"),
    ("http://[v1.x]/", "invalid IPv6 host"),
    ("http://[1.2.3.4]/", "invalid IPv6 host"),
    ("http://" + "a" * 64 + ".example/", "label longer than 63"),
    ("http://" + "a." * 127 + "example/", "longer than 253"),
    ("http://127.1/", "not a canonical IPv4 address"),
    ("http://2130706433/", "not a canonical IPv4 address"),
    ("http://0x7f.1/", "not a canonical IPv4 address"),
    ("http://0177.0.0.1/", "not a canonical IPv4 address"),
    ("http://127.0.0.1./", "not a canonical IPv4 address"),
    ("http://example.com/" + "a" * 2100, "longer than 2048"),
]


@pytest.mark.parametrize(("url", "reason"), REJECTED_URLS)
def test_unusable_urls_are_rejected_with_a_reason(url: str, reason: str) -> None:
    problem = check_url(url)
    assert problem is not None
    assert reason in problem
    assert "\n" not in problem


@pytest.mark.parametrize(
    ("host", "blocked"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("fe80::1%25eth0", True),  # yarl's raw_host keeps the zone percent-encoded
        ("8.8.8.8", False),
        ("localhost", False),  # a name: judged by the resolver, not here
        ("example.com", False),
    ],
)
def test_only_ip_literals_are_judged_by_their_spelling(host: str, blocked: bool) -> None:
    assert is_blocked_literal(host) is blocked


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hooks/T0KEN-s3cret",
        "http:///hooks/T0KEN-s3cret",
        "http://user:T0KEN-s3cret@example.com/",
        "http://example.com:0/hooks/T0KEN-s3cret",
    ],
)
def test_reasons_do_not_quote_the_urls_path_or_credentials(url: str) -> None:
    problem = check_url(url)

    assert problem is not None
    assert "T0KEN-s3cret" not in problem
