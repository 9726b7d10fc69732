"""Let long loops on the event loop that carries the audio yield to it now and then.

The sans-IO core (``chat_sync``, ``conversation``) cuts its work into small units: generators
that yield where they may pause. This layer owns the time budget: it runs units until a slice
has used :data:`MAX_SLICE`, then yields to the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar

__all__ = ["MAX_SLICE", "LoopSlicer", "drain_sliced"]

T = TypeVar("T")

# a slice of work on the event loop yields once it has run this long: audio frames (10-20 ms)
# share the loop, and a sync, the send loop and the receive loop may take turns
MAX_SLICE = 0.001


class LoopSlicer:
    """Yields to the event loop before the loop calling :meth:`tick` would run past ``budget``
    seconds since it last yielded (or since the slicer was made).

    A slice ends when the next unit of work (the time between two ticks: one event read, one
    event sent, one step of a plan), judged by the longest lately, would not fit in what is left
    of the budget; so a slice stays within the budget instead of overrunning it by a unit.

    Args:
        budget: The slice, in seconds (default :data:`MAX_SLICE`); ``math.inf`` never yields.
    """

    def __init__(self, budget: float | None = None) -> None:
        self.budget = MAX_SLICE if budget is None else budget
        self._start = self._last = time.perf_counter()
        # the longest unit lately; capped, as the time between two ticks may include a wait
        self._unit = 0.0

    async def tick(self) -> None:
        now = time.perf_counter()
        self._unit = max(self._unit, min(now - self._last, self.budget / 2))
        if now - self._start + self._unit > self.budget:
            await asyncio.sleep(0)
            now = self._start = time.perf_counter()
            self._unit /= 2  # forget an outlier slowly
        self._last = now


async def drain_sliced(steps: Generator[None, None, T], slicer: LoopSlicer | None = None) -> T:
    """Run a generator that yields where it may pause (``chat_sync``'s ``*_steps``) to its end,
    slicing it by ``slicer``'s budget (a new one by default); returns its result."""
    slicer = slicer if slicer is not None else LoopSlicer()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await slicer.tick()
