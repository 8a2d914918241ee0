"""Every option of every verb checks its value where it enters: an empty, malformed or unreadable
value is refused in one line with exit 2 before any work starts, never read as "no filter" and
never a traceback."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import math
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import env_without_outbox, outbox_cmd

from outbox import cli

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
# A value for each required argument, so that the one under test is the only odd one.
SAMPLES = {
    "url": "https://example.com/hook",
    "events": "*",
    "endpoint_id": "ep_1",
    "delivery_id": "7",
    "endpoint": "ep_1",
    "since": "2024-01-01",
    "older_than": "30d",
    "port": "8000",
    "secret": SECRET,
    "scenario": "capture",
    "account": "42",
}
# Options whose empty value is meaningful: --description '' is "no description", as by default.
EMPTY_MEANS_NONE = {"description"}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
UNREADABLE_CHARS = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Option:
    """One argument of one verb that takes a value."""

    verb: tuple[str, ...]
    action: argparse.Action
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return " ".join(
            [
                *self.verb,
                self.action.option_strings[0] if self.action.option_strings else self.action.dest,
            ]
        )

    def argv(self, value: str) -> list[str]:
        """The verb with its required arguments, and `value` for this one."""
        words = list(self.verb)
        for action in self.parser._actions:
            if action.option_strings:
                continue
            if action is self.action:
                words.append(value)
            elif action.nargs != "*":
                words.append(SAMPLES[action.dest])
        for action in self.parser._actions:
            if action.option_strings and action.required and action is not self.action:
                words += [action.option_strings[0], SAMPLES[action.dest]]
        if self.action.option_strings:
            # --option=value: a value that starts with "-" is still this option's.
            words.append(f"{self.action.option_strings[0]}={value}")
        return words


def _leaves(parser: argparse.ArgumentParser, verb: tuple[str, ...]) -> Iterator[Option]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subparsers:
        for name, child in action.choices.items():
            yield from _leaves(child, (*verb, name))
    for action in parser._actions:
        takes_value = action.nargs != 0 and not isinstance(
            action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
        )
        if verb and takes_value:
            yield Option(verb, action, parser)


OPTIONS = list(_leaves(cli.build_parser(), ()))


def parse(words: list[str]) -> tuple[argparse.Namespace | None, str]:
    """The parser's verdict on `words`, in this process: the namespace, or None and stderr
    when it exits (with 2, a usage error)."""
    stderr = io.StringIO()
    code: object = None
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli.build_parser(words).parse_args(words), stderr.getvalue()
        except SystemExit as exit_:
            code = exit_.code
    assert code == 2, stderr.getvalue()
    return None, stderr.getvalue()


def _well_formed(value: object, option: Option) -> bool:
    if isinstance(value, str):
        allowed_empty = option.action.dest in EMPTY_MEANS_NONE
        return (allowed_empty or value.strip() != "") and not CONTROL.search(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_well_formed(item, option) for item in value)
    return True


# Values of every class that was once read as "no filter", crashed or went through unchecked.
UNREADABLE = st.binary(min_size=1, max_size=8).map(lambda b: os.fsdecode(b"\xff" + b))
VALUES = st.one_of(
    st.sampled_from(["", " ", "\t", "\n", "-", "--", "0", "-1", "abc", "nan", "inf", "1e309"]),
    st.sampled_from(["99999999999999999999", "0x10", "1_000", "٣", "\x00", "\x1b[2J", "*"]),
    st.text(" \t\r\n\x0b\x0c\x85\u00a0\u2028", min_size=1, max_size=5),
    st.text(max_size=30),
    st.text(min_size=1, max_size=3).map(lambda t: t * 700),
    UNREADABLE,
    st.sampled_from(list(SAMPLES.values())),
    st.sampled_from(list(SAMPLES.values())).map(lambda v: f" {v}\n"),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(OPTIONS), value=VALUES)
def test_a_value_is_refused_in_one_line_or_taken_well_formed(option: Option, value: str) -> None:
    verbs = {" ".join(o.verb) for o in OPTIONS}
    assert {"endpoints create", "endpoints test", "deliveries list", "redeliver", "replay"} <= verbs
    assert {"prune", "relay", "listen", "demo", "bench"} <= verbs
    words = option.argv(value)
    namespace, err = parse(words)
    if namespace is None:
        assert "Traceback" not in err
        [line] = err.splitlines()
        assert line.startswith("outbox: error: ")
        return
    taken = getattr(namespace, option.action.dest)
    assert _well_formed(taken, option), f"{option.name} took {value!r} as {taken!r}"
    if option.action.choices is not None:
        assert taken in option.action.choices
    assert not UNREADABLE_CHARS.search(value), f"{option.name} took unreadable {value!r}"
    if option.action.dest not in EMPTY_MEANS_NONE:
        assert value.strip(), f"{option.name} took {value!r}"


# -- the real command --------------------------------------------------------------------------

# Each was accepted: read as "no filter", as the default, or passed on unchecked.
ONCE_TAKEN = [
    ("deliveries", "list", "--event-type", ""),
    ("deliveries", "list", "--event-type", "Deal.Created"),
    ("deliveries", "list", "--endpoint", ""),
    ("deliveries", "list", "--endpoint", "ep 1"),
    ("redeliver", "--failed", "--since", ""),
    ("redeliver", "--failed", "--endpoint", ""),
    ("replay", "--endpoint", "ep_1", "--since", "2024-01-01", "--until", ""),
    ("replay", "--endpoint", "ep_1", "--since", "2024-01-01", "--types", ""),
    ("replay", "--endpoint", "", "--since", "2024-01-01"),
    ("endpoints", "test", "ep_1", "--type", ""),
    ("endpoints", "test", "ep_1", "--type", "deal.created\r\nX-Injected: 1"),
    ("endpoints", "show", ""),
    ("endpoints", "delete", "\x1b[2J"),
    ("endpoints", "create", "https://example.com/", "--events", "*", "--description", "a\nb"),
    ("deliveries", "show", "٣"),
    ("relay", "--metrics-port", "99999"),
    ("relay", "--metrics-port", "-1"),
    ("relay", "--poll-interval", "inf"),
    ("relay", "--poll-interval", "1e-9"),
    ("relay", "--summary-every", "1e-9"),
    ("relay", "--batch", "99999999999999999999"),
    ("relay", "--concurrency", "99999999999"),
]
# Arguments whose bytes are not UTF-8, wherever they stand.
NOT_UTF8 = os.fsdecode(b"\xff\xfeok")
UNREADABLE_ARGS = [
    (NOT_UTF8,),
    ("endpoints", "show", NOT_UTF8),
    ("endpoints", "list", "--account", NOT_UTF8),
    ("endpoints", "create", f"https://example.com/{NOT_UTF8}", "--events", "*"),
    ("deliveries", "list", "--event-type", NOT_UTF8),
    ("bench", NOT_UTF8),
    ("listen", "--port", "0", "--secret", NOT_UTF8),
    ("prune", "--older-than", NOT_UTF8),
]


def _run_all(cases: list[tuple[str, ...]]) -> list[tuple[int, str, str]]:
    env = {**env_without_outbox(), "DATABASE_URL": UNREACHABLE}
    started = [
        subprocess.Popen(
            outbox_cmd(*args),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="backslashreplace",
        )
        for args in cases
    ]
    results = []
    for process in started:
        out, err = process.communicate(timeout=60)
        results.append((process.returncode, out, err))
    return results


@pytest.mark.parametrize("cases", [ONCE_TAKEN, UNREADABLE_ARGS], ids=["malformed", "not-utf8"])
def test_the_command_refuses_before_it_touches_the_database(cases: list[tuple[str, ...]]) -> None:
    for args, (code, out, err) in zip(cases, _run_all(cases), strict=True):
        case = f"outbox {' '.join(map(repr, args))}: exit {code}, stderr {err!r}"
        assert code == 2, case
        assert out == "", case
        assert "Traceback" not in err, case
        # One line, and no "database: …" notice: nothing was tried with the value.
        [line] = err.splitlines()
        assert line.startswith("outbox: error: "), case


@pytest.mark.parametrize(
    "words",
    [
        ["deliveries", "list", "--status", "--"],
        ["deliveries", "list", "--status=--"],
        ["deliveries", "list", "--event-type", "--"],
        ["redeliver", "--failed", "--since", "--"],
    ],
)
def test_the_end_of_options_marker_is_not_an_empty_value(words: list[str]) -> None:
    """argparse reads `--option --` as an empty list of values, which would filter nothing."""
    namespace, err = parse(words)
    assert namespace is None
    [line] = err.splitlines()
    option = words[-1].partition("=")[0] if "=" in words[-1] else words[-2]
    assert line.startswith(f"outbox: error: argument {option}")
