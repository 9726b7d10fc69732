"""A drop and its replay while a sync is still planning (before it queued anything).

Unsliced, the replay comes before the sync (the spoken replies whose end has not arrived are
lost, and the sync creates them again from the context) or after it (the sync took the
context's text as their content, and the replay re-creates them): the view ends with every item
either way. A plan made across the drop was made for a conversation the replay changed, so
``ChatSyncIO`` plans the sync again once the next connection is ready, also when the plan has
no events (that one used to return at once, and the replies the replay lost stayed lost).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from livekit.agents import llm

chat_sync_io = pytest.importorskip(
    "livekit.plugins.openai.realtime.chat_sync_io",
    reason="the fork's modules are not in this build (pristine upstream)",
)
conversation = pytest.importorskip("livekit.plugins.openai.realtime.conversation")
loop_slicer = pytest.importorskip("livekit.plugins.openai.realtime.loop_slicer")
realtime_model = pytest.importorskip("livekit.plugins.openai.realtime.realtime_model")
realtime_model_beta = pytest.importorskip("livekit.plugins.openai.realtime.realtime_model_beta")

N = 100  # a few steps of planning (``STEP_ITEMS`` each)
WIRE = {"preview": realtime_model_beta, "ga": realtime_model}


def _runner(protocol: str, queued: list[Any]) -> Any:
    """A ChatSyncIO on a connected session whose view holds N spoken replies of the service
    whose end has not arrived."""
    images = protocol == "ga"
    io = chat_sync_io.ChatSyncIO(
        protocol=protocol,
        images=images,
        warned=set(),
        queue_event=queued.append,
        wire_event=WIRE[protocol]._wire_event,
        closed=lambda: False,
    )
    ids = itertools.count()
    io.state = conversation.ConversationState(
        protocol=protocol, images=images, new_event_id=lambda prefix: f"{prefix}{next(ids)}"
    )
    prev = None
    for k in range(N):
        item_id = f"s{k}"
        io.state.item_added(
            item_id,
            prev,
            lambda item_id=item_id: llm.ChatMessage(id=item_id, role="assistant", content=[]),
        )
        prev = item_id
    for r in io.state.remote:
        r.audio = True
    io.connected()
    return io


def _answer(io: Any, events: list[Any]) -> None:
    """The service creates every item of the create events in ``events``."""
    for ev in events:
        if getattr(ev, "type", None) == "conversation.item.create":
            item = ev.item
            io.item_created(
                item.id, ev.previous_item_id, lambda: llm.ChatMessage(role="user", content=[])
            )
    events.clear()


async def _sync_with_a_drop_after(protocol: str, turns: int) -> tuple[int, int] | None:
    """The items the view holds after a sync of the context whose planning a drop and replay
    interrupt after ``turns`` turns of the event loop, and those of the context; None when the
    sync was done before."""
    queued: list[Any] = []
    io = _runner(protocol, queued)
    ctx = llm.ChatContext(
        items=[
            llm.ChatMessage(id=f"s{k}", role="assistant", content=[f"said {k}"]) for k in range(N)
        ]
    )
    task = asyncio.create_task(io.update_chat_ctx(ctx))
    for _ in range(turns):
        await asyncio.sleep(0)
    if task.done():
        await task
        return None
    io.connection_lost()
    sent: list[Any] = []

    async def _send(event: Any) -> None:
        sent.append(event)

    await io.replay(_send)
    _answer(io, sent)  # the replay is answered: the connection is ready for syncs again
    while not task.done():
        await asyncio.sleep(0)
        _answer(io, queued)
    await task
    view = len(list(io.state.remote))
    await io.aclose()
    return view, N


@pytest.mark.regression(fails_on=("1.4.6.post8",))
@pytest.mark.parametrize("protocol", ["preview", "ga"])
async def test_a_drop_while_a_sync_plans_leaves_no_item_of_the_context_out(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_slicer, "MAX_SLICE", 0.0)  # every tick yields: nothing timed
    left_out: dict[int, tuple[int, int]] = {}
    for turns in itertools.count():
        result = await asyncio.wait_for(_sync_with_a_drop_after(protocol, turns), 5)
        if result is None:
            break
        if result[0] < result[1]:
            left_out[turns] = result
    assert turns > 0  # the drop landed in the planning at least once
    assert left_out == {}
