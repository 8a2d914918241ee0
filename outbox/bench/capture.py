"""`capture`: what the capture triggers cost durable INSERTs into stover.contacts, via pgbench.

pgbench rather than Python clients: it is a C client running prepared statements, so nearly all
the time it measures is the server's, and the ratio is the triggers' own cost. Threads of a Python
client add their per-statement overhead (and the GIL) to both sides and flatter the ratio.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from outbox.bench.harness import (
    Bench,
    Figure,
    Progress,
    Report,
    Target,
    at_least,
    median,
    ratio,
    rotate,
)
from outbox.db import benchdb
from outbox.db.benchdb import BenchDb, Capture
from outbox.errors import OutboxError
from outbox.sqlfiles import queries

SECONDS = 1  # per pgbench run; every case runs one per mode (_SIDES) per round
QUICK_TRANSACTIONS = 10  # per client, with --quick
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


@dataclass(frozen=True)
class Case:
    """One comparison: a pgbench script at a client count, capture on vs off."""

    name: str
    script: str  # named query in sql/queries/bench.sql
    clients: int
    rows: int  # rows per statement
    target: float


@dataclass(frozen=True)
class Side:
    """One configuration measured in every round: which triggers run, how many endpoints
    subscribe."""

    name: str  # figure suffix
    label: str  # progress lines
    capture: Capture
    endpoints: int = 1


PLAIN = Side("plain", "plain", "off")
SIDES = (
    Side("1_endpoint", "capture, 1 endpoint", "outbox", 1),
    Side("10_endpoints", "capture, 10 endpoints", "outbox", 10),
    Side("no_account", "capture without an account column", "no_account", 1),
    PLAIN,
    Side("floor", "floor", "floor"),
    Side("reference", "reference", "reference"),
)
PGQ = Side("pgq", "PgQ", "pgq")
ENDPOINTS = 10  # subscribed to every type; as many enabled as the side says
SELF_TARGET = 0.95  # capture with 10 endpoints / with 1
ACCOUNT_TARGET = 0.98  # capture taking the account from a column / with no account column
FLOOR_MARGIN = 0.03  # a ratio within this of a floor below its target meets it

CASES = (
    Case("1_client", "pgbench_single_row", 1, 1, 0.80),
    Case("4_clients", "pgbench_single_row", 4, 1, 0.80),
    Case("8_clients", "pgbench_single_row", 8, 1, 0.80),
    Case("100_row", "pgbench_hundred_rows", 4, 100, 0.50),
)


def _pgbench(bench: Bench, pgbench: str, url: str, script: Path, clients: int) -> float:
    """Transactions per second of one pgbench run (excluding connection set-up)."""
    length = ["-t", str(QUICK_TRANSACTIONS)] if bench.quick else ["-T", str(SECONDS)]
    args = [pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients), *length]
    done = subprocess.run(  # noqa: S603 - pgbench from the server's installation, no shell
        [*args, "-f", str(script), url],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        check=False,
        env=bench.env,
    )
    found = _TPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise OutboxError(f"pgbench failed ({done.returncode}): {tail}")
    return float(found[1])


def run(bench: Bench) -> Report:
    pgbench = benchdb.pgbench_path()
    if pgbench is None:
        raise OutboxError("pgbench was not found (it ships with the embedded PostgreSQL)")
    rounds = bench.rounds()
    progress = Progress("capture")
    sql = queries("bench")
    with bench.database("capture") as url, BenchDb(url) as db:
        # Every endpoint subscribes to every type; no relay runs, so nothing is ever sent.
        for n in range(ENDPOINTS):
            db.add_endpoint(f"http://127.0.0.1:9/capture/{n}")
        sides = (*SIDES, PGQ) if db.install_references() else SIDES
        figures: dict[str, Figure] = {}
        targets: dict[str, Target] = {}
        for case in CASES:
            script = bench.workdir / f"{case.script}.sql"
            script.write_text(sql[case.script] + "\n")

            def measure(
                index: int, side: Side, *, case: Case = case, script: Path = script
            ) -> float:
                db.capture(side.capture)
                db.enable_endpoints(side.endpoints)
                db.checkpoint()
                tps = _pgbench(bench, pgbench, url, script, case.clients)
                round_ = f"round {index + 1}/{rounds}"
                progress.step(f"{case.name} {round_} {side.label}: {tps:,.0f} tps")
                return tps * case.rows

            results = rotate(rounds, [functools.partial(measure, side=side) for side in sides])
            by_side = dict(zip((side.name for side in sides), results, strict=True))
            _case_figures(case, by_side, figures, targets)
        db.capture("outbox")
        db.enable_endpoints(ENDPOINTS)
        notes = _notes(bench, rounds, pgq=PGQ in sides)
        return bench.report(
            db,
            "capture",
            "durable INSERTs into stover.contacts, capture triggers on vs off",
            figures=figures,
            targets=targets,
            notes=notes,
        )


def _case_figures(
    case: Case,
    by_side: dict[str, list[float]],
    figures: dict[str, Figure],
    targets: dict[str, Target],
) -> None:
    """One case's rates and ratios to plain, and its targets: each capture ratio at least the
    case's target, or within FLOOR_MARGIN of a floor that is itself below it (single-row)."""
    plain = by_side[PLAIN.name]
    unit = "rows_per_s" if case.rows > 1 else "tps"
    figures[f"{case.name}_{unit}_plain"] = median(plain)
    for name, values in by_side.items():
        if name != PLAIN.name:
            figures[f"{case.name}_ratio_{name}"] = ratio(values, plain)
    floor = ratio(by_side["floor"], plain)
    for name in ("1_endpoint", "10_endpoints"):
        share = ratio(by_side[name], plain)
        goal = case.target
        if case.rows == 1 and floor < case.target:
            goal = round(floor - FLOOR_MARGIN, 3)
        targets[f"{case.name}_ratio_{name}"] = at_least(share, goal)
    targets[f"{case.name}_10_endpoints_vs_1"] = at_least(
        ratio(by_side["10_endpoints"], by_side["1_endpoint"]), SELF_TARGET
    )
    with_account = ratio(by_side["1_endpoint"], by_side["no_account"])
    figures[f"{case.name}_account_vs_none"] = with_account
    targets[f"{case.name}_account_vs_none"] = at_least(with_account, ACCOUNT_TARGET)


