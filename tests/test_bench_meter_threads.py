"""The bench's callback figure with a collection in another thread (scripted clocks, nothing
timed).

The bench reads its pipe to the server's process in ``asyncio.to_thread``: a collection may run
in that worker while a callback runs on the loop (the collector's finalisers run Python code, and
the worker hands the GIL over to the loop's thread during them). ``GcMeter`` counts each
collection for the thread that ran it; ``CallbackMeter`` takes out only its own thread's.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
from test_bench_meter import _longest, bench  # noqa: F401 (the fixture)


class _ThreadClocks:
    """One wall clock; a CPU clock per thread ("loop", "worker"), the one running moved by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = {"loop": 10.0, "worker": 50.0}
        self.thread = "loop"

    def run(self, cpu_ms: float) -> None:
        self.wall += cpu_ms / 1e3
        self.cpu[self.thread] += cpu_ms / 1e3


def _meter(
    bench: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Any, _ThreadClocks]:
    clocks = _ThreadClocks()
    fake = types.SimpleNamespace(
        perf_counter=lambda: clocks.wall, thread_time=lambda: clocks.cpu[clocks.thread]
    )
    monkeypatch.setattr(bench, "time", fake)
    monkeypatch.setattr(bench, "_switches", lambda: (0, 0))  # neither blocked nor preempted
    # the thread running is the one the clocks say
    monkeypatch.setattr(bench, "threading", types.SimpleNamespace(get_ident=lambda: clocks.thread))
    monkeypatch.setattr(asyncio.events.Handle, "_run", asyncio.events.Handle._run)
    return bench.CallbackMeter(), clocks


def test_a_collection_of_another_thread_does_not_hide_the_callbacks_time(
    bench: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's collection starts; its finaliser lets the loop's thread run a callback of
    6 ms of CPU; the worker ends the collection (1 ms) before the callback returns. The loop's
    thread never collected: the callback's own time is its 6 ms."""
    meter, clocks = _meter(bench, monkeypatch)
    clocks.thread = "worker"
    bench.GC_METER._callback("start", {"generation": 0})
    clocks.thread = "loop"

    def plugin_work() -> None:
        clocks.run(6.0)
        clocks.thread = "worker"  # the worker takes the GIL back and ends its collection
        clocks.run(1.0)
        bench.GC_METER._callback("stop", {"generation": 0})
        clocks.thread = "loop"

    longest = _longest(meter, plugin_work)
    assert longest.own_ms >= 6.0
    assert longest.cpu_ms == pytest.approx(6.0, abs=0.01)
