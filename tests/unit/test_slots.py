"""The sender's slots: first come first served, and no slot lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

from outbox.sender import Slots


async def test_free_slots_are_taken_without_waiting_and_then_run_out() -> None:
    slots = Slots(2)

    assert slots.take_now()
    assert slots.take_now()
    assert not slots.take_now()
    assert not slots.idle()

    slots.give()
    slots.give()
    assert slots.idle()


async def test_waiters_get_freed_slots_in_the_order_they_came() -> None:
    slots = Slots(1)
    assert slots.take_now()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await slots.wait()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    # A newcomer does not jump the queue while others wait, even with a slot just freed.
    slots.give()
    assert not slots.take_now()
    for _ in range(3):
        await asyncio.sleep(0)
        slots.give()
    await asyncio.gather(*tasks)

    assert order == [0, 1, 2]
    assert slots.idle()


async def two_in_line() -> tuple[Slots, asyncio.Task[None], asyncio.Task[None]]:
    """A single slot, taken, and two tasks waiting for it in order."""
    slots = Slots(1)
    assert slots.take_now()
    first = asyncio.create_task(slots.wait())
    second = asyncio.create_task(slots.wait())
    await asyncio.sleep(0)
    return slots, first, second


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    slots, first, second = await two_in_line()

    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    slots.give()
    await second  # the slot went to the one still waiting

    slots.give()
    assert slots.idle()


async def test_a_slot_handed_to_a_waiter_cancelled_in_the_same_instant_is_passed_on() -> None:
    slots, first, second = await two_in_line()

    slots.give()  # first's future now holds the slot, but first has not run yet
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, timeout=5.0)

    assert first.cancelled()
    slots.give()
    assert slots.idle()
