"""Benchmark of the fork's chat context sync, printed as Markdown tables.

Run with the fork installed (``nox -s bench``, or ``python tools/bench.py`` in a venv holding the
fork)::

    python tools/bench.py [--strict] [--e2e-sizes 2000,10000] [--repeats 3] [--no-diff]

Sections:

a. ``compute_chat_ctx_diff``: the planner's (``chat_sync``, longest increasing subsequence, the
   same operations) against upstream's
   (``livekit.agents.llm.utils``, an O(n * m) table) on a history of alternating user/assistant
   messages with one system message appended, the agent-switch case of the issue.
b. Peak memory (tracemalloc) of both diffs.
c. End to end, once per protocol: a real session built by ``RealtimeModel.with_azure(...)``
   (``RealtimeSessionBeta`` with ``api_version`` on the preview protocol, the GA
   ``RealtimeSession`` without) against the fake Azure server of ``tests/fake_azure`` speaking
   that protocol, in a child process. For 2 000 and 10 000 items (``--e2e-sizes``), each path
   is timed callback by callback (a wrapper of ``asyncio.Handle._run``, named by the task that
   ran it; garbage-collector pauses are reported on their own, not charged to the callback;
   the target is judged on each callback's own time: its wall time, or its CPU time where the
   OS preempted the thread during it, with the longest by wall printed beside it):
   the first sync of a fresh session, the incremental sync of one more message, the replay
   after the server drops the connection, and the reading of a burst of 1 000 server events
   (user voice turns). Then the memory the plugin keeps per item (tracemalloc, 10 000 items).
   Wall times are medians of ``--repeats`` runs; the longest callback is the worst run's.
d. Rejection latency: ``update_chat_ctx`` with one item the server rejects, until the exception
   reaches the caller.
e. Targets, each PASS or FAIL from the values measured above. The exit status is 0 even when a
   target fails, unless ``--strict`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import importlib
import importlib.metadata
import logging
import math
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from livekit.agents import llm
from livekit.agents.llm.utils import (
    DiffOps,
    compute_chat_ctx_diff as upstream_diff,
)
from livekit.plugins.openai.realtime import chat_sync

try:
    import resource
except ImportError:  # not on Windows: no per-thread context switch counts
    resource = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"  # holds the fake server package, `fake_azure`

DIFF_SIZES = (100, 1_000, 2_000, 10_000)
UPSTREAM_MAX = 2_000  # above this upstream's O(n * m) table takes too long to run
E2E_SIZES = (2_000, 10_000)
MEMORY_N = 10_000
REJECT_REPEATS = 5

TARGET_SPEEDUP = 100.0
TARGET_CALLBACK_MS = 2.0
TARGET_INCREMENTAL_N = 10_000
TARGET_INCREMENTAL_MS = 10.0
TARGET_REPLAY_N = 2_000
TARGET_REPLAY_S = 0.7
TARGET_BYTES_PER_ITEM = 2048
TARGET_REJECT_MS = 50.0
UPSTREAM_REJECT_NOTE = "5 s (1.4.6 waits for `conversation.item.created` until a timeout)"

DiffFn = Callable[[llm.ChatContext, llm.ChatContext], DiffOps]


# --------------------------------------------------------------------------- helpers


def history(n: int, *, prefix: str = "h") -> list[llm.ChatItem]:
    """``n`` alternating user/assistant text messages with short, unique ids."""
    return [
        llm.ChatMessage(
            id=f"{prefix}{i}",
            role="user" if i % 2 == 0 else "assistant",
            content=[f"message number {i} of the conversation"],
        )
        for i in range(n)
    ]


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_ms(ms: float) -> str:
    return f"{ms:.2f} ms"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def timed_diffs(
    fn: DiffFn, old: llm.ChatContext, new: llm.ChatContext, repeats: int
) -> tuple[float, DiffOps]:
    """Median wall time of ``repeats`` calls, and the result of the last one."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        ops = fn(old, new)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), ops


def fork_diff(old: llm.ChatContext, new: llm.ChatContext) -> DiffOps:
    result: DiffOps = chat_sync.compute_chat_ctx_diff(old, new)
    return result


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------- a/b. diff


@dataclass
class DiffRow:
    n: int
    fork_s: float
    upstream_s: float | None
    fork_lcs: int
    upstream_lcs: int | None


def diff_pair(n: int, shape: str) -> tuple[llm.ChatContext, llm.ChatContext]:
    """A history of ``n`` items and the same with one system message appended or prepended.

    Appended is the agent-switch case; prepended leaves no common prefix, so the fork's diff
    does its whole O(n log n) work instead of stopping at the common prefix.
    """
    items = history(n)
    sys_msg = llm.ChatMessage(id="sys", role="system", content=["TEST"])
    new_items = [*items, sys_msg] if shape == "append" else [sys_msg, *items]
    return llm.ChatContext(items=list(items)), llm.ChatContext(items=new_items)


