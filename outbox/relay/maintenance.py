"""Scheduled maintenance hosted by the relays: the registry of jobs, and pgqueuer's scheduler,
which runs each job once per schedule across every relay on a database, on a connection and a
task of its own, each run in a thread of its own with its own connection, off the delivery path."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from croniter import croniter
from pgqueuer import SchedulerManager
from pgqueuer.executors import ScheduleExecutor
from pgqueuer.models import Schedule

from outbox.config import Settings
from outbox.db import retention, scheduler, upkeep
from outbox.errors import first_line

log = structlog.get_logger("outbox.maintenance")

Counts = Mapping[str, object]

RETENTION_BATCH = 1000  # events per transaction, as `outbox prune` by default
# How far ahead of this process's clock a job's next run is reckoned (see _Ahead).
AHEAD = timedelta(seconds=0.25)


class Halted(Exception):
    """A job stopped between two of its steps because the relay is stopping."""

    def __init__(self, counts: Counts) -> None:
        super().__init__("the relay is stopping")
        self.counts = counts


@dataclass(frozen=True)
class Job:
    """One maintenance job. `work` runs in a thread on a connection of its own, checks `halt`
    between its steps (raising Halted), and returns the counts its log line shows. `needs` names
    the (table, privilege) pairs it requires, checked on the whole table (a grant on some columns
    does not count): a relay whose role lacks one leaves the job to the relays whose roles have
    them."""

    name: str  # pgqueuer's entrypoint: the database holds one schedule row per (name, schedule)
    schedule: str  # cron, UTC; a sixth field gives seconds
    work: Callable[[retention.Connection, threading.Event], Counts]
    needs: tuple[tuple[str, str], ...] = ()


def jobs(settings: Settings) -> list[Job]:
    """The jobs a relay hosts: one line each, None where a setting turns the job off."""
    registry = [
        retention_job(settings),
        disable_job(settings),
    ]
    return [job for job in registry if job is not None]


def retention_job(settings: Settings) -> Job | None:
    """`OUTBOX_RETENTION`: remove what `outbox prune --older-than` it would remove."""
    if settings.retention is None:
        return None
    work = functools.partial(prune, settings.retention)
    needs = (("outbox.events", "delete"), ("outbox.deliveries", "delete"))
    return Job("outbox.retention", settings.retention_schedule, work, needs)


def disable_job(settings: Settings) -> Job:
    """`OUTBOX_DISABLE_AFTER`: disable the endpoints whose every attempt has failed that long,
    looked for on `OUTBOX_DISABLE_SCHEDULE` (every minute)."""
    work = functools.partial(disable_failing, settings.disable_after)
    # outbox_relay may: the function writes only the columns the relay's role may update.
    return Job("outbox.disable_failing", settings.disable_schedule, work)


def disable_failing(after: timedelta, conn: retention.Connection, halt: threading.Event) -> Counts:
    """Disable, with the reason and the outbox.endpoint.disabled event, every enabled endpoint
    whose attempts have all failed over a span of `after`."""
    disabled = upkeep.disable_failing_endpoints(conn, after)
    if disabled:
        log.warning(
            "endpoints disabled: every attempt failed",
            endpoint_ids=disabled,
            failing_for_s=after.total_seconds(),
        )
    return {"disabled": len(disabled)}


def prune(age: timedelta, conn: retention.Connection, halt: threading.Event) -> Counts:
    """Remove events older than `age` with their deliveries and attempts, batch by batch, as
    `outbox prune` does."""

    def between_batches(done: retention.Pruned) -> None:
        if halt.is_set():
            raise Halted(_pruned(done))

    before = retention.cutoff(conn, age)
    done = retention.prune(conn, before=before, batch=RETENTION_BATCH, progress=between_batches)
    return _pruned(done)


def _pruned(done: retention.Pruned) -> Counts:
    return {
        "cutoff": done.cutoff.astimezone(UTC).isoformat(),
        "events": done.events,
        "deliveries": done.deliveries,
        "kept": done.kept,
    }


class _Ahead(ScheduleExecutor):
    """pgqueuer's schedule executor, with the next run reckoned from a moment ahead.

    The scheduler takes a due schedule row and sets its next_run in one UPDATE, to the database's
    now() plus a delay this process computed from its own clock just before sending it
    (pgqueuer/core/sm.py: fetch_schedule with next_in(); qb.py: build_fetch_schedule_query). A
    fetch sent a few milliseconds before a fire time that reaches the database after it takes
    that run and sets next_run to the same fire time, still due: the next poll, by any relay,
    would run it again. Reckoned from AHEAD later, next_run lands past the run being taken. The
    scheduler polls a second after each fire time, so this moves none of its regular runs."""

    def get_next(self) -> datetime:
        start = datetime.now(UTC) + AHEAD
        following: float = croniter(self.parameters.expression, start_time=start).get_next(float)
        return datetime.fromtimestamp(following, UTC)


@contextlib.asynccontextmanager
async def hosted(url: str, settings: Settings, stop: asyncio.Event) -> AsyncIterator[None]:
    """`host()` as a task for the life of the block. Leaving it once `stop` is set waits for the
    task: a running job stops at its next step (a retention batch commits first)."""
    task = asyncio.create_task(host(url, settings, stop))
    try:
        yield
    finally:
        if not stop.is_set():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def host(url: str, settings: Settings, stop: asyncio.Event) -> None:
    """Run the jobs' scheduler until `stop` is set, reconnecting after an outage. Returns early,
    with a log line saying why, when there is nothing this relay may host."""
    registry = jobs(settings)
    if not registry:
        log.info("maintenance: no job to host")
        return
    halt = threading.Event()
    # A thread of its own: a job never waits behind, nor holds up, the resolver's lookups in the
    # event loop's default executor.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-maintenance")
    backoff = 1.0
    try:
        while not stop.is_set():
            try:
                async with await scheduler.connect(url) as conn:
                    hosted = await _hostable(conn, registry)
                    if not hosted:
                        return
                    manager = SchedulerManager(scheduler.scheduler_queries(conn))
                    for job in hosted:
                        run = functools.partial(_run, job, url, halt, executor)
                        manager.schedule(
                            job.name, job.schedule, executor_factory=_Ahead, accepts_context=False
                        )(run)
                    await _until_stopped(manager, stop, halt)
                    backoff = 1.0
            except Exception as exc:  # the relay delivers on; maintenance tries again later
                log.warning(
                    "maintenance interrupted; retrying", error=first_line(exc), retry_in=backoff
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 60.0)
    finally:
        halt.set()
        executor.shutdown(wait=False)


async def _hostable(conn: scheduler.AsyncConnection, registry: list[Job]) -> list[Job]:
    """The jobs this relay's role may run; each one it may not, and the reason, logged."""
    reason = await scheduler.unusable(conn)
    if reason is not None:
        log.warning(f"maintenance not hosted: {reason}")
        return []
    hosted = []
    for job in registry:
        lacking = await scheduler.lacking(conn, job.needs)
        if lacking:
            log.warning(
                "maintenance job not hosted by this relay: its role lacks privileges",
                job=job.name,
                lacking=lacking,
            )
        else:
            hosted.append(job)
    if hosted:
        log.info("maintenance hosted", jobs={job.name: job.schedule for job in hosted})
    return hosted


