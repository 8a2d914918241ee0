"""One endpoint URL rule: the table's outbox.url_problem() and the relay's netguard.check_url()
accept the same URLs and give the same reasons, and what the table accepts the relay sends to."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from outbox import sender as sender_module
from outbox.netguard import MAX_URL_LENGTH, check_url
from tests.relay import add_endpoint, deliveries, emit_one, receiving, running_relay

Conn = psycopg.Connection[Any]

# What the table's trigger refused before the rule was shared (0001's regex).
OLD_TABLE_RULE = r"^https?://[^/?#\s@]+([/?#]\S*)?$"


DEFAULT_PORTS = {"http": 80, "https": 443}


def same_host(one: str, other: str) -> bool:
    if ":" in one or ":" in other:
        return ipaddress.ip_address(one) == ipaddress.ip_address(other)
    return one.lower() == other.lower()


def sql_problem(conn: Conn, url: str) -> str | None:
    row = conn.execute("select outbox.url_problem(%s)", [url]).fetchone()
    assert row is not None
    problem: str | None = row[0]
    return problem


# -- generated URLs -------------------------------------------------------------------------------


def mostly(usual: list[str], odd: list[str]) -> st.SearchStrategy[str]:
    """One of `usual` about nine times in ten, else one of `odd`."""
    return st.sampled_from(usual * (9 * len(odd) // len(usual) + 1) + odd)


def weighted(*choices: tuple[int, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """One of the strategies, each as often as its weight says (st.one_of picks unevenly)."""
    slots = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(slots))).flatmap(lambda n: slots[n])


def sometimes(strategy: st.SearchStrategy[str], tenths: int) -> st.SearchStrategy[str]:
    """`strategy`'s text `tenths` times in ten, else the empty string."""
    return weighted((tenths, strategy), (10 - tenths, st.just("")))


SCHEMES = mostly(
    ["http", "https", "HTTP", "HttpS"], ["ftp", "file", "mailto", "web+http.v-2", "1h", ""]
)
SEPARATORS = mostly(["://"], [":/", ":", ":///", "//", ""])
USERINFO = st.sampled_from(["user@", "u:pw@", ":pw@", "@", "a%40b@", "@@"])
# Characters a URL cannot hold (space, controls, quotes, braces, backslash, non-ASCII) and broken
# escapes, put into some of the URLs at a random place.
ODD = [*" \t\n\r\x01\x1b\x7f\x85\u00a0\"'<>\\^`{|}[]é例\u200b\U0001f600", "%", "%4", "%zz"]
PIECES = st.one_of(
    st.text("abcXYZ019-._~", min_size=1, max_size=8),
    st.sampled_from([":", "/", "?", "#", "@", "!", "$", "&", "'", "(", ")", "*", "+", ",", ";"]),
    st.sampled_from(["=", "%41", "%2F", "%c3%a9", "..", "."]),
)
TAIL = st.lists(PIECES, max_size=6).map("".join)


def _label() -> st.SearchStrategy[str]:
    plain = st.text("abcxyzAZ0189_-", min_size=1, max_size=12)
    long = st.integers(62, 65).map(lambda n: "a" * n)
    numeric = st.sampled_from(["0x7f", "0x", "0X1", "017", "123abc", "08", "0", "255"])
    return weighted((16, plain), (2, long), (2, numeric))


NAMES = st.builds(
    lambda labels, dot: ".".join(labels) + dot,
    st.lists(_label(), min_size=1, max_size=5),
    mostly([""], [".", ".."]),
)


def _name_of(size: int) -> str:
    """A host name of `size` characters: labels of 49, the last one shorter."""
    return "".join("." if i % 50 == 49 else "a" for i in range(size)).strip(".")


# Names around the limits: a label of 63 or 64 characters, 252 to 255 characters in all.
LONG_NAMES = st.builds(
    lambda name, dot: name + dot,
    st.integers(62, 65).map(lambda n: "a" * n + ".example") | st.integers(252, 255).map(_name_of),
    mostly([""], ["."]),
)


