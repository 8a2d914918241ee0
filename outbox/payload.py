"""Render an event's request body exactly as JavaScript's `JSON.stringify` would re-serialise it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import NoReturn, cast

import orjson

# The seed's Node.js receiver signs `JSON.stringify(JSON.parse(body))`, so the body must already be
# in that canonical form: numbers as ECMAScript's Number::toString writes them, strings escaped as
# JSON.stringify escapes them and integer-like keys first in ascending order.

_MAX_ARRAY_INDEX = 2**32 - 2
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_ARRAY_INDEX_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_SURROGATES_RE = re.compile(r"[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]")
_DIGITS = frozenset("0123456789")
# Integers JavaScript writes back digit for digit: below 10**15 no double rounds them.
_EXACT_INT = 10**15
# The C encoder escapes `"`, `\`, \b \f \n \r \t and other controls as lowercase \u00xx, and
# leaves everything else (U+007F, U+2028, U+2029, non-ASCII) raw: exactly JSON.stringify's set.
_encode_string = json.encoder.encode_basestring


class JsonNumber(str):
    """A JSON number kept as its source text, so no digits are lost before it is rendered."""

    __slots__ = ()


class _RenderedNumber(JsonNumber):
    """A number the decoder has already put in JavaScript's form; written out as it is."""

    __slots__ = ()


def _decoded_int(text: str) -> _RenderedNumber:
    return _RenderedNumber(_integer_text(text))


def _decoded_float(text: str) -> _RenderedNumber:
    # The scanner has already checked the JSON grammar, so js_number's validation is skipped.
    return _RenderedNumber(_decimal_text(text))


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number and cannot come from jsonb")


_DECODER = json.JSONDecoder(
    parse_float=_decoded_float, parse_int=_decoded_int, parse_constant=_reject_constant
)


def parse(text: str) -> object:
    """Parse JSON text (such as `jsonb::text`), keeping every number as a `JsonNumber`."""
    return _DECODER.decode(text)


def render_event(
    event_id: str,
    event_type: str,
    created_at: datetime,
    data_json: str,
    previous_json: str | None,
    *,
    record: str | None = None,
    sequence: int | None = None,
) -> bytes:
    """The UTF-8 request body of one event; `data_json`/`previous_json` are `jsonb::text`.

    An event about a record ends with `"record":{"key":…,"sequence":…}`: its key and its place
    among the record's events (additive: the seed's fields come first, unchanged)."""
    data = _as_is(data_json)
    previous = None if previous_json is None else _as_is(previous_json)
    if data is not None and (previous is not None or previous_json is None):
        try:
            head = [
                b'{"id":',
                orjson.dumps(event_id),
                b',"type":',
                orjson.dumps(event_type),
                b',"created_at":"',
                _utc_seconds(created_at).encode("ascii"),
                b'","data":',
                data,
            ]
        except TypeError:  # orjson refuses lone surrogates; the general path escapes them
            pass
        else:
            if previous is not None:
                head += (b',"previous_attributes":', previous)
            if record is not None and sequence is not None:
                head += (
                    b',"record":{"key":',
                    orjson.dumps(record),
                    b',"sequence":',
                    str(sequence).encode("ascii"),
                    b"}",
                )
            head.append(b"}")
            return b"".join(head)
    return render_event_general(
        event_id, event_type, created_at, data_json, previous_json, record=record, sequence=sequence
    )


def render_event_general(
    event_id: str,
    event_type: str,
    created_at: datetime,
    data_json: str,
    previous_json: str | None,
    *,
    record: str | None = None,
    sequence: int | None = None,
) -> bytes:
    """render_event without its shortcut: every number and key through JavaScript's rules."""
    parts = [
        '{"id":',
        _encode_string(event_id),
        ',"type":',
        _encode_string(event_type),
        ',"created_at":"',
        _utc_seconds(created_at),
        '","data":',
    ]
    _write(parse(data_json), parts)
    if previous_json is not None:
        parts.append(',"previous_attributes":')
        _write(parse(previous_json), parts)
    if record is not None and sequence is not None:
        parts += (',"record":{"key":', _encode_string(record), ',"sequence":', str(sequence), "}")
    parts.append("}")
    text = "".join(parts)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _fix_surrogates(text).encode("utf-8")


def _as_is(json_text: str) -> bytes | None:
    """`json_text` compacted, when nothing in it needs JavaScript's number or key rules (no
    fractions or exponents, no integer beyond 10**15, no key starting with a digit): then
    JSON.stringify writes it just so, as orjson escapes strings exactly as it does and keeps key
    order. None when it needs the general renderer."""
    try:
        value = orjson.loads(json_text)
        return orjson.dumps(value) if _plain(value) else None
    except (ValueError, TypeError, RecursionError):  # lone surrogates, huge integers, deep nesting
        return None


def _plain(value: object) -> bool:
    """Whether a parsed tree holds only strings, booleans, nulls, integers below 10**15, and
    objects none of whose keys starts with a digit. Walked with a list of pending containers
    rather than by recursion: half the time for a table row."""
    pending = [value]
    while pending:
        node = pending.pop()
        kind = type(node)
        items: Iterable[object]
        if kind is dict:
            obj = cast(dict[str, object], node)
            if obj and min(obj) < ":" and any(key[:1] in _DIGITS for key in obj):
                return False
            items = obj.values()
        elif kind is list:
            items = cast(list[object], node)
        else:
            items = (node,)
        for item in items:
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is int:
                if not -_EXACT_INT < cast(int, item) < _EXACT_INT:
                    return False
            elif kind is dict or kind is list:
                pending.append(item)
            else:
                return False
    return True


