"""Real Node.js re-serialises every rendered body to the same bytes, so its verifier accepts it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from support import NodeRoundtrip

from outbox.payload import render_event
from tests.unit.jsontrees import Event, as_doubles, events

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]

CREATED = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def node() -> Iterator[NodeRoundtrip]:
    roundtrip = NodeRoundtrip()
    yield roundtrip
    roundtrip.close()


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
