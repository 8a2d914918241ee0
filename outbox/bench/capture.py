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


_SIDES: dict[Capture, str] = {
    "outbox": "with capture",
    "off": "plain",
    "reference": "reference",
    "floor": "floor",
}

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
        # Subscribed to every event type, so each row gets its event and its delivery. No relay
        # runs: nothing is ever sent to this address.
        db.add_endpoint("http://127.0.0.1:9/capture")
        db.install_references()
        figures: dict[str, Figure] = {}
        targets: dict[str, Target] = {}
        for case in CASES:
            script = bench.workdir / f"{case.script}.sql"
            script.write_text(sql[case.script] + "\n")

            def measure(
                index: int, mode: Capture, *, case: Case = case, script: Path = script
            ) -> float:
                db.capture(mode)
                db.checkpoint()
                tps = _pgbench(bench, pgbench, url, script, case.clients)
                progress.step(
                    f"{case.name} round {index + 1}/{rounds} {_SIDES[mode]}: {tps:,.0f} tps"
                )
                return tps * case.rows

            with_capture, plain, reference, floor = rotate(
                rounds, [functools.partial(measure, mode=mode) for mode in _SIDES]
            )
            unit = "rows_per_s" if case.rows > 1 else "tps"
            figures[f"{case.name}_{unit}_with_capture"] = median(with_capture)
            figures[f"{case.name}_{unit}_plain"] = median(plain)
            share = ratio(with_capture, plain)
            figures[f"{case.name}_ratio"] = share
            figures[f"{case.name}_ratio_reference"] = ratio(reference, plain)
            figures[f"{case.name}_ratio_floor"] = ratio(floor, plain)
            targets[f"{case.name}_ratio"] = at_least(share, case.target)
        db.capture("outbox")
        notes = [
            "pgbench (C client, prepared statements): the ratio is the server-side cost",
            f"each case: {rounds} rounds of capture on, off, reference and floor in turn, "
            + ("10 transactions per client" if bench.quick else f"{SECONDS} s per run")
            + "; a CHECKPOINT before every run; medians of per-round ratios",
            "durable commits (synchronous_commit as the server has it); one subscribed "
            "endpoint, no relay running; 100-row case at 4 clients",
            "*_ratio_reference: the same comparison for the cheapest trigger capture there is "
            "(each row as jsonb into an unindexed table: no id, no fan-out), the ceiling of any "
            "trigger-written outbox on this machine",
            "*_ratio_floor: the same for the least capture the contract allows (the event and "
            "its delivery to the one endpoint, into the outbox's own tables: no matching, no "
            "wake-up check, no switch to UTC), the ceiling of any trigger that keeps it",
        ]
        return bench.report(
            db,
            "capture",
            "durable INSERTs into stover.contacts, capture triggers on vs off",
            figures=figures,
            targets=targets,
            notes=notes,
        )
