"""Chaos: writers commit contacts through the capture triggers beside three relays; the receiver
answers, fails, stalls past the relay's timeout or drops the connection at random; relays are
killed with SIGKILL and started again, and PostgreSQL is restarted under them all. At the end every
event has one delivery per endpoint, delivered or failed as the retry ladder says, none is lost,
and the duplicates the faults caused are counted and reported.

Every decision (which pairs never succeed, each answer, which relay dies when) follows from SEED
(CHAOS_SEED overrides it), printed with the summary. The server is a dedicated one, never the
machine's shared server."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from support import DROP, Drop, Received, running_receiver, stop, wait_until

from . import Server, add_endpoint, count, relay_env, relay_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEED = int(os.environ.get("CHAOS_SEED", "20240611"))
RELAYS = 3
CONCURRENCY = 32  # per relay: the most attempts a killed relay can leave unrecorded
WRITERS = 4
CONTACTS = 150  # per writer
ENDPOINTS = ("/a", "/b")
TIMEOUT = 2.0  # OUTBOX_TIMEOUT; a stall lasts longer
LADDER = (0.0, 1.0, 1.0, 2.0)  # OUTBOX_RETRY_LADDER: four attempts
DOOMED = 0.04  # the share of (contact, endpoint) pairs the receiver never answers 2xx
KILLS = 6
CHAOS_SECONDS = 25.0  # kills and restarts happen within this, while the writers write
# The receiver's answers by a roll in [0, 1): the first whose bound is above it.
ANSWERS = ((0.6, "2xx"), (0.7, "500"), (0.8, "503"), (0.9, "stall"), (1.0, "drop"))


def doomed(name: str, path: str) -> bool:
    """Whether the receiver fails every attempt to deliver contact `name` to `path`."""
    return random.Random(f"{SEED}:doomed:{name}:{path}").random() < DOOMED


@dataclass
class Ledger:
    """The receiver's answers: a decision for each request, kept per delivery."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (path, name, attempt)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (path, event id)
    acked: Counter[tuple[str, str]] = field(default_factory=Counter)  # 2xx answers
    modes: Counter[str] = field(default_factory=Counter)

    def answer(self, request: Received) -> tuple[int, bytes, float] | Drop:
        """A 2xx, a 500 or 503, a stall past the relay's timeout, or a dropped connection.

        The choice is seeded by the request's identity (endpoint, contact, attempt number and
        how often that attempt was sent before), never by arrival order. A pair outside the
        doomed share always gets a 2xx at the ladder's last rung, so it must end delivered; a
        doomed pair never does, so it must end failed."""
        name = str(json.loads(request.body)["data"]["first_name"])
        headers = {key.lower(): value for key, value in request.headers.items()}  # any case
        attempt = int(headers["x-stover-attempt"])
        event_id = headers["webhook-id"]
        assert event_id == headers["x-stover-event-id"]
        with self.lock:
            nth = self.sent[(request.path, name, attempt)]
            self.sent[(request.path, name, attempt)] += 1
        roll = random.Random(f"{SEED}:{request.path}:{name}:{attempt}:{nth}").random()
        if doomed(name, request.path):
            roll = 0.6 + 0.4 * roll  # the failing answers only
        elif attempt >= len(LADDER):
            roll = 0.0
        mode = next(mode for below, mode in ANSWERS if roll < below)
        with self.lock:
            self.requests[(request.path, event_id)] += 1
            self.modes[mode] += 1
            if mode == "2xx":
                self.acked[(request.path, event_id)] += 1
        if mode == "2xx":
            return (202 if roll < 0.3 else 200), b"ok", 0.0
        if mode == "stall":
            return 503, b"late", TIMEOUT + 1.0
        if mode == "drop":
            return DROP
        return int(mode), b"no", 0.0


def _commit(url: str, names: list[str], deadline: float, halt: threading.Event) -> None:
    """Insert one transaction's contacts, exactly once: when the server goes away mid-commit,
    the names show whether the transaction committed before it is tried again."""
    committed: bool | None = False
    while True:
        if committed is False:
            try:
                with psycopg.connect(url, connect_timeout=2) as conn, conn.transaction():
                    for name in names:
                        conn.execute(
                            "insert into stover.contacts (first_name, email) values (%s, %s)",
                            [name, f"{name}@example.com"],
                        )
                return
            except psycopg.OperationalError:
                committed = None  # unknown
        assert time.monotonic() < deadline, f"could not write {names} before the deadline"
        if halt.wait(0.2):
            raise RuntimeError("the test stopped the writers")
        found = count(
            url, "select count(*) from stover.contacts where first_name = any(%s)", [names]
        )
        if found is not None:
            assert found in (0, len(names)), f"a transaction committed in part: {names}"
            if found:
                return
            committed = False