async def _until_stopped(
    manager: SchedulerManager, stop: asyncio.Event, halt: threading.Event
) -> None:
    """Run the scheduler until `stop`; a job running then stops at its next step."""
    running = asyncio.create_task(manager.run())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        halt.set()
        manager.shutdown.set()
    stopping.cancel()
    await running  # an error it ended on goes to host(), which reconnects


async def _run(
    job: Job, url: str, halt: threading.Event, executor: ThreadPoolExecutor, schedule: Schedule
) -> None:
    """One run of `job`, logged with the fire time it serves and its counts. A failure is
    logged, and the job waits for its next fire time."""
    slot: float = croniter(schedule.expression, start_time=datetime.now(UTC)).get_prev(float)
    fields: dict[str, object] = {
        "job": job.name,
        "slot": datetime.fromtimestamp(slot, UTC).isoformat(),
    }
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        counts = await loop.run_in_executor(executor, _work, job, url, halt)
    except Halted as stopped:
        log.info("maintenance job stopped with the relay", **fields, **stopped.counts)
        return
    except Exception as exc:
        log.warning("maintenance job failed", **fields, error=first_line(exc))
        return
    duration_ms = round((time.monotonic() - started) * 1000.0, 1)
    log.info("maintenance job done", **fields, duration_ms=duration_ms, **counts)


def _work(job: Job, url: str, halt: threading.Event) -> Counts:
    with scheduler.job_connection(url) as conn:
        return job.work(conn, halt)