def dumps(value: object) -> str:
    """Serialise a parsed value tree (dict, list, str, bool, None, JsonNumber, int, float)."""
    parts: list[str] = []
    _write(value, parts)
    return _fix_surrogates("".join(parts))


def js_string(value: str) -> str:
    """A string literal as JSON.stringify writes it."""
    return _fix_surrogates(_encode_string(value))


def js_number(text: str) -> str:
    """A JSON number's text as JavaScript writes the number it parses to.

    Integer literals that JavaScript would round, and decimals beyond the double range, keep their
    exact digits: JavaScript cannot hold them, and changing them would change the data.
    """
    if _INTEGER_RE.fullmatch(text):
        return _integer_text(text)
    if not _NUMBER_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a JSON number")
    return _decimal_text(text)


def _integer_text(text: str) -> str:
    # Below 10**15 JavaScript writes a canonical integer literal back unchanged, except -0. Beyond,
    # JavaScript's text is used when it spells exactly the same number (jsonb stores 1e21 as
    # 1000000000000000000000, which JavaScript writes 1e+21); where it would round, the exact
    # digits are kept instead.
    if len(text) < 16:
        return "0" if text == "-0" else text
    number = float(text)
    if math.isinf(number):
        return text
    written = _double_text(number)
    return written if Decimal(written) == Decimal(text) else text


def _decimal_text(text: str) -> str:
    number = float(text)
    if math.isinf(number):
        return text
    return _double_text(number)


def _double_text(number: float) -> str:
    """ECMAScript Number::toString from the shortest round-trip digits that repr() finds."""
    if not math.isfinite(number):
        raise ValueError(f"{number!r} is not a finite number; jsonb cannot hold it")
    if number == 0:
        return "0"
    shortest = repr(number)
    if "e" not in shortest:
        # repr uses fixed notation for 1e-4 <= |x| < 1e16, a range where JavaScript does too.
        return shortest[:-2] if shortest.endswith(".0") else shortest
    return _format_digits(shortest)


def _format_digits(shortest: str) -> str:
    sign = "-" if shortest[0] == "-" else ""
    mantissa, _, exponent = shortest.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0").rstrip("0")
    # The value is 0.d1d2...dk * 10**point, as ECMAScript's (s, k, n) with n == point.
    point = int(exponent) + len(whole.lstrip("0"))
    k = len(digits)
    if k <= point <= 21:
        body = digits + "0" * (point - k)
    elif 0 < point <= 21:
        body = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        body = "0." + "0" * -point + digits
    else:
        mark = "+" if point - 1 >= 0 else "-"
        fraction_part = "." + digits[1:] if k > 1 else ""
        body = f"{digits[0]}{fraction_part}e{mark}{abs(point - 1)}"
    return sign + body


def _utc_seconds(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    u = moment.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031 - measured twice as fast as isoformat
        u.year,
        u.month,
        u.day,
        u.hour,
        u.minute,
        u.second,
    )


def _write(value: object, parts: list[str]) -> None:
    # Exact type checks, not isinstance: they are faster, and JsonNumber is a str subclass.
    if type(value) is str:
        parts.append(_encode_string(value))
    elif type(value) is _RenderedNumber:
        parts.append(value)
    elif type(value) is JsonNumber:
        parts.append(js_number(value))
    elif type(value) is dict:
        _write_object(value, parts)
    elif type(value) is list:
        _write_array(value, parts)
    else:
        parts.append(_scalar_text(value))


def _write_object(obj: dict[str, object], parts: list[str]) -> None:
    if not obj:
        parts.append("{}")
        return
    separator = "{"
    for key in _js_key_order(obj):
        parts.append(separator)
        parts.append(_encode_string(key))
        parts.append(":")
        _write(obj[key], parts)
        separator = ","
    parts.append("}")


def _write_array(items: list[object], parts: list[str]) -> None:
    if not items:
        parts.append("[]")
        return
    separator = "["
    for item in items:
        parts.append(separator)
        _write(item, parts)
        separator = ","
    parts.append("]")


def _scalar_text(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return _integer_text(int.__repr__(value))
    if isinstance(value, float):
        return _double_text(float(value))
    if isinstance(value, str):
        return _encode_string(value)
    raise TypeError(f"cannot serialise {type(value).__name__} as JSON")


def _js_key_order(obj: dict[str, object]) -> Iterable[str]:
    """Array-index keys first in ascending numeric order, then the rest in insertion order."""
    # Every array index starts with a digit, so a minimum key at or above ":" rules them all out
    # in one C-level pass; that is the usual case of column names.
    if min(obj) >= ":":
        return obj.keys()
    indexes = [key for key in obj if key[:1] in _DIGITS and _is_array_index(key)]
    if not indexes:
        return list(obj)
    indexes.sort(key=int)
    chosen = set(indexes)
    return indexes + [key for key in obj if key not in chosen]


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX_RE.fullmatch(key) is not None and int(key) <= _MAX_ARRAY_INDEX


def _fix_surrogates(text: str) -> str:
    """Join surrogate pairs and escape lone surrogates, as well-formed JSON.stringify does."""
    if _SURROGATES_RE.search(text) is None:
        return text
    return _SURROGATES_RE.sub(_surrogate_replacement, text)


def _surrogate_replacement(match: re.Match[str]) -> str:
    found = match.group()
    if len(found) == 2:
        return found.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    return f"\\u{ord(found):04x}"