def _write(
    url: str, writer: int, errors: list[BaseException], deadline: float, halt: threading.Event
) -> None:
    """CONTACTS contacts in transactions of one to three, spread over the chaos."""
    rng = random.Random(f"{SEED}:writer:{writer}")
    names = [f"chaos-{writer}-{n}" for n in range(CONTACTS)]
    pause = 2 * CHAOS_SECONDS / CONTACTS  # ~ CHAOS_SECONDS of writing at two contacts a time
    try:
        i = 0
        while i < len(names):
            batch = names[i : i + rng.randint(1, 3)]
            _commit(url, batch, deadline, halt)
            i += len(batch)
            if halt.wait(rng.uniform(0.5, 1.5) * pause):
                raise RuntimeError("the test stopped the writers")
    except BaseException as exc:  # handed to the test
        errors.append(exc)


def _started(log: Path) -> bool:
    # A plain search: the line being written as we read may be cut short.
    return log.exists() and '"relay started"' in log.read_text(encoding="utf-8")


def _settled(url: str) -> bool:
    """Every event fanned out to every endpoint, and every delivery delivered or failed."""
    done = count(
        url,
        "select ((select count(*) from outbox.deliveries"
        "         where status in ('delivered', 'failed'))"
        "        = %s * (select count(*) from outbox.events where type not like 'outbox.%%')"
        "    and not exists (select from outbox.deliveries where status = 'pending'))::int",
        [len(ENDPOINTS)],
    )
    return done == 1


@dataclass(frozen=True)
class Fault:
    """One step of the plan: at `at` seconds, kill relay `slot` and start it again after `pause`
    seconds; or restart PostgreSQL (`fast`), or stop it (`immediate`) for `pause` seconds."""

    at: float
    kind: str  # kill, fast or immediate
    slot: int = 0
    pause: float = 0.0