def _notes(bench: Bench, rounds: int, *, pgq: bool) -> list[str]:
    length = "10 transactions per client" if bench.quick else f"{SECONDS} s per run"
    return [
        "pgbench (C client, prepared statements): the ratio is the server-side cost",
        f"each case: {rounds} rounds of every side in turn, {length}; a CHECKPOINT before "
        "every run; medians of per-round ratios to plain (no trigger)",
        "durable commits (synchronous_commit as the server has it); no relay running; "
        "100-row case at 4 clients",
        "*_ratio_1_endpoint / *_10_endpoints: the outbox's capture with 1 or 10 enabled "
        "endpoints subscribed to every type (capture writes the event row alone either way)",
        "every row written for account 1; *_account_vs_none: capture taking each event's "
        "account from account_id (as the reference tables are attached) over the same trigger "
        "given no account column, paired round by round",
        "*_ratio_floor: one tiny row per statement (identity and xid) into an unindexed table: "
        "the least a trigger can do; a single-row target below it becomes floor - "
        f"{FLOOR_MARGIN}",
        "*_ratio_reference: each row as jsonb into an unindexed table: an event row's data "
        "without the outbox's id and primary key",
        "*_ratio_pgq: PgQ's jsontriga (row-level C trigger into a PgQ queue)"
        if pgq
        else "PgQ is not installed on this server: no *_ratio_pgq",
    ]
