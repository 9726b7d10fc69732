"""Unit tests of livekit.plugins.openai.realtime.loop_slicer (the time budget of a slice).

The slicer's clock is a fake one the tests move by hand, and its yields are counted: no test
depends on how fast the machine runs."""

from __future__ import annotations

import math
from collections.abc import Generator
from types import SimpleNamespace

import pytest

from livekit.plugins.openai.realtime import loop_slicer
from livekit.plugins.openai.realtime.loop_slicer import MAX_SLICE, LoopSlicer, drain_sliced


class _Loop:
    """A fake clock for the slicer and a count of its yields to the event loop."""

    def __init__(self) -> None:
        self.now = 0.0
        self.yields: list[float] = []

    async def sleep(self, delay: float) -> None:
        assert delay == 0
        self.yields.append(self.now)


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> _Loop:
    fake = _Loop()
    monkeypatch.setattr(loop_slicer, "time", SimpleNamespace(perf_counter=lambda: fake.now))
    monkeypatch.setattr(loop_slicer, "asyncio", SimpleNamespace(sleep=fake.sleep))
    return fake


async def _run_units(loop: _Loop, slicer: LoopSlicer, unit: float, count: int) -> None:
    for _ in range(count):
        loop.now += unit
        await slicer.tick()


def _steps(n: int) -> Generator[None, None, int]:
    for _ in range(n):
        yield
    return n


def test_the_default_budget_is_max_slice() -> None:
    assert LoopSlicer().budget == MAX_SLICE


async def test_a_slice_ends_before_the_next_unit_would_overrun_the_budget(loop: _Loop) -> None:
    slicer = LoopSlicer(budget=1.0)
    await _run_units(loop, slicer, 0.125, 24)
    # eight units of 1/8 fill a slice exactly: the ninth would not fit
    assert loop.yields == [1.0, 2.0, 3.0]


async def test_a_slice_of_long_units_yields_sooner(loop: _Loop) -> None:
    slicer = LoopSlicer(budget=1.0)
    await _run_units(loop, slicer, 0.375, 4)
    # after two units of 0.375 a third would end past the budget
    assert loop.yields == [0.75, 1.5]


async def test_a_wait_between_ticks_counts_as_half_the_budget_at_most(loop: _Loop) -> None:
    slicer = LoopSlicer(budget=1.0)
    loop.now = 10.0  # e.g. a wait for the next event
    await slicer.tick()
    assert loop.yields == [10.0]
    # the outlier is forgotten slowly, not taken for the size of every unit
    await _run_units(loop, slicer, 0.125, 4)
    assert loop.yields == [10.0]


async def test_a_zero_budget_yields_at_every_tick(loop: _Loop) -> None:
    slicer = LoopSlicer(budget=0.0)
    await _run_units(loop, slicer, 1e-9, 3)
    assert len(loop.yields) == 3


async def test_an_infinite_budget_never_yields(loop: _Loop) -> None:
    slicer = LoopSlicer(budget=math.inf)
    await _run_units(loop, slicer, 1e6, 100)
    assert loop.yields == []


async def test_drain_sliced_returns_the_generator_result_and_ticks_once_per_step() -> None:
    ticks: list[None] = []

    class Counting(LoopSlicer):
        async def tick(self) -> None:
            ticks.append(None)

    assert await drain_sliced(_steps(5), Counting()) == 5
    assert len(ticks) == 5
    assert await drain_sliced(_steps(1000)) == 1000  # a slicer of its own by default


async def test_drain_sliced_yields_to_the_loop_by_the_slicer_budget(loop: _Loop) -> None:
    def timed_steps() -> Generator[None, None, str]:
        for _ in range(16):
            loop.now += 0.125
            yield
        return "done"

    assert await drain_sliced(timed_steps(), LoopSlicer(budget=1.0)) == "done"
    assert loop.yields == [1.0, 2.0]