def bench_diff(repeats: int, shape: str = "append") -> list[DiffRow]:
    rows: list[DiffRow] = []
    for n in DIFF_SIZES:
        old, new = diff_pair(n, shape)
        fork_s, fork_ops = timed_diffs(fork_diff, old, new, max(repeats, 5))
        up_s: float | None = None
        up_lcs: int | None = None
        if n <= UPSTREAM_MAX:
            up_s, up_ops = timed_diffs(upstream_diff, old, new, repeats)
            up_lcs = n - len(up_ops.to_remove)
        rows.append(DiffRow(n, fork_s, up_s, n - len(fork_ops.to_remove), up_lcs))
    return rows


def growth_exponent(rows: list[DiffRow]) -> float:
    """Exponent k of t ~ n**k fitted on the two largest sizes upstream ran at."""
    ran = [r for r in rows if r.upstream_s is not None]
    if len(ran) < 2:
        return 2.0
    a, b = ran[-2], ran[-1]
    assert a.upstream_s is not None and b.upstream_s is not None
    return math.log(b.upstream_s / a.upstream_s) / math.log(b.n / a.n)


def diff_table(rows: list[DiffRow]) -> str:
    k = growth_exponent(rows)
    last = next(r for r in reversed(rows) if r.upstream_s is not None)
    assert last.upstream_s is not None
    out = []
    for r in rows:
        if r.upstream_s is not None:
            up = fmt_s(r.upstream_s)
            ratio = f"{r.upstream_s / r.fork_s:,.0f}×"
            same = "yes" if r.upstream_lcs == r.fork_lcs else f"NO ({r.upstream_lcs})"
        else:
            est = last.upstream_s * (r.n / last.n) ** k
            up = f"skipped (O(n²) table: est. {est:.0f} s)"
            ratio = f"~{est / r.fork_s:,.0f}× (est.)"
            same = "n/a"
        out.append([f"{r.n:,}", fmt_s(r.fork_s), up, ratio, f"{r.fork_lcs:,}", same])
    return table(
        ["N (history)", "fork", "upstream 1.4.6", "speed-up", "kept (LCS)", "same LCS length"],
        out,
    ) + (f"\n\nMedian of repeats; upstream growth fitted as t ∝ n^{k:.2f} for the estimates.")


@dataclass
class MemRow:
    label: str
    n: int
    peak_bytes: int


def peak_memory(fn: DiffFn, n: int, label: str, shape: str = "append") -> MemRow:
    old, new = diff_pair(n, shape)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn(old, new)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return MemRow(label, n, peak)


def mem_table(rows: list[MemRow]) -> str:
    return table(
        ["diff", "N", "peak (tracemalloc)"],
        [[r.label, f"{r.n:,}", f"{r.peak_bytes / 2**20:.2f} MiB"] for r in rows],
    )


# --------------------------------------------------------------------------- fake server


def _server_main(conn: Connection, protocol: str) -> None:
    """Child process: run a fake Azure server and answer commands sent over ``conn``."""

    # imported by name: the fake server is test code, not an installed package
    sys.path.insert(0, str(TESTS))
    fake_azure = importlib.import_module("fake_azure")

    async def _serve() -> None:
        server = fake_azure.FakeAzureRealtimeServer(protocol=protocol)
        await server.start()
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        conn.send((server.endpoint, server.api_key, server.deployment))

        async def _handle(cmd: tuple[Any, ...]) -> Any:
            name = cmd[0]
            if name == "stats":
                return {
                    "received": dict(collections.Counter(server.received_types())),
                    "errors": [(e.code, e.message) for e in server.errors],
                    "conversation": server.conversation_ids(),
                    "live": server.live_connections,
                }
            if name == "wait_received":
                await server.wait_received(cmd[1], cmd[2], timeout=cmd[3])
                return None
            if name == "reject_item":
                item_id, code, message = cmd[1], cmd[2], cmd[3]
                server.reject_next(
                    lambda ev: (
                        ev.get("type") == "conversation.item.create"
                        and ev.get("item", {}).get("id") == item_id
                    ),
                    code,
                    message,
                    "item",
                )
                return None
            if name == "drop":
                return await server.drop_connections()
            if name == "burst":
                # user voice turns, transcribed, without a response, until ``cmd[1]`` events
                sent = len(server.sent)
                while len(server.sent) - sent < cmd[1]:
                    await server.user_audio_turn("a voice turn of the burst", respond=False)
                return len(server.sent) - sent
            if name == "stop":
                stop.set_result(None)
                return None
            raise ValueError(f"unknown command {name!r}")

        async def _dispatch() -> None:
            while True:
                cmd = await commands.get()
                try:
                    conn.send(("ok", await _handle(cmd)))
                except Exception as e:
                    conn.send(("error", repr(e)))

        task = asyncio.create_task(_dispatch())
        await stop
        task.cancel()
        loop.remove_reader(conn.fileno())
        await server.aclose()

    asyncio.run(_serve())


