"""Realistic Stover writes at a steady rate: the demo's busy CRM account."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from outbox.db.connect import with_timeout
from outbox.sqlfiles import queries

Q = queries("activity")
FIRST = ("Ada", "Grace", "Alan", "Maya", "Linus", "Ines", "Omar", "Sofia", "Kenji", "Priya")
LAST = ("Lovelace", "Hopper", "Turing", "Okafor", "Nakamura", "Rossi", "Haddad", "Silva", "Berg")
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Wonka", "Stark")
SUFFIXES = ("Labs", "Group", "Systems", "Foods", "Logistics", "Health", "Media")
STAGES = ("lead", "qualified", "proposal", "negotiation")
NETWORKS = ("linkedin", "x", "instagram", "facebook")
SOURCES = (
    ("google", "cpc", "spring-sale"),
    ("newsletter", "email", "weekly-digest"),
    ("linkedin", "social", "webinar-q3"),
    ("partner", "referral", "reseller-program"),
)
Connection = psycopg.AsyncConnection[Any]


class Activity:
    """A small CRM whose users keep working; remembers what exists so it can be updated next."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()  # noqa: S311 - sample data, not security
        self.companies: list[int] = []
        self.contacts: list[int] = []
        self.deals: dict[int, str] = {}  # open deals and their stage
        self.posts: list[int] = []  # scheduled, not yet published or failed
        self.written: Counter[str] = Counter()  # rows written, by kind of write
        # Each kind of write and how often it happens; one that finds nothing to change yet
        # (no contacts to edit, no deals to advance) makes a new contact instead.
        self._writes: list[tuple[Callable[[Connection], Awaitable[bool]], float]] = [
            (self._new_company, 1.0),
            (self._rename_company, 0.4),
            (self._new_contact, 3.0),
            (self._edit_contact, 2.0),
            (self._delete_contact, 0.2),
            (self._new_deal, 1.5),
            (self._advance_deal, 3.0),
            (self._schedule_post, 1.0),
            (self._finish_post, 1.2),
            (self._track_visit, 2.0),
        ]

    @property
    def total(self) -> int:
        return sum(self.written.values())

    async def step(self, conn: Connection) -> None:
        """Make one write (one transaction), picked by weight."""
        actions, weights = zip(*self._writes, strict=True)
        action = self.rng.choices(actions, weights=weights)[0]
        if not await action(conn):
            await self._new_contact(conn)

    async def run(self, url: str, *, rate: float, stop: asyncio.Event) -> None:
        """Write `rate` times a second until `stop` is set; a slow database lowers the pace
        instead of causing a burst afterwards."""
        loop = asyncio.get_running_loop()
        async with await psycopg.AsyncConnection.connect(
            with_timeout(url), autocommit=True
        ) as conn:
            next_at = loop.time()
            while not stop.is_set():
                await self.step(conn)
                next_at = max(next_at + 1.0 / rate, loop.time() - 1.0)
                wait = next_at - loop.time()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=wait)

    # -- the writes ------------------------------------------------------------------------------

    async def _one_id(self, conn: Connection, name: str, params: dict[str, Any]) -> int:
        cur = await conn.execute(Q[name], params)
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"{name} returned no id")
        self.written[name] += 1
        return int(row[0])

    async def _write(self, conn: Connection, name: str, params: dict[str, Any]) -> bool:
        await conn.execute(Q[name], params)
        self.written[name] += 1
        return True

    async def _new_company(self, conn: Connection) -> bool:
        base = self.rng.choice(COMPANIES)
        name = f"{base} {self.rng.choice(SUFFIXES)}"
        domain = f"{base.lower()}{self.rng.randint(1, 999)}.example"
        self.companies.append(
            await self._one_id(conn, "company_insert", {"name": name, "domain": domain})
        )
        return True

    async def _rename_company(self, conn: Connection) -> bool:
        if not self.companies:
            return False
        name = f"{self.rng.choice(COMPANIES)} {self.rng.choice(SUFFIXES)}"
        return await self._write(
            conn, "company_rename", {"id": self.rng.choice(self.companies), "name": name}
        )

    async def _new_contact(self, conn: Connection) -> bool:
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        params = {
            "first_name": first,
            "last_name": last,
            "email": f"{first}.{last}{self.rng.randint(1, 9999)}@example.com".lower(),
            "phone": self._phone(),
            "company_id": self.rng.choice(self.companies) if self.companies else None,
            "custom_fields": Jsonb(
                {"lead_score": self.rng.randint(0, 100), "plan": self.rng.choice(["free", "pro"])}
            ),
        }
        self.contacts.append(await self._one_id(conn, "contact_insert", params))
        return True

    async def _edit_contact(self, conn: Connection) -> bool:
        if not self.contacts:
            return False
        params = {
            "id": self.rng.choice(self.contacts),
            "phone": self._phone(),
            "lead_score": self.rng.randint(0, 100),
        }
        return await self._write(conn, "contact_update", params)

    async def _delete_contact(self, conn: Connection) -> bool:
        if len(self.contacts) < 20:
            return False
        victim = self.contacts.pop(self.rng.randrange(len(self.contacts)))
        return await self._write(conn, "contact_delete", {"id": victim})

    async def _new_deal(self, conn: Connection) -> bool:
        if not self.contacts:
            return False
        contact = self.rng.choice(self.contacts)
        params = {
            "name": f"{self.rng.choice(COMPANIES)} renewal {self.rng.randint(2025, 2027)}",
            "amount": Decimal(self.rng.randint(50_000, 5_000_000)) / 100,
            "currency": self.rng.choice(["USD", "USD", "EUR", "GBP"]),
            "company_id": self.rng.choice(self.companies) if self.companies else None,
            "contact_id": contact,
        }
        self.deals[await self._one_id(conn, "deal_insert", params)] = "lead"
        return True

    async def _advance_deal(self, conn: Connection) -> bool:
        if not self.deals:
            return False
        deal = self.rng.choice(list(self.deals))
        stage = self._next_stage(self.deals[deal])
        if stage.startswith("closed_"):
            del self.deals[deal]
        else:
            self.deals[deal] = stage
        return await self._write(conn, "deal_stage_set", {"id": deal, "stage": stage})

    def _next_stage(self, stage: str) -> str:
        """Deals move forward one stage at a time; a few are lost on the way, most late ones won."""
        if self.rng.random() < 0.1:
            return "closed_lost"
        if stage == STAGES[-1]:
            return "closed_won" if self.rng.random() < 0.7 else "closed_lost"
        return STAGES[STAGES.index(stage) + 1]

    async def _schedule_post(self, conn: Connection) -> bool:
        params = {
            "network": self.rng.choice(NETWORKS),
            "content": f"New customer story: how {self.rng.choice(COMPANIES)} grew with Stover",
            "in_minutes": self.rng.randint(5, 240),
        }
        self.posts.append(await self._one_id(conn, "post_schedule", params))
        return True

    async def _finish_post(self, conn: Connection) -> bool:
        if not self.posts:
            return False
        post = self.posts.pop(0)
        if self.rng.random() < 0.85:
            return await self._write(conn, "post_publish", {"id": post})
        error = self.rng.choice(["token expired", "rate limited by network", "image too large"])
        return await self._write(conn, "post_fail", {"id": post, "error": error})

    async def _track_visit(self, conn: Connection) -> bool:
        if not self.contacts:
            return False
        source, medium, campaign = self.rng.choice(SOURCES)
        params = {
            "contact_id": self.rng.choice(self.contacts),
            "source": source,
            "medium": medium,
            "campaign": campaign,
            "url": f"https://stover.example/pricing?utm_source={source}&utm_campaign={campaign}",
        }
        return await self._write(conn, "attribution_insert", params)

    def _phone(self) -> str:
        return f"+1 555 {self.rng.randint(100, 999)} {self.rng.randint(1000, 9999)}"
