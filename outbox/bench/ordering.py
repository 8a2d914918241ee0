"""`ordering`: what an ordered endpoint costs, with one relay process and a fast receiver: 1,000
records updated in turn, delivered ordered against unordered; and the others' rate when one
record's deliveries always fail, against none failing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from outbox.bench import drain
from outbox.bench.harness import Bench, Progress, Report, at_least, interleave, median, ratio
from outbox.bench.procs import Child
from outbox.bench.receiver import Receiver
from outbox.db.benchdb import BenchDb

RECORDS = 1_000
UPDATES = 5  # each record's events per round: the ordered endpoint sends them one at a time
QUICK_RECORDS = 50
QUICK_UPDATES = 2


class Rounds:
    """Each round's records are new deals, so what an earlier round left held or failing stays
    out of its way; the failing rounds' first record fails every attempt."""

    def __init__(
        self, db: BenchDb, rx: Receiver, relay: Child, progress: Progress, endpoint: str
    ) -> None:
        self.db, self.rx, self.relay, self.progress = db, rx, relay, progress
        self.endpoint = endpoint
        self.records, self.updates = RECORDS, UPDATES
        self.next_first = 1
        self.stuck: list[str] = []  # the failing records' keys

    def burst(self, label: str, *, ordered: bool, failing: bool = False) -> drain.Round:
        self.db.set_ordered(self.endpoint, ordered=ordered)
        first = self.next_first
        self.next_first += self.records
        expected = self.records * self.updates
        fail: Callable[[list[str]], None] = lambda _ids: None  # noqa: E731
        if failing:
            expected -= self.updates
            self.stuck.append(f"deals:{first}")
            fail = self.rx.fail

        def start() -> None:
            self.db.insert_record_events(
                self.records, self.updates, first=first, before_commit=fail
            )

        done = drain.burst(
            self.db, self.rx, self.relay, self.progress, events=0, expected=expected,
            label=label, start=start, settled=self._settled(self.stuck),
        )  # fmt: skip
        self.progress.step(f"{label}: {done.rate:,.0f}/s")
        return done

    def _settled(self, stuck: Sequence[str]) -> Callable[[], bool]:
        keys = list(stuck)
        return lambda: self.db.pending_apart(keys) == 0


def run(bench: Bench) -> Report:
    rounds = bench.rounds()
    progress = Progress("ordering")
    with bench.database("ordering") as url, BenchDb(url) as db, Receiver() as rx:
        endpoint = db.add_endpoint(rx.url())
        with bench.relay(url) as relay:
            runs = Rounds(db, rx, relay, progress, endpoint)
            if bench.quick:
                runs.records, runs.updates = QUICK_RECORDS, QUICK_UPDATES

            def ordered(i: int) -> drain.Round:
                return runs.burst(f"ordered round {i + 1}/{rounds}", ordered=True)

            def unordered(i: int) -> drain.Round:
                return runs.burst(f"unordered round {i + 1}/{rounds}", ordered=False)

            def one_failing(i: int) -> drain.Round:
                label = f"one record failing, round {i + 1}/{rounds}"
                return runs.burst(label, ordered=True, failing=True)

            def none_failing(i: int) -> drain.Round:
                return runs.burst(f"none failing, round {i + 1}/{rounds}", ordered=True)

            ordered_rounds, unordered_rounds = interleave(rounds, ordered, unordered)
            failing_rounds, clean_rounds = interleave(rounds, one_failing, none_failing)
        failed_requests = rx.failed()
        held = db.pending() - db.pending_apart(runs.stuck)
        figures = {
            "records": runs.records,
            "updates_per_record": runs.updates,
            "rounds": rounds,
            "ordered_per_s": median([r.rate for r in ordered_rounds]),
            "unordered_per_s": median([r.rate for r in unordered_rounds]),
            "ordered_vs_unordered": _ratio(ordered_rounds, unordered_rounds),
            "others_per_s_one_failing": median([r.rate for r in failing_rounds]),
            "per_s_none_failing": median([r.rate for r in clean_rounds]),
            "one_failing_vs_none": _ratio(failing_rounds, clean_rounds),
            "failing_attempts": failed_requests,
            "failing_records_held": held,
        }
        targets = {
            "ordered_vs_unordered": at_least(float(figures["ordered_vs_unordered"]), 0.80),
            "one_failing_vs_none": at_least(float(figures["one_failing_vs_none"]), 0.90),
        }
        notes = [
            f"{runs.records:,} deals updated {runs.updates} times in turn per round, in one "
            "transaction; one relay process, one endpoint, a receiver answering at once",
            f"{rounds} rounds per comparison, the two sides alternating; medians shown",
            "failing rounds: every request of the round's first deal is answered 500; the rate "
            "is that of the other deals' deliveries, first to last arrival",
        ]
        return bench.report(
            db,
            "ordering",
            "ordered delivery per record: its cost, and one failing record among many",
            figures=figures,
            targets=targets,
            notes=notes,
        )


def _ratio(numerators: Sequence[drain.Round], denominators: Sequence[drain.Round]) -> float:
    return ratio([r.rate for r in numerators], [r.rate for r in denominators])