class ServerProcess:
    """The fake Azure server in a child process, driven through a pipe."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_server_main, args=(child, protocol), daemon=True)
        self._proc.start()
        child.close()
        self.endpoint, self.api_key, self.deployment = self._conn.recv()

    def _call_sync(self, *cmd: Any) -> Any:
        self._conn.send(cmd)
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"fake server command {cmd[0]} failed: {value}")
        return value

    async def call(self, *cmd: Any) -> Any:
        # off the event loop: a blocking recv() here would itself stall the loop
        return await asyncio.to_thread(self._call_sync, *cmd)

    def close(self) -> None:
        try:
            self._call_sync("stop")
        finally:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()


# --------------------------------------------------------------------------- c/d. end to end


class GcMeter:
    """The pauses of the cyclic garbage collector while active: process-wide, so reported on
    their own and not charged to the callback they fell in (``CallbackMeter``), each counted
    for the thread that collected (another thread's collection is no loop callback's)."""

    def __init__(self) -> None:
        # thread -> [wall s, its CPU s] of collection since the meter was created
        self._spent: dict[int, list[float]] = {}
        self._started: dict[int, tuple[float, float]] = {}
        self.longest = (0.0, -1)  # (seconds, generation) while active
        self._active = False
        gc.callbacks.append(self._callback)

    def spent(self, thread: int) -> tuple[float, float]:
        """Seconds of collection by ``thread`` so far: wall time, and its CPU time."""
        wall, cpu = self._spent.get(thread, (0.0, 0.0))
        return wall, cpu

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        thread = threading.get_ident()
        if phase == "start":
            self._started[thread] = (time.perf_counter(), time.thread_time())
            return
        if (started := self._started.pop(thread, None)) is None:
            return
        pause = time.perf_counter() - started[0]
        spent = self._spent.setdefault(thread, [0.0, 0.0])
        spent[0] += pause
        spent[1] += time.thread_time() - started[1]
        if self._active and pause > self.longest[0]:
            self.longest = (pause, int(info["generation"]))

    def start(self) -> None:
        self.longest = (0.0, -1)
        self._active = True

    def stop(self) -> tuple[float, int]:
        """Stop; return the longest pause in milliseconds and its generation (-1: none)."""
        self._active = False
        return self.longest[0] * 1e3, self.longest[1]


GC_METER = GcMeter()

# callbacks of the bench itself: its pipe to the server's process (asyncio.to_thread)
_BENCH_OWN = ("_chain_future", "_call_set_state", "_call_check_cancel", "bench:")


def _switches() -> tuple[int, int]:
    """This thread's (voluntary, involuntary) context switches so far; (0, 0) where the OS
    does not count them per thread (only Linux does)."""
    if _RUSAGE_THREAD is None:
        return 0, 0
    usage = resource.getrusage(_RUSAGE_THREAD)
    return usage.ru_nvcsw, usage.ru_nivcsw


_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None) if resource else None


class CallbackMeter:
    """Times every callback the event loop runs (a wrapper of ``asyncio.Handle._run``) while
    active, by the task that ran it (its name, or its coroutine's qualified name) or, for a
    plain callback, the callback's name. GC pauses inside a callback are subtracted.

    A callback's own time is its wall time, unless the OS preempted the thread during it (an
    involuntary context switch and no voluntary one: another process ran on the core; the
    thread neither blocked nor waited for the GIL), then its CPU time: the wall time of a
    preempted callback measures the machine's other work, not the plugin's."""

    def __init__(self) -> None:
        self.active = False
        # label -> longest (wall s, CPU s, own s)
        self.longest: dict[str, tuple[float, float, float]] = {}
        self.callbacks = 0
        self.preempted = 0
        original = asyncio.events.Handle._run
        meter = self

        def _run(handle: asyncio.Handle) -> None:
            if not meter.active:
                original(handle)
                return
            label = _label(handle)  # before the run: a callback may cancel its own handle
            thread = threading.get_ident()
            gc_wall, gc_cpu = GC_METER.spent(thread)
            voluntary, involuntary = _switches()
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                original(handle)
            finally:
                # this thread's pauses are taken out, each in its own clock: a preempted one
                # takes no CPU out
                gc_wall_after, gc_cpu_after = GC_METER.spent(thread)
                wall = time.perf_counter() - t0 - (gc_wall_after - gc_wall)
                cpu = time.thread_time() - c0 - (gc_cpu_after - gc_cpu)
                voluntary_after, involuntary_after = _switches()
                preempted = involuntary_after > involuntary and voluntary_after == voluntary
                own = cpu if preempted else wall
                old = meter.longest.get(label, (0.0, 0.0, 0.0))
                meter.longest[label] = (max(old[0], wall), max(old[1], cpu), max(old[2], own))
                if not label.startswith(_BENCH_OWN):
                    meter.callbacks += 1
                    meter.preempted += preempted

        asyncio.events.Handle._run = _run  # type: ignore[method-assign,assignment]

    def start(self) -> None:
        self.longest = {}
        self.callbacks = self.preempted = 0
        self.active = True

    def stop(self) -> Longest:
        """Stop; the plugin's longest callback (own time, wall and CPU, ms) and its label."""
        self.active = False
        plugin = {k: v for k, v in self.longest.items() if not k.startswith(_BENCH_OWN)}
        if not plugin:
            return Longest(0.0, 0.0, "-", 0.0, 0, 0)
        by_own = max(plugin, key=lambda k: plugin[k][2])
        return Longest(
            wall_ms=max(v[0] for v in plugin.values()) * 1e3,
            cpu_ms=max(v[1] for v in plugin.values()) * 1e3,
            label=by_own,
            own_ms=plugin[by_own][2] * 1e3,
            preempted=self.preempted,
            callbacks=self.callbacks,
        )


