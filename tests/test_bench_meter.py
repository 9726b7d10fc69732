"""The bench's callback figure cannot hide a slow callback (scripted clocks, nothing timed).

``tools/bench.py``'s ``CallbackMeter`` judges a preempted callback on its CPU time, with the
garbage collector's pauses taken out; ``_summary`` gives the figure the target reads over the
``--repeats`` runs.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench.py"


@pytest.fixture
def bench() -> Any:
    """tools/bench.py, loaded on its own (it is no package)."""
    spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        if hasattr(module, "GC_METER"):
            gc.callbacks.remove(module.GC_METER._callback)


class _Clocks:
    """A wall clock, a thread CPU clock and the thread's context switches, moved by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 10.0
        self.voluntary = 0
        self.involuntary = 0

    def run(self, cpu_ms: float, preempted_ms: float = 0.0) -> None:
        self.wall += (cpu_ms + preempted_ms) / 1e3
        self.cpu += cpu_ms / 1e3
        if preempted_ms:
            self.involuntary += 1


def _meter(bench: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Clocks]:
    clocks = _Clocks()
    fake = types.SimpleNamespace(perf_counter=lambda: clocks.wall, thread_time=lambda: clocks.cpu)
    monkeypatch.setattr(bench, "time", fake)
    monkeypatch.setattr(bench, "_switches", lambda: (clocks.voluntary, clocks.involuntary))
    # the meter wraps ``Handle._run`` for good: the original is back after the test
    monkeypatch.setattr(asyncio.events.Handle, "_run", asyncio.events.Handle._run)
    return bench.CallbackMeter(), clocks


def _longest(meter: Any, callback: Any) -> Any:
    meter.start()
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    return meter.stop()


def test_a_preempted_gc_pause_does_not_hide_the_callbacks_cpu(
    bench: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 ms of the plugin's CPU (preempted for 4 ms), then a collection of 1 ms CPU that the
    OS preempted for 5 ms: the callback's own time is still its 6 ms of CPU."""
    meter, clocks = _meter(bench, monkeypatch)

    def plugin_work() -> None:
        clocks.run(6.0, 4.0)
        bench.GC_METER._callback("start", {"generation": 2})
        clocks.run(1.0, 5.0)
        bench.GC_METER._callback("stop", {"generation": 2})

    longest = _longest(meter, plugin_work)
    assert longest.own_ms == pytest.approx(6.0, abs=0.01)
    assert longest.own_ms >= bench.TARGET_CALLBACK_MS


def test_the_target_reads_the_worst_run(bench: Any) -> None:
    """One run of three with a 40 ms callback misses the target."""
    runs = [
        bench.PathResult(0.1, 1, bench.Longest(ms, ms, "x", ms, 0, 100), 0.0)
        for ms in (1.1, 1.3, 40.0)
    ]
    assert bench._summary(runs).own_ms >= bench.TARGET_CALLBACK_MS
