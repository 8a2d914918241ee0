"""`outbox demo`: the whole pipeline on one machine, from Stover writes to the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from outbox import demo, logs, render
from outbox.config import Settings
from outbox.db import connect, migrate
from outbox.db import demo as demo_db


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 3600")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="see it work: writes, events, signed deliveries, retries, the audit trail",
        description="Migrate, start a receiver that verifies signatures and fails a share of "
        "requests, write realistic Stover rows at a steady rate, deliver them with an "
        "in-process relay on a compressed retry ladder, then print a summary and three audit "
        "queries. Uses the embedded PostgreSQL unless DATABASE_URL is set (the demo then writes "
        "sample rows into that database's stover schema: not for production).",
    )
    parser.add_argument(
        "--duration", type=_positive, default=20.0, metavar="S", help="seconds of writes (20)"
    )
    parser.add_argument(
        "--rate", type=_positive, default=20.0, metavar="N", help="writes per second (20)"
    )
    parser.add_argument(
        "--fail-rate",
        type=_share,
        default=0.2,
        metavar="R",
        help="share of requests the receiver answers 500, 0 to 1 (0.2)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the data (and the embedded server running) and print how to connect",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # The relay's per-attempt lines would drown the progress line; warnings still show.
    logs.configure(settings.log_format, level=logging.WARNING)
    db = connect.resolve(settings, keep_running=args.keep)
    applied = migrate.migrate(db.url)
    print(f"schema: up to date ({len(applied)} migration(s) applied now)", file=sys.stderr)
    plan = demo.Plan(duration=args.duration, rate=args.rate, fail_rate=args.fail_rate)
    run_ = demo.Demo(db.url, settings, plan)
    ticker = demo.Ticker(sys.stderr, tty=sys.stderr.isatty(), width=render.line_width(sys.stderr))
    try:
        report = asyncio.run(run_.run(ticker))
        audits = demo_db.audits(db.url, report.endpoint_id)
    finally:
        if run_.endpoint_id is not None:
            demo_db.finish(db.url, run_.endpoint_id, keep=args.keep)
    render.emit(demo.summary(report))
    for number, audit in enumerate(audits, start=1):
        render.emit("\n" + demo.audit_text(audit, number))
    render.emit("\n" + _closing(db, report.endpoint_id, keep=args.keep))
    return 130 if report.interrupted else 0


def _closing(db: connect.Database, endpoint_id: str, *, keep: bool) -> str:
    """How to go on: connect with psql when the data is kept, else how to keep it."""
    if not keep:
        if db.embedded:
            return (
                "The demo endpoint is deleted and the embedded server stops now.\n"
                "Run `outbox demo --keep` to explore the data with psql afterwards."
            )
        return "The demo endpoint and its deliveries are deleted; `--keep` keeps them."
    target = f"'{db.url}'" if db.embedded else '"$DATABASE_URL"'
    lines = [
        f"Data kept. The demo endpoint {endpoint_id} is switched off;",
        "its deliveries and attempts stay for you to query. Connect with psql:",
        "",
        f"  {_psql()} {target}",
    ]
    if db.embedded:
        lines += [
            "",
            "The embedded server runs until an outbox command without --keep exits",
            "(e.g. `outbox migrate --check`).",
        ]
    return "\n".join(lines)


def _psql() -> str:
    """psql from PATH, else the one the embedded server's package ships."""
    if shutil.which("psql"):
        return "psql"
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin" / "psql"
        if bundled.exists():
            return str(bundled)
    return "psql"
