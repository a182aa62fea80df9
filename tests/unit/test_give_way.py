"""Pings give way to requests (streams.agents.pings.give_way): while requests are about, a block of
pings is followed by as many turns of the event loop as other work needs, not one."""

from __future__ import annotations

import asyncio

from streams.agents import pings
from streams.runtime import RequestActivity


async def test_other_work_ready_to_run_finishes_before_the_pings_go_on():
    steps: list[int] = []

    async def answer(turns: int) -> None:  # a request's path: one turn of the loop per await
        for n in range(turns):
            steps.append(n)
            await asyncio.sleep(0)

    task = asyncio.ensure_future(answer(20))
    await pings.give_way()
    assert len(steps) == 20
    await task


async def test_giving_way_ends_after_its_bound_when_other_work_never_ends():
    stop = asyncio.Event()

    async def busy() -> None:
        while not stop.is_set():
            await asyncio.sleep(0)

    task = asyncio.ensure_future(busy())
    await asyncio.wait_for(pings.give_way(), timeout=5)  # returns though `busy` is always ready
    stop.set()
    await task


def test_requests_count_as_about_for_their_window_after_one_was_read(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("streams.runtime.time.monotonic", lambda: clock[0])
    activity = RequestActivity(window_s=0.5)
    assert not activity.recent()
    activity.read()
    clock[0] += 0.4
    assert activity.recent()
    clock[0] += 0.2
    assert not activity.recent()