def _radix(value: int, style: str) -> str:
    spellings = {
        "dec": str(value),
        "oct": f"0{value:o}",
        "hex": f"0x{value:x}",
        "pad": f"00{value}",
        "zero": f"0{value}",
    }
    return spellings[style]


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> str:
    """IPv4 addresses as inet_aton reads them: 1 to 4 parts, each in decimal, octal or hex."""
    parts = draw(st.sampled_from([4, 4, 4, 1, 2, 3]))
    values = [draw(st.integers(0, 255)) for _ in range(parts - 1)]
    values.append(draw(st.integers(0, 2**32 - 1 if parts == 1 else 2**16)))
    styles = mostly(["dec"], ["oct", "hex", "pad", "zero"])
    text = ".".join(_radix(v, draw(styles)) for v in values)
    return text + draw(mostly([""], ["."]))


@st.composite
def ipv6_texts(draw: st.DrawFn) -> str:
    """IPv6 spellings, right and wrong: 1 to 9 groups of 1 to 5 hex digits in either case, at
    most one (or at times two) "::", at times a dotted-quad in the last two groups' place."""
    hex_digits = "0123456789abcdefABCDEF"
    group = weighted(
        (9, st.text(hex_digits, min_size=1, max_size=4)),
        (1, st.text(hex_digits, min_size=5, max_size=5)),
    )
    before = draw(st.lists(group, max_size=8))
    gap = draw(mostly(["::", ""], [":::", ":"]))
    after = draw(st.lists(group, max_size=8 - len(before))) if gap else []
    if draw(st.sampled_from(range(4))) == 0:
        after.append(draw(st.one_of(st.ip_addresses(v=4).map(str), ipv4_spellings())))
    return ":".join(before) + gap + ":".join(after) if gap else ":".join(before + after)


@st.composite
def ipv6_hosts(draw: st.DrawFn) -> str:
    """IPv6 hosts: Python's spellings of an address (compressed, exploded, upper case) or ours,
    with at times a zone, a missing bracket or text after the closing one."""
    address = draw(st.ip_addresses(v=6))
    text = draw(
        st.sampled_from([address.compressed, address.exploded, address.compressed.upper()])
        | ipv6_texts()
    )
    zone = draw(mostly([""], ["%25eth0", "%eth0", "%25", "%251"]))
    opened, closed = draw(mostly([("[", "]")], [("[", ""), ("", "]"), ("", ""), ("[", "]x")]))
    return opened + text + zone + closed


HOSTS = weighted(
    (8, NAMES), (3, LONG_NAMES), (4, ipv4_spellings()), (4, ipv6_hosts()), (1, st.just(""))
)
PORT_ODDITIES = weighted(
    (1, st.integers(-5, 70_000).map(lambda n: f":{n}")),
    (3, st.sampled_from([":", ":0", ":1", ":80", ":65535", ":65536", ":99999", ":00080"])),
    (2, st.sampled_from([":000080", ":100000", ":0000000001", ":00000", ":8_0", ":+80", ": 80"])),
    (1, st.sampled_from([":abc", ":80:90", ":١٢"])),
)
PORTS = sometimes(PORT_ODDITIES, 3)


@st.composite
def structured_urls(draw: st.DrawFn) -> str:
    url = (
        draw(SCHEMES)
        + draw(SEPARATORS)
        + draw(sometimes(USERINFO, 1))
        + draw(HOSTS)
        + draw(PORTS)
        + draw(st.sampled_from(["", "/", "/", "/hooks/"]))
        + draw(TAIL)
        + draw(st.sampled_from(["", "?", "?a=1&"]))
        + draw(TAIL)
        + draw(st.sampled_from(["", "", "#", "#f"]))
        + draw(TAIL)
    )
    if draw(st.sampled_from(range(8))) == 0:
        at = draw(st.integers(0, len(url)))
        url = url[:at] + draw(st.sampled_from(ODD)) + url[at:]
    if draw(st.sampled_from(range(10))) == 0:  # stretched to around the length limit
        target = draw(st.integers(MAX_URL_LENGTH - 4, MAX_URL_LENGTH + 4))
        url += "a" * max(0, target - len(url))
    return url


