"""The request body is written the way JavaScript's JSON.stringify writes it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings

from outbox import payload
from outbox.payload import (
    JsonNumber,
    dumps,
    js_number,
    js_string,
    parse,
    render_event,
    render_event_general,
)
from tests.unit.jsontrees import Event, events

# Expected values were checked against Node.js 20's JSON.stringify(JSON.parse(text)), except the
# two documented departures: integers beyond 2**53 and decimals beyond the double range keep
# their exact digits.
NUMBERS = [
    ("0", "0"),
    ("-0", "0"),
    ("-3", "-3"),
    ("12345", "12345"),
    ("9007199254740992", "9007199254740992"),
    ("-9007199254740992", "-9007199254740992"),
    ("9007199254740993", "9007199254740993"),
    ("12345678901234567890", "12345678901234567890"),
    ("1000.50", "1000.5"),
    ("100.0", "100"),
    ("-0.0", "0"),
    ("0.1", "0.1"),
    ("0.30000000000000004", "0.30000000000000004"),
    ("0.000025", "0.000025"),
    ("0.000001", "0.000001"),
    ("0.0000001", "1e-7"),
    ("1e-7", "1e-7"),
    ("-1.25e-7", "-1.25e-7"),
    ("1.5e-10", "1.5e-10"),
    ("5e-324", "5e-324"),
    ("1E+2", "100"),
    ("1e16", "10000000000000000"),
    ("1e20", "100000000000000000000"),
    ("123456789012345680000.0", "123456789012345680000"),
    ("1e21", "1e+21"),
    ("1e+21", "1e+21"),
    ("12345e21", "1.2345e+25"),
    ("1.5e300", "1.5e+300"),
    ("1.7976931348623157e308", "1.7976931348623157e+308"),
    ("1e400", "1e400"),
    ("-1e400", "-1e400"),
]


@pytest.mark.parametrize(("text", "expected"), NUMBERS)
def test_js_number_writes_what_javascript_writes(text: str, expected: str) -> None:
    assert js_number(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "1.", ".5", "01", "+1", "1_000", " 1", "NaN", "Infinity", "inf", "0x10"]
)
def test_js_number_rejects_text_that_is_not_a_json_number(text: str) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        js_number(text)


STRINGS = [
    ("plain", '"plain"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash/", '"back\\\\slash/"'),
    ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
    ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
    ("\x0b", '"\\u000b"'),
    ("\x7f", '"\x7f"'),
    ("\u2028\u2029", '"\u2028\u2029"'),
    ("émigré 😀", '"émigré 😀"'),
    ("\ud800", '"\\ud800"'),
    ("\udfff x", '"\\udfff x"'),
    ("\ud83d\ude00", '"😀"'),
]


@pytest.mark.parametrize(("value", "expected"), STRINGS)
def test_js_string_escapes_exactly_what_json_stringify_escapes(value: str, expected: str) -> None:
    assert js_string(value) == expected


def test_array_index_keys_come_first_in_ascending_order_then_the_rest_in_input_order() -> None:
    tree = parse(
        '{"b": 1, "10": 2, "a": 3, "2": 4, "01": 5, "-1": 6, "4294967294": 7, "4294967295": 8, '
        '"0": 9, "": 10, "1.5": 11}'
    )
    assert dumps(tree) == (
        '{"0":9,"2":4,"10":2,"4294967294":7,"b":1,"a":3,"01":5,"-1":6,"4294967295":8,"":10,'
        '"1.5":11}'
    )


def test_keys_without_array_indexes_keep_their_input_order() -> None:
    assert dumps(parse('{"z": 1, "a": 2, "m": 3}')) == '{"z":1,"a":2,"m":3}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, "{}"),
        ([], "[]"),
        ([None, True, False], "[null,true,false]"),
        ({"n": [1, -0.0, 2.5, 1e21, 2**60]}, '{"n":[1,0,2.5,1e+21,1152921504606846976]}'),
        ([JsonNumber("1.50"), JsonNumber("-0")], "[1.5,0]"),
        ({"a": {"b": [{"c": "d"}]}}, '{"a":{"b":[{"c":"d"}]}}'),
    ],
)
def test_dumps_writes_compact_canonical_json(value: object, expected: str) -> None:
    assert dumps(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": float("-inf")}])
def test_dumps_refuses_non_finite_numbers(value: object) -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        dumps(value)


def test_dumps_refuses_values_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="set"):
        dumps({"a": {1, 2}})


CREATED = datetime(2024, 1, 15, 10, 30, 0, 987654, tzinfo=UTC)


def test_render_event_lays_out_the_payload_of_a_created_event() -> None:
    body = render_event(
        "evt_1", "contact.created", CREATED, '{"id": 1, "email": "a@example.com"}', None
    )
    assert body == (
        b'{"id":"evt_1","type":"contact.created","created_at":"2024-01-15T10:30:00Z",'
        b'"data":{"id":1,"email":"a@example.com"}}'
    )


def test_render_event_adds_previous_attributes_for_an_update() -> None:
    body = render_event(
        "evt_2", "deal.updated", CREATED, '{"amount": 1000.50}', '{"amount": 999.00}'
    )
    assert body == (
        b'{"id":"evt_2","type":"deal.updated","created_at":"2024-01-15T10:30:00Z",'
        b'"data":{"amount":1000.5},"previous_attributes":{"amount":999}}'
    )


def test_render_event_ends_with_the_record_and_its_place_when_the_event_names_one() -> None:
    body = render_event(
        "evt_2", "deal.updated", CREATED, '{"amount": 1000}', '{"amount": 999}',
        record="deals:42", sequence=7,
    )  # fmt: skip
    assert body == (
        b'{"id":"evt_2","type":"deal.updated","created_at":"2024-01-15T10:30:00Z",'
        b'"data":{"amount":1000},"previous_attributes":{"amount":999},'
        b'"record":{"key":"deals:42","sequence":7}}'
    )
    # The general path (numbers through JavaScript's rules) writes the same field.
    general = render_event(
        "evt_2", "deal.updated", CREATED, '{"amount": 1000.50}', None,
        record='invoices:"7"', sequence=1,
    )  # fmt: skip
    assert general.endswith(
        b'"data":{"amount":1000.5},"record":{"key":"invoices:\\"7\\"","sequence":1}}'
    )
    assert json.loads(general)["record"] == {"key": 'invoices:"7"', "sequence": 1}


def test_render_event_keeps_an_empty_previous_attributes_object() -> None:
    body = render_event("evt_3", "post.published", CREATED, "{}", "{}")
    assert body.endswith(b'"data":{},"previous_attributes":{}}')


def test_created_at_is_converted_to_utc_and_truncated_to_whole_seconds() -> None:
    local = datetime(2024, 1, 15, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5)))
    body = render_event("evt_4", "contact.created", local, "{}", None)
    assert b'"created_at":"2024-01-16T04:59:59Z"' in body


def test_a_naive_created_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_event("evt_5", "contact.created", datetime(2024, 1, 15), "{}", None)


def test_render_event_writes_non_ascii_as_raw_utf8() -> None:
    body = render_event("evt_6", "contact.created", CREATED, '{"name": "Zoë \\u00e9 😀"}', None)
    assert '"name":"Zoë é 😀"'.encode() in body


def test_render_event_escapes_a_lone_surrogate_instead_of_failing() -> None:
    body = render_event("evt_7", "contact.created", CREATED, '{"s": "\\ud800"}', None)
    assert b'"s":"\\ud800"' in body


def test_integers_beyond_two_to_the_53_keep_their_exact_digits() -> None:
    body = render_event("evt_8", "contact.created", CREATED, '{"n": 12345678901234567890}', None)
    assert b'"n":12345678901234567890' in body


def test_the_body_is_the_same_bytes_every_time() -> None:
    data = '{"b": [1.10, {"2": "x", "1": "y"}], "a": "\\u2028"}'
    first = render_event("evt_9", "contact.updated", CREATED, data, '{"a": null}')
    assert render_event("evt_9", "contact.updated", CREATED, data, '{"a": null}') == first
    assert json.loads(first)["data"] == {"b": [1.1, {"1": "y", "2": "x"}], "a": "\u2028"}


@pytest.mark.parametrize("data", ['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}'])
def test_non_finite_numbers_in_the_data_are_refused(data: str) -> None:
    with pytest.raises(ValueError, match="cannot come from jsonb"):
        render_event("evt_10", "contact.created", CREATED, data, None)


@settings(max_examples=400, deadline=None)
@given(event=events)
def test_the_shortcut_for_plain_data_writes_what_the_general_renderer_writes(event: Event) -> None:
    body, data_json, previous_json = event.render()
    general = render_event_general(
        event.event_id, event.event_type, event.created_at, data_json, previous_json
    )
    assert body == general


@pytest.mark.parametrize(
    "data_json",
    [
        '{"n": 999999999999999, "m": -999999999999999, "s": "12:30:45.5 1e5 \\"7\\": x"}',
        '{"a": [true, false, null, {"b": "\\u2028 \\u0007 \\\\ \\""}], "z": "😀"}',
        '{"a": {"b": [1, [2, {"c": null, "d": {}}], []]}, "e": [{"f": -3}]}',
    ],
)
def test_plain_data_takes_the_shortcut_and_matches_the_general_renderer(data_json: str) -> None:
    body = render_event("evt_9", "contact.created", CREATED, data_json, data_json)
    assert body == render_event_general("evt_9", "contact.created", CREATED, data_json, data_json)
    assert payload._as_is(data_json) is not None


@pytest.mark.parametrize(
    "data_json",
    [
        '{"n": 1.5}',
        '{"n": 1e5}',
        '{"n": 1000000000000000}',
        '{"1": "x"}',
        '{"s": "\\ud800"}',
        # the same, deep inside objects and arrays
        '{"a": [1, {"b": {"2": "x"}}]}',
        '{"a": {"b": [true, 0.5]}}',
        '{"a": [[null, -1000000000000000]]}',
    ],
)
def test_numbers_and_keys_that_need_javascripts_rules_take_the_general_path(
    data_json: str,
) -> None:
    assert payload._as_is(data_json) is None
