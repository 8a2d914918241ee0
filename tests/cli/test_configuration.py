"""Every setting is range-checked at start: a value out of range, malformed or not UTF-8 stops
the real `outbox` command with exit 2 and one line naming the variable, before it does anything."""

from __future__ import annotations

import os
import subprocess

from support import env_without_outbox, outbox_cmd

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1
NOT_UTF8 = os.fsdecode(b"\xff\xfe")  # what Python makes of those bytes in the environment

REFUSED = [
    # An idle relay looks for overdue attempts every tenth of the timeout: these spun a core.
    *(("OUTBOX_TIMEOUT", v) for v in ["1e-9", "0.001", "0.5", "0", "-1"]),
    # Too long for the lease's timestamp (the relay died at its first claim) or for any use.
    *(("OUTBOX_TIMEOUT", v) for v in ["3601", "1e300", "inf", "nan", "", "soon", NOT_UTF8]),
    # A rung too large for a timestamp stopped the relay at the first retry it scheduled.
    *(("OUTBOX_RETRY_LADDER", v) for v in ["0,1e300", "0,2592001", "0,inf", "nan", "-1"]),
    *(("OUTBOX_RETRY_LADDER", v) for v in ["", "1,,2", " ", NOT_UTF8]),
    *(("OUTBOX_MAX_PAYLOAD_BYTES", v) for v in ["0", "1023", "67108865", "1e6", ""]),
    *(("OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT", v) for v in ["0", "10001", "many"]),
    ("OUTBOX_LOG_LEVEL", "loud"),
    ("OUTBOX_LOG_FORMAT", "xml"),
    ("OUTBOX_ALLOW_PRIVATE_NETWORKS", "maybe"),
    ("OUTBOX_LOG_LEVEL", NOT_UTF8),
    # Set but empty is not unset: it ran against a fresh embedded database.
    ("DATABASE_URL", ""),
    ("DATABASE_URL", " "),
    ("DATABASE_URL", f"postgresql://postgres@127.0.0.1:1/{NOT_UTF8}"),
    ("DATABASE_URL", UNREACHABLE + "?connect_timeout=soon"),
]
# The edges of each range: past the settings, these fail only on the unreachable database.
ACCEPTED = [
    ("OUTBOX_TIMEOUT", "1"),
    ("OUTBOX_TIMEOUT", "3600"),
    ("OUTBOX_RETRY_LADDER", "0,2592000"),
    ("OUTBOX_MAX_PAYLOAD_BYTES", "1024"),
    ("OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT", "10000"),
]


def _start(name: str, value: str) -> subprocess.Popen[str]:
    env = {**env_without_outbox(), "DATABASE_URL": UNREACHABLE, name: value}
    return subprocess.Popen(
        # Settings are read before any verb runs; this one imports the least.
        outbox_cmd("migrate", "--check"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="backslashreplace",
    )


def _run_all(cases: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """Each case's (exit code, stdout, stderr), the processes run side by side."""
    started = [_start(name, value) for name, value in cases]
    results = []
    for process in started:
        out, err = process.communicate(timeout=60)
        results.append((process.returncode, out, err))
    return results


def test_an_unusable_setting_stops_the_command_in_one_line_naming_it() -> None:
    results = _run_all(REFUSED + ACCEPTED)
    for (name, value), (code, out, err) in zip(REFUSED, results, strict=False):
        case = f"{name}={value!r}: exit {code}, stderr {err!r}"
        assert code == 2, case
        assert out == "", case
        assert "Traceback" not in err, case
        [line] = err.splitlines()
        assert line.startswith(f"outbox: error: {name}"), case
    for (name, value), (code, _, err) in zip(ACCEPTED, results[len(REFUSED) :], strict=True):
        case = f"{name}={value!r}: exit {code}, stderr {err!r}"
        assert code == 1, case
        assert "cannot reach the database" in err, case
        assert name not in err, case