# PostgreSQL text holds neither NUL nor lone surrogates; the Python side refuses both (below).
RAW_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60
)


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """An acceptable URL with at most one part made odd, so that each of the rule's boundaries
    is met with the rest of the URL acceptable."""
    plain = st.text("abcxyz0189_-", min_size=1, max_size=10)
    parts = {
        "scheme": draw(st.sampled_from(["http", "https", "HTTP"])) + "://",
        "userinfo": "",
        "host": draw(
            st.one_of(
                st.lists(plain, min_size=1, max_size=3).map(".".join),
                st.ip_addresses(v=4).map(str),
                st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
            )
        ),
        "port": draw(sometimes(st.integers(1, 65535).map(lambda n: f":{n}"), 3)),
        "rest": draw(st.sampled_from(["", "/", "/hooks/"])) + draw(TAIL),
    }
    odd = {
        "scheme": st.tuples(SCHEMES, SEPARATORS).map("".join),
        "userinfo": USERINFO,
        "host": HOSTS,
        "port": PORT_ODDITIES,
        "rest": st.tuples(st.sampled_from(ODD), TAIL).map("".join),
    }
    which = draw(st.sampled_from([None, *parts]))
    if which is not None:
        parts[which] = draw(odd[which])
    url = "".join(parts.values())
    if draw(st.sampled_from(range(8))) == 0:  # stretched to around the length limit
        url += "/" + "a" * max(
            0, draw(st.integers(MAX_URL_LENGTH - 2, MAX_URL_LENGTH + 1)) - len(url) - 1
        )
    return url


URLS = weighted((3, structured_urls()), (6, near_misses()), (1, RAW_TEXT))


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(url=URLS)
@example(url="http://0x7f.1/")
@example(url="http://[::ffff:1.2.3.4]:65535/a%20b?c=d#e")
@example(url="HTTPS://Example.COM.:8443/")
def test_the_table_and_the_relay_hold_the_same_url_rule(conn: Conn, url: str) -> None:
    python = check_url(url)
    assert python == sql_problem(conn, url), url
    if python is None:
        # Accepted: the relay's sender sends to it (the URL parser it connects with reads the
        # host the rule read), and yarl and httpx read the same host and port.
        assert not isinstance(sender_module._vet(url, True), str), url
        parsed, probed = URL(url), httpx.URL(url)
        assert parsed.scheme in {"http", "https"}
        assert parsed.raw_host
        assert same_host(probed.host, parsed.raw_host)
        assert (probed.port or DEFAULT_PORTS[probed.scheme]) == parsed.port
        assert len(url) <= MAX_URL_LENGTH
    else:
        assert "\n" not in python


BOUNDARIES = [
    *(f"http://example.com{port}/" for port in [":0", ":1", ":65535", ":65536", ":"]),
    *(f"http://example.com{port}/" for port in [":00080", ":000080", ":080", ":1:2"]),
    *(f"http://{'a' * size}.example/" for size in [63, 64]),
    *(f"http://{_name_of(size)}{dot}/" for size in [253, 254] for dot in ["", "."]),
    *(f"http://example.com/{'a' * (size - 19)}" for size in [2048, 2049]),
    "http://@example.com/",
    "http://u@example.com/",
    "http://xn--fsqu00a.xn--0zwm56d/hook",  # 例子.测试, as an ASCII URL writes it
    "http://example.com/a%20b?q=%C3%A9&r=a@b!$'()*+,;=:~#f",
    "web+http.v-2://example.com/",
    # Strings to classify, never bound:
    *(f"http://{host}/" for host in ["0.0.0.0", "255.255.255.255", "256.0.0.1"]),  # noqa: S104
    "http://1.2.3/",
    *(f"http://{host}/" for host in ["01.2.3.4", "0x1.2.3.4", "1.2.3.4.", "1.2.3.04", "1.0x"]),
    *(
        f"http://[{address}]/"
        for address in [
            "1:2:3:4:5:6:7:8",
            "::2:3:4:5:6:7:8",
            "1::3:4:5:6:7:8",
            "1:2::4:5:6:7:8",
            "1:2:3::5:6:7:8",
            "1:2:3:4::6:7:8",
            "1:2:3:4:5::7:8",
            "1:2:3:4:5:6::8",
            "1:2:3:4:5:6:7::",
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:1.2.3.4",
            "::1.2.3.4",
            "::FFFF:1.2.3.4",
            "1::1.2.3.4",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            "12345::",
            "::1.2.3.04",
            "::256.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            ":1::",
            "1:::2",
            "::g",
            "1.2.3.4",
        ]
    ),
    *(f"http://{host}/" for host in ["[::1]x", "[::1", "::1]", "[::1]:", "[::1]:80", "[]"]),
    *(f"http://example.com/{text}" for text in ["%", "%4", "%41", "%zz", "a%2", "%%41"]),
    *(f"http://example.com/{char}" for char in ' "<>\\^`{|}[]'),
]


