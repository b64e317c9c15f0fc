"""Work taken in turns per tenant: the queue in front of the worker's process pools."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from worker.turns import FairSlots, Turns


@dataclass
class Waiting:
    share: str
    name: str


def test_a_shares_second_item_goes_after_every_other_shares_first() -> None:
    turns: Turns[Waiting] = Turns()
    for name in ("a1", "a2", "a3"):
        turns.append(Waiting("alpha", name))
    turns.append(Waiting("beta", "b1"))
    assert turns.pop().name == "a1"
    turns.append(Waiting("gamma", "g1"))  # queued after alpha's three, served before its second
    assert turns.peek().name == "b1" and turns.pop().name == "b1"
    turns.put_back(Waiting("beta", "b0"))  # taken but not served: first in line again
    assert sorted(item.name for item in turns) == ["a2", "a3", "b0", "g1"]
    assert [turns.pop().name for _ in range(4)] == ["b0", "g1", "a2", "a3"]
    assert not turns


def test_a_share_served_without_waiting_waits_its_turn_next() -> None:
    turns: Turns[Waiting] = Turns()
    turns.charge("alpha")  # served at once: nothing was waiting
    turns.append(Waiting("alpha", "a2"))
    turns.append(Waiting("beta", "b1"))
    assert [turns.pop().name, turns.pop().name] == ["b1", "a2"]


async def test_slots_go_in_turns_per_share_and_never_exceed_the_size() -> None:
    slots = FairSlots(2)
    order: list[str] = []
    holding = 0
    most = 0
    gate = asyncio.Event()

    async def hold(name: str, share: str) -> None:
        nonlocal holding, most
        async with slots.slot(share):
            holding += 1
            most = max(most, holding)
            order.append(name)
            await gate.wait()
            await asyncio.sleep(0)
            holding -= 1

    first = [asyncio.create_task(hold(f"a{n}", "alpha")) for n in (1, 2)]  # both slots taken
    await asyncio.sleep(0)
    rest = [asyncio.create_task(hold(f"a{n}", "alpha")) for n in (3, 4, 5)]
    rest.append(asyncio.create_task(hold("b1", "beta")))
    await asyncio.sleep(0)
    assert order == ["a1", "a2"]
    gate.set()
    await asyncio.gather(*first, *rest)
    # First come, first served would start b1 last; alpha held both slots, so b1 goes first.
    assert order == ["a1", "a2", "b1", "a3", "a4", "a5"]
    assert most == 2


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_the_slot_on() -> None:
    slots = FairSlots(1)
    release = asyncio.Event()
    served: list[str] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def hold(name: str) -> None:
        async with slots.slot("alpha"):
            served.append(name)
            await release.wait()
        if name == "first":
            # The slot has just been handed to "doomed", which has not run yet: cancel it now.
            tasks["doomed"].cancel()

    tasks["first"] = asyncio.create_task(hold("first"))
    await asyncio.sleep(0)
    tasks["doomed"] = asyncio.create_task(hold("doomed"))
    tasks["later"] = asyncio.create_task(hold("later"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 5)
    assert served == ["first", "later"]
    assert tasks["doomed"].cancelled()
    async with asyncio.timeout(5):
        async with slots.slot("beta"):  # and the slot is free again afterwards
            pass


async def test_closing_fails_the_waiters() -> None:
    slots = FairSlots(1)
    entered: list[str] = []

    async def wait_for_a_slot() -> None:
        async with slots.slot("beta"):
            entered.append("beta")

    async with slots.slot("alpha"):
        waiting = asyncio.create_task(wait_for_a_slot())
        await asyncio.sleep(0)
        slots.fail_waiting(RuntimeError("closed"))
        with pytest.raises(RuntimeError, match="closed"):
            await waiting
    assert entered == []
