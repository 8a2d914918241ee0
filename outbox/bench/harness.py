"""What every scenario shares: scratch databases, the relay under test, progress and reports."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from outbox import progress
from outbox.bench import procs
from outbox.config import Settings
from outbox.db import benchdb, migrate
from outbox.errors import OutboxError

A = TypeVar("A")
B = TypeVar("B")
Figure = float | int | str
PG_SETTINGS = [
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_sync_method",
    "max_connections",
    "autovacuum_naptime",
    "checkpoint_timeout",
    "max_wal_size",
]


@dataclass(frozen=True)
class Target:
    """A figure against the value it should reach."""

    value: float
    target: float
    op: str  # ">=" or "<="

    @property
    def met(self) -> bool:
        if math.isnan(self.value):  # not measured, so not met
            return False
        return self.value >= self.target if self.op == ">=" else self.value <= self.target


def at_least(value: float, target: float) -> Target:
    return Target(value, target, ">=")


def at_most(value: float, target: float) -> Target:
    return Target(value, target, "<=")


def _fmt(value: Figure) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _json_value(value: Figure) -> Figure | None:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


@dataclass
class Report:
    """One scenario's figures, its targets and the machine they were measured on."""

    scenario: str
    title: str
    figures: dict[str, Figure]
    targets: dict[str, Target]
    machine: dict[str, object]
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "title": self.title,
            "figures": {k: _json_value(v) for k, v in self.figures.items()},
            "targets": {
                k: {"value": _json_value(t.value), "target": t.target, "op": t.op, "met": t.met}
                for k, t in self.targets.items()
            },
            "machine": self.machine,
            "notes": self.notes,
        }

    def table(self) -> str:
        width = max([len(k) for k in [*self.figures, *self.targets]] + [6]) + 2
        lines = [f"{self.scenario}: {self.title}", f"  {'figure':<{width}}{'value':>12}"]
        lines += [f"  {k:<{width}}{_fmt(v):>12}" for k, v in self.figures.items()]
        if self.targets:
            lines.append(f"  {'target':<{width}}{'value':>12}{'target':>14}  met")
            for name, t in self.targets.items():
                goal = f"{t.op} {_fmt(t.target)}"
                lines.append(
                    f"  {name:<{width}}{_fmt(t.value):>12}{goal:>14}  {'yes' if t.met else 'NO'}"
                )
        lines += [f"  note: {note}" for note in self.notes]
        m = self.machine
        lines.append(
            f"  machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), "
            f"PostgreSQL {m.get('pg_version')}, Python {m.get('python')}, "
            f"load average {m.get('load_1m')} at the start"
        )
        return "\n".join(lines)


class Progress(progress.Progress):
    """Progress of one scenario, its lines headed `bench <scenario>:`."""

    def __init__(self, scenario: str, stream: TextIO | None = None, every: float = 5.0) -> None:
        super().__init__(f"bench {scenario}", stream, every)
        self.scenario = scenario


@dataclass
class Bench:
    """The run's context: where databases are made, how children are started, how big to go."""

    settings: Settings
    server_url: str
    env: dict[str, str]  # the environment children start from (no OUTBOX_* settings)
    workdir: Path
    embedded: bool = True
    quick: bool = False
    minutes: float | None = None
    _machine: dict[str, object] | None = field(default=None, init=False, repr=False)
    # The 1-minute load average when the scenario's database was made: other work on the machine.
    _load: float = field(default=float("nan"), init=False, repr=False)

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh, migrated database for one scenario, dropped afterwards."""
        name = f"outbox_bench_{label}_{os.getpid()}"
        self._load = os.getloadavg()[0]
        benchdb.drop_database(self.server_url, name)
        url = benchdb.create_database(self.server_url, name)
        try:
            migrate.migrate(url)
            yield url
        finally:
            benchdb.drop_database(self.server_url, name)

    def child_env(self, url: str, **extra: str) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            DATABASE_URL=url,
            OUTBOX_ALLOW_PRIVATE_NETWORKS="1",
            OUTBOX_LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
            **extra,
        )
        return env

    @contextlib.contextmanager
    def relay(
        self, url: str, *args: str, label: str = "relay", idle: bool = True
    ) -> Iterator[procs.Child]:
        """`outbox relay` as a child process on `url`; with `idle`, returned once it has said it
        is idle (so the next burst's NOTIFY wakes it), else at once."""
        log = self.workdir / f"{label}.log"
        with benchdb.BenchDb(url) as db:
            before = db.relays_idle()
            with procs.child(
                ["-m", "outbox", "relay", *args], self.child_env(url), log, "outbox relay"
            ) as relay:
                if idle:
                    procs.wait_ready(relay, lambda: db.relays_idle() > before)
                yield relay

    def machine(self, db: benchdb.BenchDb) -> dict[str, object]:
        if self._machine is None:
            self._machine = {
                "cpus": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "pg_version": db.server_version(),
                "python": platform.python_version(),
                "platform": platform.platform(terse=True),
                "database": "embedded" if self.embedded else "DATABASE_URL",
                "pg_settings": db.settings(PG_SETTINGS),
            }
        return self._machine

    def report(
        self,
        db: benchdb.BenchDb,
        scenario: str,
        title: str,
        *,
        figures: Mapping[str, Figure],
        targets: dict[str, Target],
        notes: Sequence[str] = (),
    ) -> Report:
        machine = {**self.machine(db), "load_1m": round(self._load, 2)}
        return Report(scenario, title, dict(figures), targets, machine, list(notes))

    def rounds(self) -> int:
        """How many A/B rounds each comparison runs (medians are taken over them)."""
        return 2 if self.quick else 3


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    return platform.processor() or "unknown"


def interleave(
    rounds: int, first: Callable[[int], A], second: Callable[[int], B]
) -> tuple[list[A], list[B]]:
    """Run each side `rounds` times, alternating which goes first (AB BA AB...), so drift in the
    machine (checkpoints, caches, growing tables) falls on both sides alike."""
    a: list[A] = []
    b: list[B] = []
    for index in range(rounds):
        if index % 2 == 0:
            a.append(first(index))
            b.append(second(index))
        else:
            b.append(second(index))
            a.append(first(index))
    return a, b


def rotate(rounds: int, sides: Sequence[Callable[[int], A]]) -> list[list[A]]:
    """interleave() for any number of sides: each round starts one side later (ABC BCA CAB...);
    returns each side's results, in the order of `sides`."""
    results: list[list[A]] = [[] for _ in sides]
    for index in range(rounds):
        for turn in range(len(sides)):
            side = (index + turn) % len(sides)
            results[side].append(sides[side](index))
    return results


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of the per-round ratios: each round's pair ran back to back."""
    pairs = [n / d for n, d in zip(numerators, denominators, strict=True) if d > 0]
    return median(pairs)


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    tick: Callable[[], None] | None = None,
    interval: float = 0.02,
) -> None:
    """Poll `predicate` until it holds; raise a one-line error after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise OutboxError(f"benchmark stalled: {what} did not happen within {timeout:g}s")
        if tick is not None:
            tick()
        time.sleep(interval)