@pytest.mark.parametrize("url", BOUNDARIES)
def test_the_two_sides_agree_at_each_edge_of_the_rule(conn: Conn, url: str) -> None:
    assert check_url(url) == sql_problem(conn, url)


@pytest.mark.parametrize("url", ["http://example.com/\x00", "http://example.com/\udcff"])
def test_text_postgresql_cannot_hold_is_refused_by_the_relay_too(url: str) -> None:
    assert check_url(url) is not None


# -- what the table accepted before and refuses now ------------------------------------------------

ONCE_ACCEPTED = [
    ("http://0x7f.1/", "host '0x7f.1' is not a canonical IPv4 address"),
    ("http://2130706433/", "host '2130706433' is not a canonical IPv4 address"),
    ("http://0177.0.0.1/", "host '0177.0.0.1' is not a canonical IPv4 address"),
    ("http://127.0.0.1./", "host '127.0.0.1.' is not a canonical IPv4 address"),
    ("http://example.com/" + "a" * 2100, "URL is longer than 2048 characters"),
    ("http://example.com:0/", "port must be a number from 1 to 65535"),
    ("http://example.com:65536/", "port must be a number from 1 to 65535"),
    ("http://example.com:99999/", "port must be a number from 1 to 65535"),
    ("http://example.com:http/", "port must be a number from 1 to 65535"),
    ("http://example.com:/", "port must be a number from 1 to 65535"),
    ("http://:8080/", "missing host"),
    ("http://[::1/", "invalid IPv6 host: write it as [address] or [address]:port"),
    ("http://[::1]x/", "invalid IPv6 host: write it as [address] or [address]:port"),
    ("http://[v1.x]/", "invalid IPv6 host 'v1.x'"),
    ("http://[fe80::1%25eth0]/", "invalid IPv6 host 'fe80::1%25eth0'"),
    ("http://" + "a" * 64 + ".example/", "host name has a label longer than 63 characters"),
    ("http://example.com/%zz", "URL has a % at position 20 that does not begin a %XX escape"),
    ("http://example.com/{id}", "URL has U+007B at position 20"),
    ("http://example.com/a|b", "URL has U+007C at position 21"),
    ("http://example.com/\x1b[2J", "URL has U+001B at position 20"),
    ("http://example.com/a?b[]=1", "URL has U+005B at position 23"),
    ("http://例子.测试/hook", "URL has U+4F8B at position 8"),
]


@pytest.mark.parametrize(("url", "reason"), ONCE_ACCEPTED)
def test_what_the_table_once_took_and_the_relay_refused_is_refused_where_it_is_written(
    conn: Conn, url: str, reason: str
) -> None:
    row = conn.execute("select %s ~* %s", [url, OLD_TABLE_RULE]).fetchone()
    assert row == (True,), "the old rule accepted it"
    assert reason in (check_url(url) or "")
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        add_endpoint(conn, url)
    assert str(refused.value).splitlines()[0] == f"endpoint url is refused: {check_url(url)}"
    assert conn.execute("select count(*) from outbox.endpoints").fetchone() == (0,)


# -- what the table accepts, the relay delivers -------------------------------------------------


async def test_the_relay_delivers_to_every_form_the_table_accepts(conn: Conn, db_url: str) -> None:
    with receiving() as receiver:
        base = f"127.0.0.1:{receiver.port}"
        urls = {
            f"HTTP://{base}/upper-scheme": "/upper-scheme",
            f"http://{base}/a%20b/%C3%A9?x=a@b!$'()*+,;=:~": "/a b/é",
            f"http://{base}?only=query": "/",
            f"http://{base}/frag#not-sent": "/frag",
            f"http://{base}/./dots/../dotted": "/dotted",
        }
        for url in urls:
            assert sql_problem(conn, url) is None
            add_endpoint(conn, url)
        emit_one(conn)
        async with running_relay(db_url) as relay:
            tally = await relay.run_once()
        paths = sorted(r.path for r in receiver.requests)

    assert tally.delivered == len(urls)
    assert {d["status"] for d in deliveries(conn)} == {"delivered"}
    assert paths == sorted(urls.values())
