"""Real Node.js re-serialises every rendered body to the same bytes, so its verifier accepts it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox.payload import render_event

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]

SCRIPT = Path(__file__).parent.parent / "node" / "roundtrip.js"
CREATED = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


class NodeRoundtrip:
    """One long-lived `node roundtrip.js`: a body in, Node's verdict out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def verdict(self, body: bytes) -> str:
        """ "1" when JSON.stringify(JSON.parse(body)) === body, else "0" and what Node wrote."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(base64.b64encode(body) + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "node exited early"
        return line.rstrip(b"\n").decode("utf-8")

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.fixture(scope="module")
def node() -> Iterator[NodeRoundtrip]:
    roundtrip = NodeRoundtrip()
    yield roundtrip
    roundtrip.close()


@dataclass(frozen=True)
class Num:
    """A number as it appears in jsonb text."""

    text: str


Tree = dict[str, "Tree"] | list["Tree"] | str | bool | None | Num


def jsonb_text(tree: Tree, *, ascii_only: bool) -> str:
    """Write a tree the way `jsonb::text` looks: `", "` and `": "` separators, number text kept."""
    if isinstance(tree, Num):
        return tree.text
    if isinstance(tree, dict):
        members = (
            json.dumps(key, ensure_ascii=ascii_only)
            + ": "
            + jsonb_text(value, ascii_only=ascii_only)
            for key, value in tree.items()
        )
        return "{" + ", ".join(members) + "}"
    if isinstance(tree, list):
        return "[" + ", ".join(jsonb_text(item, ascii_only=ascii_only) for item in tree) + "]"
    return json.dumps(tree, ensure_ascii=ascii_only)


SPECIAL_KEYS = ["0", "7", "10", "4294967294", "4294967295", "01", "-1", "", "1.5", "__proto__"]
SPECIAL_STRINGS = [
    "\u2028\u2029",
    "\x00\x01\x1f\x7f",
    "😀 émigré 中文",
    'quote " back \\ slash /',
    "\b\f\n\r\t",
    "</script>",
]
DECIMAL_TEXTS = ["1000.50", "1e-7", "1e21", "1.5e300", "5e-324", "-0.0", "-0", "0.0000001", "1E+2"]

keys = st.sampled_from(SPECIAL_KEYS) | st.text(max_size=8)
strings = st.sampled_from(SPECIAL_STRINGS) | st.text(max_size=12)
decimals = st.builds(
    lambda negative, whole, fraction: f"{'-' if negative else ''}{whole}.{fraction}",
    st.booleans(),
    st.integers(0, 10**15),
    st.text("0123456789", min_size=1, max_size=8),
)
exponents = st.builds(
    lambda mantissa, exponent: f"{mantissa}e{exponent:+d}",
    st.sampled_from(["1", "2.5", "9.99", "-7.125", "0.5"]),
    st.integers(-320, 300),
)
numbers = st.one_of(
    st.integers(-(2**53), 2**53).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    decimals,
    exponents,
    st.sampled_from(DECIMAL_TEXTS),
).map(Num)
leaves: st.SearchStrategy[Tree] = st.one_of(st.none(), st.booleans(), strings, numbers)
trees: st.SearchStrategy[Tree] = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
rows = st.dictionaries(keys, trees, max_size=6)
moments = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)),
    st.integers(-23 * 60, 23 * 60),
)


def as_doubles(text: str) -> Any:
    return json.loads(text, parse_int=float)


@dataclass(frozen=True)
class Event:
    """The inputs of one render_event call, with its jsonb columns still as trees."""

    event_id: str
    event_type: str
    created_at: datetime
    data: dict[str, Tree]
    previous: dict[str, Tree] | None
    ascii_only: bool

    def render(self) -> tuple[bytes, str, str | None]:
        """The body, and the jsonb texts it was rendered from."""
        data_json = jsonb_text(self.data, ascii_only=self.ascii_only)
        previous_json = (
            None if self.previous is None else jsonb_text(self.previous, ascii_only=self.ascii_only)
        )
        body = render_event(
            self.event_id, self.event_type, self.created_at, data_json, previous_json
        )
        return body, data_json, previous_json


events = st.builds(
    Event,
    event_id=st.text(max_size=10),
    event_type=st.text(max_size=10),
    created_at=moments,
    data=rows,
    previous=st.none() | rows,
    ascii_only=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(event=events)
def test_node_reserialises_every_rendered_body_to_the_same_bytes(
    node: NodeRoundtrip, event: Event
) -> None:
    body, data_json, previous_json = event.render()
    assert node.verdict(body) == "1"
    # Node only proves the form is canonical; the content must also be the input's. Numbers are
    # compared as the doubles JavaScript holds (integral doubles are written without a point).
    parsed = as_doubles(body.decode())
    assert parsed["data"] == as_doubles(data_json)
    assert parsed.get("previous_attributes") == (
        None if previous_json is None else as_doubles(previous_json)
    )


@pytest.mark.parametrize(
    ("data_json", "rendered"),
    [
        ('{"amount": 1000.50}', b'{"amount":1000.5}'),
        ('{"n": 1e-7}', b'{"n":1e-7}'),
        ('{"n": 1e21}', b'{"n":1e+21}'),
        ('{"n": 1.5e300}', b'{"n":1.5e+300}'),
        ('{"n": 5e-324}', b'{"n":5e-324}'),
        ('{"n": -0.0}', b'{"n":0}'),
        ('{"b": 1, "2": 2, "1": 1, "4294967295": 3}', b'{"1":1,"2":2,"b":1,"4294967295":3}'),
        ('{"s": "\\u2028 \\u0007 \\ud83d\\ude00"}', '{"s":"\u2028 \\u0007 😀"}'.encode()),
    ],
)
def test_node_accepts_the_explicit_examples(
    node: NodeRoundtrip, data_json: str, rendered: bytes
) -> None:
    body = render_event("evt_1", "deal.updated", CREATED, data_json, None)
    assert body.endswith(b'"data":' + rendered + b"}")
    assert node.verdict(body) == "1"


@pytest.mark.parametrize(
    ("body", "javascript_writes"),
    [
        (b'{"a":1.50}', '{"a":1.5}'),
        (b'{"a": 1}', '{"a":1}'),
        (b'{"b":1,"1":2}', '{"1":2,"b":1}'),
        (b'{"a":1e-07}', '{"a":1e-7}'),
        (b'{"s":"\\u00e9"}', '{"s":"é"}'),
    ],
)
def test_node_rejects_non_canonical_bodies(
    node: NodeRoundtrip, body: bytes, javascript_writes: str
) -> None:
    assert node.verdict(body) == "0" + javascript_writes
