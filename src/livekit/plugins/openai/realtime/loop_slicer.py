"""Let long loops on the event loop that carries the audio yield to it now and then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar

__all__ = ["LoopSlicer", "drain_sliced"]

T = TypeVar("T")

# a loop that runs longer than this without awaiting yields: a large context sync builds, sends
# and receives thousands of events, three such loops taking turns
MAX_SLICE = 0.00025


class LoopSlicer:
    """Yields to the event loop once the loop calling :meth:`tick` has run for ``MAX_SLICE``."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self._start > MAX_SLICE:
            await asyncio.sleep(0)
            self._start = time.perf_counter()


async def drain_sliced(steps: Generator[None, None, T]) -> T:
    """Run a generator that yields where it may pause (``chat_sync``'s ``*_steps``), slicing it."""
    slicer = LoopSlicer()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await slicer.tick()
