"""Slicing by the time budget changes where the work pauses, never what it does.

The sans-IO core cuts a sync's planning, the queueing of its events and the replay on a new
connection into small steps; the asyncio layer (``loop_slicer``) yields to the event loop
between them once a slice has used its budget. Run unsliced (an infinite budget, steps of the
whole history) and sliced as finely as it goes (a zero budget, a pause after every item), a
sync and a replay of random conversations (``test_chat_sync``'s scenarios) queue the same
protocol events in the same order, on both protocols, and leave the same view.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from test_chat_sync import Spec, _mirror, scenarios

from livekit.agents import llm

loop_slicer = pytest.importorskip(
    "livekit.plugins.openai.realtime.loop_slicer",
    reason="the fork's modules are not in this build (pristine upstream)",
)
chat_sync = pytest.importorskip("livekit.plugins.openai.realtime.chat_sync")
conversation = pytest.importorskip("livekit.plugins.openai.realtime.conversation")
chat_sync_io = pytest.importorskip("livekit.plugins.openai.realtime.chat_sync_io")

from livekit.plugins.openai.realtime import realtime_model, realtime_model_beta  # noqa: E402

PROTOCOLS = {
    "preview": (realtime_model_beta._wire_event, False),
    "ga": (realtime_model._wire_event, True),
}


async def _sync_and_replay(
    specs: list[Spec], local: list[llm.ChatItem], protocol: str
) -> tuple[list[Any], list[Any], list[str], int]:
    """The events a sync of ``local`` queues, those a replay sends, the view after, and how
    many times the work yielded to the event loop."""
    wire, images = PROTOCOLS[protocol]
    remote, since = _mirror(specs)
    queued: list[Any] = []
    sent: list[Any] = []
    io = chat_sync_io.ChatSyncIO(
        protocol=protocol,
        images=images,
        warned=set(),
        queue_event=queued.append,
        wire_event=wire,
        closed=lambda: False,
    )
    ids = itertools.count()
    io.state = conversation.ConversationState(
        protocol=protocol, images=images, new_event_id=lambda prefix: f"{prefix}{next(ids)}"
    )
    io.state.remote = remote
    turns = 0

    async def _count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(_count_turns())
    await asyncio.sleep(0)
    start = turns
    slicer = loop_slicer.LoopSlicer()
    ctx = llm.ChatContext(items=list(local))
    items = await loop_slicer.drain_sliced(io.state.protocol_items_steps(ctx), slicer)
    plan = await loop_slicer.drain_sliced(io.state.plan_steps(items, since=since), slicer)
    if plan:
        await io._queue_plan(plan, slicer)

    async def _send(event: Any) -> None:
        sent.append(event)

    io.connection_lost()  # the next connection starts empty: the view is replayed on it
    await io.replay(_send)
    yielded = turns - start
    counter.cancel()
    await io.aclose()
    view = [r.item.id for r in io.remote]

    def _dump(events: list[Any]) -> list[Any]:
        return [e.model_dump(exclude_unset=True) for e in events]

    return _dump(queued), _dump(sent), view, yielded


def _run(specs: list[Spec], local: list[llm.ChatItem], protocol: str, *, sliced: bool) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_slicer, "MAX_SLICE", 0.0 if sliced else math.inf)
        step = 1 if sliced else 10**9
        mp.setattr(chat_sync, "STEP_ITEMS", step)
        mp.setattr(conversation, "STEP_ITEMS", step)
        return asyncio.run(_sync_and_replay(specs, local, protocol))


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_slicing_keeps_the_events_and_their_order(
    protocol: str, scenario: tuple[list[Spec], list[llm.ChatItem]]
) -> None:
    specs, local = scenario
    whole_sync, whole_replay, whole_view, _ = _run(specs, local, protocol, sliced=False)
    sync, replay, view, yielded = _run(specs, local, protocol, sliced=True)
    assert sync == whole_sync
    assert replay == whole_replay
    assert view == whole_view
    if specs or local:
        assert yielded > 0  # the sliced run did pause: the comparison is not of two whole runs
