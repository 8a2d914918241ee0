"""Three relay processes share an ordered endpoint: the receiver never has two requests of one
record in flight at once, and gets each record's events in order."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import wait_until

from tests.relay import Receiver, receiving
from tests.relay.test_ordering import EVENTS_PER_DEAL, add_deals, move_all_to_the_end

from . import Conn, add_endpoint, relay_env, relay_process, scalar

pytestmark = pytest.mark.slow

DEALS = 30
RELAYS = 3


@dataclass
class Overlaps(Receiver):
    """Counts, per record, the requests in flight at once; answers after a few milliseconds, and
    fails one in ten (seeded) so retries are in the mix."""

    in_flight: Counter[str] = field(default_factory=Counter)
    most: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    pick: random.Random = field(default_factory=lambda: random.Random(3))
    guard: threading.Lock = field(default_factory=threading.Lock)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = json.loads(await request.read())["record"]
        key = record["key"]
        with self.guard:
            self.in_flight[key] += 1
            self.most[key] = max(self.most[key], self.in_flight[key])
            fail = self.pick.random() < 0.1
            pause = self.pick.uniform(0.002, 0.01)
        try:
            await super()._handle(request)
            await asyncio.sleep(pause)
            if fail:
                return web.Response(status=503, body=b"later")
            with self.guard:
                self.accepted[key].append(record["sequence"])
            return web.Response(status=200, body=b"ok")
        finally:
            with self.guard:
                self.in_flight[key] -= 1


def test_three_relays_never_send_two_requests_of_one_record_at_once(
    conn: Conn, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with receiving(kind=Overlaps) as receiver:
        assert isinstance(receiver, Overlaps)
        endpoint = add_endpoint(conn, receiver.url(), ("deal.*",))
        conn.execute("update outbox.endpoints set ordered = true where id = %s", [endpoint])
        deals = add_deals(conn, DEALS)
        env = relay_env(cli_env, RETRY_LADDER=",".join(["0"] + ["0.02"] * 19))
        with ExitStack() as stack:
            relays = [
                stack.enter_context(relay_process(env, log=tmp_path / f"relay{n}.log"))
                for n in range(RELAYS)
            ]
            move_all_to_the_end(db_url, deals, writers=3)
            total = DEALS * EVENTS_PER_DEAL

            def done() -> bool:
                delivered: Any = scalar(
                    conn, "select count(*) from outbox.deliveries where status = 'delivered'"
                )
                return int(delivered) == total

            wait_until(done, timeout=90, what="all delivered")
            for relay in relays:
                relay.terminate()
            assert [relay.wait(20) for relay in relays] == [0] * RELAYS
    assert set(receiver.most) == {f"deals:{d}" for d in deals}
    assert max(receiver.most.values()) == 1
    for key, sequences in receiver.accepted.items():
        assert sequences == list(range(1, EVENTS_PER_DEAL + 1)), key
