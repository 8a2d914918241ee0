"""`outbox bench`: run the benchmark scenarios and print their figures against the targets."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from outbox import bench
from outbox.bench.harness import Bench
from outbox.config import Settings
from outbox.db import connect
from outbox.errors import OutboxError

ALL_SOAK_MINUTES = 3.0  # how long `soak` runs under `all`


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not 0 < value <= 24 * 60:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 1440")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure capture cost, delivery rate and latency against the published targets",
        description="Run a benchmark scenario on a fresh scratch database (created and dropped "
        "on the server DATABASE_URL names, else on the embedded PostgreSQL) and print its "
        "figures, each against its target. Baselines run in the same process tree, "
        "interleaved with what they are compared to. Everything stays on loopback.",
    )
    parser.add_argument(
        "scenario",
        choices=[*bench.SCENARIOS, "all"],
        help="capture, fanout, accounts, deliver, ordering, peer, latency, backlog, isolation, "
        "soak, or all of them",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per scenario on stdout"
    )
    parser.add_argument(
        "--minutes",
        type=_minutes,
        default=None,
        help="how long `soak` runs (default 10; 3 under `all`; seconds with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts and short rounds: checks the bench runs, measures nothing",
    )
    parser.set_defaults(func=run)


def _needs_asyncpg() -> None:
    """`peer`'s pgqueuer worker runs on asyncpg, which only the bench extra installs."""
    try:
        importlib.import_module("asyncpg")
    except ImportError:
        raise OutboxError(
            "the peer benchmark needs asyncpg: pip install 'stover-outbox[bench]'"
        ) from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    names = list(bench.SCENARIOS) if args.scenario == "all" else [args.scenario]
    if "peer" in names:
        _needs_asyncpg()
    db = connect.resolve(settings)
    minutes = args.minutes
    if minutes is None and args.scenario == "all" and not args.quick:
        # Long enough for three of autovacuum's visits, the least over which the soak's
        # dead-tuple growth means anything (outbox.bench.soak.NAPTIMES_TO_JUDGE).
        minutes = ALL_SOAK_MINUTES
    # Children (the relay, the baseline client, the peer) run with the default settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as workdir:
        context = Bench(
            settings=settings,
            server_url=db.url,
            env=env,
            workdir=Path(workdir),
            embedded=db.embedded,
            quick=args.quick,
            minutes=minutes,
        )
        for name in names:
            report = bench.run(name, context)
            if args.json:
                print(json.dumps(report.as_json()), flush=True)
            else:
                print(report.table() + "\n", flush=True)
    return 0
