"""A burst of due deliveries drained by the process under test, timed where they arrive."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from outbox.bench.harness import Progress, wait_for
from outbox.bench.procs import Child
from outbox.bench.receiver import Receiver, Window
from outbox.db.benchdb import BenchDb

Settled = Callable[[], bool]


@dataclass(frozen=True)
class Round:
    """What one round delivered, over how long, for how much of the sender's CPU."""

    window: Window
    cpu_s: float
    settled_at: float = 0.0  # time.time() when the round was seen settled (outcomes recorded)

    @property
    def rate(self) -> float:
        return self.window.rate

    @property
    def record_lag_ms(self) -> float:
        """From the last arrival until the round was seen settled (includes polling, ~20 ms)."""
        return max(0.0, self.settled_at - self.window.last) * 1000.0 if self.settled_at else 0.0

    @property
    def cpu_us(self) -> float:
        """Sender CPU per request, in microseconds."""
        return self.cpu_s * 1e6 / self.window.count if self.window.count else float("nan")


def drain_timeout(expected: int) -> float:
    """How long a round may take before the bench calls it stalled (≥ 100 deliveries/s)."""
    return max(60.0, expected / 100.0)


def burst(
    db: BenchDb,
    receiver: Receiver,
    sender: Child,
    progress: Progress,
    *,
    events: int,
    expected: int,
    label: str,
    ports: Sequence[int] | None = None,
    settled: Settled | None = None,
    start: Callable[[], None] | None = None,
) -> Round:
    """Make `events` events due (or call `start`), wait until `ports` received `expected`
    requests and `settled()` holds (default: nothing left pending), and time it.

    The relay is idle when the burst commits, so the fan-out trigger's NOTIFY wakes it, as it
    would wake a relay in production.
    """
    receiver.reset()
    cpu_before = sender.cpu()
    if start is not None:
        start()
    else:
        db.insert_events(events)
    is_settled = settled or (lambda: db.pending() == 0)

    def finished() -> bool:
        sender.check()
        got = receiver.count(ports)
        progress(f"{label}: {got:,}/{expected:,} received")
        return got >= expected and is_settled()

    wait_for(finished, drain_timeout(expected), f"{label} ({expected:,} deliveries)")
    settled_at = time.time()
    return Round(receiver.window(ports), sender.cpu() - cpu_before, settled_at)