def _label(handle: asyncio.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        name = task.get_name()
        if not name.startswith("Task-"):
            return name
        coro = task.get_coro()
        # an awaitable that is not a coroutine (aiohttp's ws_connect) by its type, not its repr
        return getattr(coro, "__qualname__", None) or _short(type(coro).__qualname__)
    for name in ("__qualname__", "__name__"):
        if isinstance(value := getattr(callback, name, None), str):
            return _short(value)
    return type(callback).__name__


def _short(qualname: str) -> str:
    return qualname.replace(".<locals>", "")


@dataclass
class Longest:
    """The longest plugin callbacks of one measured run (ms): by wall time (preemption
    included), by CPU time, and by own time (see ``CallbackMeter``), with the label of the
    last; and how many of its callbacks the OS preempted."""

    wall_ms: float
    cpu_ms: float
    label: str
    own_ms: float
    preempted: int
    callbacks: int


METER: CallbackMeter | None = None


def meter() -> CallbackMeter:
    global METER
    if METER is None:
        METER = CallbackMeter()
    return METER


@dataclass
class PathResult:
    seconds: float
    events: int
    longest: Longest
    gc_ms: float
    ok: bool = True


@dataclass
class E2ERow:
    n: int
    paths: dict[str, list[PathResult]] = field(default_factory=dict)
    errors: list[tuple[str | None, str]] = field(default_factory=list)


PATHS = ("first sync", "+1 message", "replay after a drop", "burst of 1 000 server events")
BURST = 1_000


def item_events(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("conversation.item."))


class Client:
    """A fresh session on the fake server (of its protocol), counting the events it sends and
    receives."""

    def __init__(self, server: ServerProcess) -> None:
        from livekit.plugins import openai

        # with api_version: the preview protocol; without: GA
        self.model = openai.realtime.RealtimeModel.with_azure(
            azure_deployment=server.deployment,
            azure_endpoint=server.endpoint,
            api_key=server.api_key,
            api_version="2024-10-01-preview" if server.protocol == "preview" else None,
        )
        self.session = self.model.session()
        self.sent: list[str] = []
        self.received = 0
        self.wanted: float = 0
        self.all_received = asyncio.Event()
        # counted by a wrapper of the session's emit, not by listeners: livekit's EventEmitter
        # inspects each listener's signature on every event (~15 us), which would be charged to
        # the plugin's callbacks (an agent does not listen to these raw events)
        emit = self.session.emit

        def _emit(event: Any, *args: Any) -> None:
            if event == "openai_client_event_queued":
                self._on_event(args[0])
            elif event == "openai_server_event_received":
                self._on_server_event(args[0])
            emit(event, *args)

        self.session.emit = _emit  # type: ignore[method-assign]

    def _on_event(self, event: dict[str, Any]) -> None:
        self.sent.append(event.get("type", ""))

    def _on_server_event(self, event: dict[str, Any]) -> None:
        self.received += 1
        if self.received >= self.wanted:
            self.all_received.set()

    def item_events_sent(self) -> int:
        return sum(1 for t in self.sent if t.startswith("conversation.item."))

    @property
    def sync_io(self) -> Any:
        return self.session._chat_sync

    async def aclose(self) -> None:
        await self.session.aclose()
        await self.model.aclose()


async def measured(run: Callable[[], Any]) -> tuple[float, Longest, float]:
    """Wall time, longest plugin callback and longest GC pause of ``await run()``."""
    gc.collect()
    await asyncio.sleep(0.01)
    m = meter()
    m.start()
    GC_METER.start()
    t0 = time.perf_counter()
    await run()
    seconds = time.perf_counter() - t0
    longest = m.stop()
    gc_ms, _ = GC_METER.stop()
    return seconds, longest, gc_ms


async def timed_sync(client: Client, ctx: llm.ChatContext) -> PathResult:
    before = client.item_events_sent()
    seconds, longest, gc_ms = await measured(lambda: client.session.update_chat_ctx(ctx))
    return PathResult(seconds, client.item_events_sent() - before, longest, gc_ms)


async def timed_replay(client: Client, server: ServerProcess, ids: list[str]) -> PathResult:
    """Drop the connection; until the session has reconnected and the replay is answered."""
    sync_io = client.sync_io
    connection = sync_io.state.connection
    before = client.item_events_sent()

    async def _run() -> None:
        await server.call("drop")
        while not (
            sync_io.state.connection > connection
            and sync_io.ready.is_set()
            and sync_io.state.replay is None
        ):
            await asyncio.sleep(0.002)

    # the drop is logged as an error by the session: expected here
    plugin_logger = logging.getLogger("livekit")
    level = plugin_logger.level
    plugin_logger.setLevel(logging.CRITICAL)
    try:
        seconds, longest, gc_ms = await measured(_run)
    finally:
        plugin_logger.setLevel(level)
    conversation = (await server.call("stats"))["conversation"]
    return PathResult(
        seconds, client.item_events_sent() - before, longest, gc_ms, ok=conversation == ids
    )


async def timed_burst(client: Client, server: ServerProcess) -> PathResult:
    """The server sends at least ``BURST`` events at once (user voice turns, transcribed);
    until the session has read them all."""

    before = client.received

    async def _run() -> None:
        client.wanted = math.inf  # until the server says how many it sent
        client.all_received.clear()
        sent = await server.call("burst", BURST)
        client.wanted = before + sent
        if client.received < client.wanted:
            await asyncio.wait_for(client.all_received.wait(), 30)

    seconds, longest, gc_ms = await measured(_run)
    return PathResult(seconds, int(client.wanted - before), longest, gc_ms)


async def connect(server: ServerProcess) -> Client:
    stats = await server.call("stats")
    updates = stats["received"].get("session.update", 0)
    client = Client(server)
    await server.call("wait_received", "session.update", updates + 1, 10.0)
    return client


async def bench_e2e(server: ServerProcess, sizes: Sequence[int], repeats: int) -> list[E2ERow]:
    rows: list[E2ERow] = []
    for n in sizes:
        row = E2ERow(n, {path: [] for path in PATHS})
        for run in range(repeats):
            errors_before = len((await server.call("stats"))["errors"])
            client = await connect(server)
            try:
                items = history(n, prefix=f"n{n}r{run}_")
                ctx = llm.ChatContext(items=list(items))
                row.paths["first sync"].append(await timed_sync(client, ctx))
                # the agent switch: one system message added to the same context
                ctx = ctx.copy()
                ctx.add_message(role="system", content="TEST")
                incremental = await timed_sync(client, ctx)
                stats = await server.call("stats")
                incremental.ok = stats["conversation"] == [item.id for item in ctx.items]
                row.paths["+1 message"].append(incremental)
                ids = [item.id for item in ctx.items]
                row.paths["replay after a drop"].append(await timed_replay(client, server, ids))
                row.paths["burst of 1 000 server events"].append(await timed_burst(client, server))
                row.errors += (await server.call("stats"))["errors"][errors_before:]
            finally:
                await client.aclose()
        rows.append(row)
    return rows


async def memory_per_item(server: ServerProcess, n: int) -> float:
    """Bytes the plugin keeps per item after a first sync of ``n`` items (tracemalloc),
    beyond the caller's own ``ChatContext`` (made before tracing starts)."""
    ctx = llm.ChatContext(items=history(n, prefix="mem_"))
    client = await connect(server)
    try:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            await client.session.update_chat_ctx(ctx)
            await asyncio.sleep(0.05)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
    finally:
        await client.aclose()
    return kept / n


@dataclass
class PathSummary:
    """A path's figures over its runs."""

    seconds: float  # median wall time of the path
    own_ms: float  # the runs' longest callback, own time, worst run (the target's figure)
    wall_ms: float  # the runs' longest callback by wall time, preemption included, worst run
    cpu_ms: float  # longest CPU time of a callback, worst run
    label: str  # the longest callback by own time, worst run
    preempted: str  # callbacks the OS preempted, worst run: "k of n"
    events: int  # median
    ok: bool  # every run's server conversation = context
    gc_ms: float  # longest GC pause, worst run


def _summary(results: list[PathResult]) -> PathSummary:
    worst = max(results, key=lambda r: r.longest.own_ms)
    most = max(results, key=lambda r: r.longest.preempted)
    return PathSummary(
        seconds=statistics.median(r.seconds for r in results),
        own_ms=worst.longest.own_ms,
        wall_ms=max(r.longest.wall_ms for r in results),
        cpu_ms=max(r.longest.cpu_ms for r in results),
        label=worst.longest.label,
        preempted=f"{most.longest.preempted:,} of {most.longest.callbacks:,}",
        events=int(statistics.median(r.events for r in results)),
        ok=all(r.ok for r in results),
        gc_ms=max(r.gc_ms for r in results),
    )


def e2e_table(rows: list[E2ERow]) -> str:
    out = []
    for r in rows:
        for path in PATHS:
            results = r.paths[path]
            if not results:
                continue
            s = _summary(results)
            out.append(
                [
                    f"{r.n:,}",
                    path,
                    fmt_ms(s.own_ms),
                    fmt_ms(s.wall_ms),
                    fmt_ms(s.cpu_ms),
                    f"`{s.label}`",
                    s.preempted,
                    fmt_s(s.seconds),
                    f"{s.events:,}",
                    fmt_ms(s.gc_ms),
                    "yes" if s.ok else "NO",
                ]
            )
    return table(
        [
            "N",
            "path",
            "longest plugin callback, own time (worst run)",
            "by wall, preemption included (worst run)",
            "CPU (worst run)",
            "longest one (worst run)",
            "preempted callbacks (worst run)",
            "wall (median)",
            "events",
            "longest GC pause",
            "server = context",
        ],
        out,
    )


@dataclass
class RejectResult:
    latencies_ms: list[float]
    exceptions: list[str]


async def bench_reject(server: ServerProcess, repeats: int) -> RejectResult:
    client = await connect(server)
    latencies: list[float] = []
    exceptions: list[str] = []
    try:
        ctx = llm.ChatContext(items=history(10, prefix="r"))
        await client.session.update_chat_ctx(ctx)
        for i in range(repeats):
            item_id = f"reject_{i}"
            await server.call(
                "reject_item",
                item_id,
                "invalid_value",
                "Invalid value: 'x'. Rejected by the benchmark.",
            )
            ctx = ctx.copy()
            ctx.items.append(llm.ChatMessage(id=item_id, role="user", content=["rejected"]))
            t0 = time.perf_counter()
            try:
                await client.session.update_chat_ctx(ctx)
            except Exception as e:
                latencies.append((time.perf_counter() - t0) * 1e3)
                code = getattr(e, "code", None)
                exceptions.append(f"{type(e).__name__}({code})")
            else:
                exceptions.append("no exception")
            ctx.items.pop()
    finally:
        await client.aclose()
    return RejectResult(latencies, exceptions)


# --------------------------------------------------------------------------- main


def environment() -> str:
    return (
        f"python {platform.python_version()} ({platform.machine()}), "
        f"livekit-agents {version('livekit-agents')}, "
        f"livekit-plugins-openai {version('livekit-plugins-openai')}, "
        f"openai {version('openai')}, aiohttp {version('aiohttp')}, "
        f"{multiprocessing.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )


PROTOCOLS = ("preview", "ga")
# items of the warm-up session run before the measured ones, and its longest callback
WARMUP_N = 50
WARMUP: dict[str, Longest] = {}


async def run_async(
    e2e_sizes: Sequence[int], protocol: str, repeats: int, memory_n: int
) -> tuple[list[E2ERow], RejectResult, float]:
    task = asyncio.current_task()
    assert task is not None
    task.set_name("caller's task (update_chat_ctx)")  # the plugin's code it awaits is timed
    server = ServerProcess(protocol)
    try:
        # one small session through every path first: the first use of each event type builds
        # pydantic's (and openai's) schemas once per process, which is no path's cost; its
        # longest callback is printed apart
        warm = (await bench_e2e(server, [WARMUP_N], 1))[0]
        WARMUP[protocol] = max(
            (r.longest for results in warm.paths.values() for r in results),
            key=lambda longest: longest.own_ms,
        )
        rows = await bench_e2e(server, e2e_sizes, repeats)
        reject = await bench_reject(server, REJECT_REPEATS)
        per_item = await memory_per_item(server, memory_n) if memory_n else math.nan
    finally:
        server.close()
    return rows, reject, per_item


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement")
    parser.add_argument(
        "--e2e-sizes",
        default=",".join(str(n) for n in E2E_SIZES),
        help="comma-separated context sizes of the end-to-end paths",
    )
    parser.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help="comma-separated protocols of the end-to-end runs (preview, ga)",
    )
    parser.add_argument(
        "--memory-items", type=int, default=MEMORY_N, help="items of the memory run (0: skip)"
    )
    parser.add_argument("--no-diff", action="store_true", help="skip sections a and b")
    args = parser.parse_args(argv)
    e2e_sizes = [int(s) for s in args.e2e_sizes.split(",") if s]

    started = time.perf_counter()
    print(f"Environment: {environment()}\n")
    print(
        "Figures are noisy: the machine's cores are shared with other work; the end-to-end "
        f"wall times are medians of {args.repeats} runs, the longest callback the worst run's.\n"
    )

    diff_rows: list[DiffRow] = []
    prepend_rows: list[DiffRow] = []
    if not args.no_diff:
        print("### a. compute_chat_ctx_diff (history + 1 system message)\n")
        diff_rows = bench_diff(args.repeats)
        print(diff_table(diff_rows) + "\n")
        print("### a2. The same with the system message prepended (no common prefix)\n")
        prepend_rows = bench_diff(args.repeats, "prepend")
        print(diff_table(prepend_rows) + "\n")

        print("### b. Peak memory of the diff\n")
        mem_rows = [
            peak_memory(fork_diff, 10_000, "fork, appended"),
            peak_memory(fork_diff, 10_000, "fork, prepended", "prepend"),
            peak_memory(fork_diff, UPSTREAM_MAX, "fork, prepended", "prepend"),
            peak_memory(upstream_diff, UPSTREAM_MAX, "upstream 1.4.6, appended"),
            peak_memory(upstream_diff, UPSTREAM_MAX, "upstream 1.4.6, prepended", "prepend"),
        ]
        print(mem_table(mem_rows) + "\n")

    per_protocol: dict[str, tuple[list[E2ERow], RejectResult, float]] = {}
    for protocol in args.protocols.split(","):
        per_protocol[protocol] = asyncio.run(
            run_async(e2e_sizes, protocol, args.repeats, args.memory_items)
        )
    for protocol, (e2e_rows, reject, per_item) in per_protocol.items():
        _print_protocol(protocol, e2e_rows, reject, per_item, args.memory_items)

    # e. targets
    results: list[tuple[str, str, bool | None]] = []  # None: not measured
    measured_rows = [
        r for r in (*diff_rows, *prepend_rows) if r.n == UPSTREAM_MAX and r.upstream_s is not None
    ]
    if measured_rows:
        # the worse of the appended and prepended cases
        speedup = min(r.upstream_s / r.fork_s for r in measured_rows if r.upstream_s is not None)
        same = all(r.upstream_lcs == r.fork_lcs for r in measured_rows)
        results.append(
            (
                f"diff ≥{TARGET_SPEEDUP:.0f}× faster than upstream at N={UPSTREAM_MAX:,}, "
                "same LCS length (appended and prepended)",
                f"{speedup:,.0f}× (the worse case), LCS {'same' if same else 'DIFFERENT'}",
                speedup >= TARGET_SPEEDUP and same,
            )
        )
    for protocol, (e2e_rows, reject, per_item) in per_protocol.items():
        results.extend(_protocol_targets(protocol, e2e_rows, reject, per_item))
    print("### e. Targets\n")
    print(
        table(
            ["target", "measured", "result"],
            [
                [t, m, "not measured" if ok is None else "PASS" if ok else "**FAIL**"]
                for t, m, ok in results
            ],
        )
    )
    failed = [t for t, _, ok in results if ok is False]
    print(f"\nTotal bench time: {time.perf_counter() - started:.0f} s")
    if failed:
        print(f"\nFAIL: {len(failed)} target(s) missed: " + "; ".join(failed))
        return 1 if args.strict else 0
    return 0


def _protocol_targets(
    protocol: str, e2e_rows: list[E2ERow], reject: RejectResult, per_item: float
) -> list[tuple[str, str, bool | None]]:
    """The end-to-end targets, measured on one protocol."""
    results: list[tuple[str, str, bool | None]] = []
    for r in e2e_rows:
        worst = {path: _summary(res) for path, res in r.paths.items() if res}
        path = max(worst, key=lambda p: worst[p].own_ms)
        by_wall = max(worst, key=lambda p: worst[p].wall_ms)
        results.append(
            (
                f"longest plugin callback < {TARGET_CALLBACK_MS:g} ms on every path, N={r.n:,} "
                "(own time, worst run)",
                f"{fmt_ms(worst[path].own_ms)} ({path}); by wall, preemption included: "
                f"{fmt_ms(worst[by_wall].wall_ms)} ({by_wall})",
                worst[path].own_ms < TARGET_CALLBACK_MS,
            )
        )
    for r in e2e_rows:
        if r.n != TARGET_INCREMENTAL_N or not r.paths["+1 message"]:
            continue
        incremental = _summary(r.paths["+1 message"])
        seconds, events = incremental.seconds, incremental.events
        results.append(
            (
                f"+1 message sync at N={r.n:,}: 1 event, < {TARGET_INCREMENTAL_MS:g} ms wall",
                f"{events} event(s), {fmt_s(seconds)}",
                events == 1 and seconds * 1e3 < TARGET_INCREMENTAL_MS,
            )
        )
    for r in e2e_rows:
        if r.n != TARGET_REPLAY_N or not r.paths["replay after a drop"]:
            continue
        seconds = _summary(r.paths["replay after a drop"]).seconds
        results.append(
            (
                f"replay of {r.n:,} items after a drop ≤ {TARGET_REPLAY_S:g} s wall",
                fmt_s(seconds),
                seconds <= TARGET_REPLAY_S,
            )
        )
    if not math.isnan(per_item):
        results.append(
            (
                f"memory kept per item < {TARGET_BYTES_PER_ITEM / 1024:g} KiB",
                f"{per_item:,.0f} B",
                per_item < TARGET_BYTES_PER_ITEM,
            )
        )
    if e2e_rows:
        n_errors = sum(len(r.errors) for r in e2e_rows)
        ok = all(x.ok for r in e2e_rows for res in r.paths.values() for x in res)
        results.append(
            (
                "no server errors, server conversation = context (after the syncs and replays)",
                f"{n_errors} errors, {'all match' if ok else 'MISMATCH'}",
                n_errors == 0 and ok,
            )
        )
    worst_reject = max(reject.latencies_ms) if reject.latencies_ms else math.inf
    results.append(
        (
            f"rejection reaches the caller < {TARGET_REJECT_MS:g} ms",
            f"max {fmt_ms(worst_reject)} of {len(reject.exceptions)}"
            + ("" if len(reject.latencies_ms) == len(reject.exceptions) else ", some not raised"),
            worst_reject < TARGET_REJECT_MS and len(reject.latencies_ms) == len(reject.exceptions),
        )
    )
    return [(f"[{protocol}] {t}", m, ok) for t, m, ok in results]


def _print_protocol(
    protocol: str, e2e_rows: list[E2ERow], reject: RejectResult, per_item: float, memory_n: int
) -> None:
    """Sections c and d for one protocol."""
    print(f"### c. End to end on the fake Azure server, {protocol} protocol\n")
    print(e2e_table(e2e_rows))
    print(
        "\nEach callback the event loop ran in the measured window is timed (a wrapper of "
        "`asyncio.Handle._run`) and named by its task (or callback); the fake server runs in "
        "a child process, so all of them are the client's (the bench's own pipe callbacks "
        "left out). A callback's own time is its wall time, or its CPU time where the OS "
        "preempted the thread during it (an involuntary context switch and no voluntary one, "
        "counted per thread by getrusage: another process had the core; the thread neither "
        "blocked nor waited for the GIL); the target is judged on it, and the longest by wall "
        "is shown beside it. "
        + (
            ""
            if _RUSAGE_THREAD is not None
            else "This OS counts no switches per thread: own time is wall time here. "
        )
        + "GC pauses (process-wide) are not charged to the callback they fell in: the longest "
        "is its own column. Events: item events the session sent (syncs, replay) or server "
        "events it read (burst)."
    )
    if (warm := WARMUP.get(protocol)) is not None:
        print(
            f"\nBefore these runs, one warm-up session of {WARMUP_N} items went through every "
            f"path (not in the table): its longest callback, {fmt_ms(warm.own_ms)} "
            f"(`{warm.label}`), includes the one-time schema builds of the first use of each "
            "event type."
        )
    if not math.isnan(per_item):
        print(
            f"\nMemory the plugin keeps after a first sync of {memory_n:,} items, beyond the "
            f"caller's `ChatContext` (tracemalloc): {per_item:,.0f} B per item.\n"
        )
    print(f"### d. Rejection latency (one rejected item, loopback), {protocol} protocol\n")
    print(
        table(
            ["repeats", "median", "max", "exception", "upstream 1.4.6"],
            [
                [
                    str(len(reject.exceptions)),
                    fmt_ms(statistics.median(reject.latencies_ms)) if reject.latencies_ms else "-",
                    fmt_ms(max(reject.latencies_ms)) if reject.latencies_ms else "-",
                    ", ".join(sorted(set(reject.exceptions))),
                    UPSTREAM_REJECT_NOTE + " (not run)",
                ]
            ],
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
