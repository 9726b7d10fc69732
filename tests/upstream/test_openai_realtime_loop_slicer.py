"""Unit tests of livekit.plugins.openai.realtime.loop_slicer."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Generator

from livekit.plugins.openai.realtime.loop_slicer import LoopSlicer, drain_sliced


def _steps(n: int) -> Generator[None, None, int]:
    for _ in range(n):
        yield
    return n


async def test_drain_sliced_returns_the_generator_result() -> None:
    assert await drain_sliced(_steps(1000)) == 1000


async def test_a_zero_budget_lets_other_tasks_run_between_ticks() -> None:
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    task = asyncio.ensure_future(other())
    slicer = LoopSlicer(budget=0.0)
    await slicer.tick()
    assert ran == [1]
    await task


async def test_an_infinite_budget_never_yields() -> None:
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    task = asyncio.ensure_future(other())
    slicer = LoopSlicer(budget=math.inf)
    for _ in range(100):
        await slicer.tick()
    assert ran == []
    await task
