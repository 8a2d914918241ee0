"""Child processes the bench measures from outside (such as `outbox relay`): CPU and memory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from outbox.errors import OutboxError

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (NaN where /proc is missing)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    # The command name may hold spaces and parentheses; the fields after the last ')' are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident set now, peak resident set) in MiB (NaN where /proc is missing)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan"), float("nan")
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


class Child:
    """A child process the bench started, with its CPU and memory readable while it runs."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
        self.proc = proc
        self.log = log
        self.what = what

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def memory(self) -> tuple[float, float]:
        return memory_mb(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        """Raise with the end of its log if the process has exited."""
        if self.alive():
            return
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        detail = " | ".join(tail) if tail else "no output"
        raise OutboxError(f"{self.what} exited with code {self.proc.returncode}: {detail}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


@contextlib.contextmanager
def child(args: list[str], env: dict[str, str], log: Path, what: str) -> Iterator[Child]:
    """Run `python args...` with its stderr and stdout in `log`; stopped (SIGTERM) on exit."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    running = Child(proc, log, what)
    try:
        yield running
    finally:
        running.stop()


def wait_ready(
    running: Child, ready: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Wait until `ready()` holds, failing early if the process dies."""
    deadline = time.monotonic() + timeout
    while not ready():
        running.check()
        if time.monotonic() > deadline:
            raise OutboxError(f"{running.what} was not ready within {timeout:g}s")
        time.sleep(interval)
