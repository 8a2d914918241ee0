"""`outbox bench`: the project's own benchmark scenarios, one module each."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from outbox.bench.harness import Bench, Report

# In the order `all` runs them.
SCENARIOS = (
    "capture",
    "fanout",
    "accounts",
    "deliver",
    "ordering",
    "peer",
    "latency",
    "backlog",
    "isolation",
    "soak",
)


def run(scenario: str, bench: Bench) -> Report:
    """Run one scenario and return its report."""
    module = importlib.import_module(f"outbox.bench.{scenario}")
    report: Report = module.run(bench)
    return report