def test_chaos_every_event_delivered_or_failed_as_the_ladder_says_none_lost(
    dedicated_server: Server, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server = dedicated_server
    began = time.monotonic()
    rng = random.Random(SEED)
    env = relay_env(
        server.env,
        TIMEOUT=f"{TIMEOUT:g}",
        RETRY_LADDER=",".join(f"{rung:g}" for rung in LADDER),
        # A run of failures opens an endpoint's circuit breaker now and then: its probes come
        # within a second, so the held deliveries go on (keeping their rungs) inside the wait.
        BREAKER_PROBE_INTERVAL="0.2,1",
    )
    args = ("--concurrency", str(CONCURRENCY), "--grace", "1")
    # The plan, drawn up front: kills of random relays at random moments, each started again
    # after a pause; a fast restart of PostgreSQL, and an immediate stop (a crash, for the
    # database) with the server away for a moment.
    plan = [
        Fault(rng.uniform(1.0, CHAOS_SECONDS), "kill", rng.randrange(RELAYS), rng.uniform(0.2, 1.5))
        for _ in range(KILLS)
    ]
    plan.append(Fault(rng.uniform(5.0, 10.0), "fast"))
    plan.append(Fault(rng.uniform(14.0, 20.0), "immediate", pause=rng.uniform(0.5, 2.0)))
    plan.sort(key=lambda fault: fault.at)
    ledger = Ledger()
    names = [f"chaos-{w}-{n}" for w in range(WRITERS) for n in range(CONTACTS)]
    errors: list[BaseException] = []
    kills = restarts = 0
    generation = itertools.count()

    with running_receiver(default=ledger.answer) as receiver, ExitStack() as stack:
        with psycopg.connect(server.url, autocommit=True) as conn:
            endpoint_paths = {add_endpoint(conn, receiver.url(path)): path for path in ENDPOINTS}

        def start(slot: int) -> subprocess.Popen[bytes]:
            log = tmp_path / f"relay{slot}-{next(generation)}.log"
            proc = stack.enter_context(relay_process(env, *args, log=log))
            # Up and past its start-up checks before the next fault: a relay that cannot reach
            # the database at start exits, as a supervisor expects.
            wait_until(lambda: _started(log), timeout=30, what=f"relay {slot} started")
            return proc

        relays = [start(slot) for slot in range(RELAYS)]
        deadline, halt = time.monotonic() + 120, threading.Event()
        writers = [
            threading.Thread(target=_write, args=(server.url, w, errors, deadline, halt))
            for w in range(WRITERS)
        ]
        stack.callback(halt.set)  # a failing test stops them at once
        for thread in writers:
            thread.start()

        chaos_began = time.monotonic()
        for fault in plan:
            time.sleep(max(0.0, chaos_began + fault.at - time.monotonic()))
            if fault.kind == "kill":
                os.killpg(relays[fault.slot].pid, signal.SIGKILL)
                assert relays[fault.slot].wait(10) == -signal.SIGKILL
                kills += 1
                time.sleep(fault.pause)
                relays[fault.slot] = start(fault.slot)
            elif fault.kind == "fast":
                server.restart("fast")
                restarts += 1
            else:
                server.stop("immediate")
                time.sleep(fault.pause)
                server.start()
                restarts += 1

        for thread in writers:
            thread.join(max(1.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in writers), "writers still writing"
        assert errors == []
        wait_until(lambda: _settled(server.url), timeout=90, what="every delivery settled")
        codes = [stop(relay) for relay in relays]
        with ledger.lock:
            acked = Counter(ledger.acked)
            requests = Counter(ledger.requests)
            modes = Counter(ledger.modes)
            # Attempts sent again under the same number: their outcome never made the record.
            resent = sum(n - 1 for n in ledger.sent.values())

    with psycopg.connect(server.url, autocommit=True) as conn:
        contacts = Counter(
            str(r[0]) for r in conn.execute("select first_name from stover.contacts").fetchall()
        )
        name_of = {
            str(event_id): str(name)
            for event_id, name in conn.execute(
                "select id, data ->> 'first_name' from outbox.events where type not like 'outbox.%'"
            ).fetchall()
        }
        deliveries = conn.execute(
            "select d.event_id, d.endpoint_id, d.status, d.attempts,"
            "       coalesce(array_agg(a.attempt order by a.attempt)"
            "                filter (where a.attempt is not null), '{}'),"
            "       coalesce(array_agg(a.status_code order by a.attempt)"
            "                filter (where a.attempt is not null), '{}')"
            " from outbox.deliveries d left join outbox.attempts a on a.delivery_id = d.id"
            " group by d.id"
        ).fetchall()

    rungs = len(LADDER)
    # Deliveries whose record breaks the ladder or disagrees with the receiver.
    wrong: list[str] = []
    final: dict[tuple[str, str], str] = {}  # (path, name) -> status
    per_pair: Counter[tuple[str, str]] = Counter()
    for event_id, endpoint_id, status, attempts, numbers, status_codes in deliveries:
        path, name = endpoint_paths[str(endpoint_id)], name_of[str(event_id)]
        key = (path, str(event_id))
        per_pair[(path, name)] += 1
        final[(path, name)] = status
        oks = [code for code in status_codes if code is not None and 200 <= code < 300]
        if list(numbers) != list(range(1, attempts + 1)):
            wrong.append(f"{key}: attempts {attempts} but attempt rows {numbers}")
        if doomed(name, path):
            if status != "failed" or attempts != rungs or oks or acked[key]:
                wrong.append(f"{key} doomed: {status} after {attempts}, codes {status_codes}")
        elif (
            status != "delivered"
            or not 1 <= attempts <= rungs
            or not status_codes
            or oks != [status_codes[-1]]
            or not acked[key]
        ):
            wrong.append(
                f"{key}: {status} after {attempts}, codes {status_codes}, acked {acked[key]}"
            )
    delivered_keys = {
        (endpoint_paths[str(ep)], str(ev)) for ev, ep, s, *_ in deliveries if s == "delivered"
    }
    # Acknowledged by the receiver yet not delivered on record.
    unrecorded = sorted(set(acked) - delivered_keys)
    # Lost: written, but with no delivery at all, or never acknowledged though not doomed.
    arrived = {(path, name_of.get(event_id)) for path, event_id in acked}
    pairs = [(path, name) for name in names for path in ENDPOINTS]
    lost = [
        (path, name)
        for path, name in pairs
        if (path, name) not in final or not (doomed(name, path) or (path, name) in arrived)
    ]
    dupes = sum(n - 1 for n in acked.values())
    statuses = Counter(final.values())
    expected_failed = sum(doomed(name, path) for path, name in pairs)
    elapsed = time.monotonic() - began
    summary = (
        f"chaos seed={SEED}: events={len(name_of)} deliveries={len(deliveries)}"
        f" delivered={statuses['delivered']} failed={statuses['failed']}"
        f" duplicates={dupes} lost={len(lost)} kills={kills} pg_restarts={restarts}"
        f" requests={sum(requests.values())} resent={resent}"
        f" answers={dict(sorted(modes.items()))}"
        f" wall={elapsed:.0f}s"
    )
    print(summary)
    for prop, value in (
        ("seed", SEED),
        ("events", len(name_of)),
        ("deliveries", len(deliveries)),
        ("delivered", statuses["delivered"]),
        ("failed", statuses["failed"]),
        ("duplicates", dupes),
        ("lost", len(lost)),
        ("kills", kills),
        ("pg_restarts", restarts),
        ("resent", resent),
    ):
        record_property(prop, value)

    assert codes == [0] * RELAYS, summary
    # Capture: every contact written once, with its one event.
    assert contacts == Counter(names), summary
    assert sorted(name_of.values()) == sorted(names), summary
    # Fan-out: one delivery per event and endpoint.
    assert len(deliveries) == len(pairs), summary
    assert set(per_pair.values()) == {1}, summary
    assert lost == [], f"{summary}; lost: {lost[:10]}"
    assert wrong == [], f"{summary}; {len(wrong)} wrong: {wrong[:10]}"
    assert unrecorded == [], f"{summary}; acknowledged but not delivered: {unrecorded[:10]}"
    want = {"delivered": len(pairs) - expected_failed, "failed": expected_failed}
    assert statuses == want, summary
    assert expected_failed > 0, "no pair was doomed: the failed path went untried"
    # A 2xx is answered twice only when its outcome went unrecorded: its relay was killed, or
    # the claim it held was lost in a restart. Each relay has at most CONCURRENCY in flight.
    assert dupes <= (kills + RELAYS * restarts) * CONCURRENCY, summary
