"""A sync given up mid-completion, then a sync of a context that changed those items.

Unsliced, the given-up sync completes its held items before the next sync begins, and the next
sync replaces what its context holds differently and deletes what it no longer holds. The next
sync completes the given-up sync's rest before it plans, after it took ``since``: the rest then
counts as content the service made after the sync began, and is kept as the given-up sync's.
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

N = 100  # more than one step of completions (``STEP_ITEMS`` each)
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


def _ctx(text: str, ks: range) -> llm.ChatContext:
    return llm.ChatContext(
        items=[llm.ChatMessage(id=f"s{k}", role="assistant", content=[f"{text} {k}"]) for k in ks]
    )


def _answer(io: Any, events: list[Any]) -> None:
    """The service does what the queued creates and deletes ask."""
    for ev in events:
        if ev.type == "conversation.item.create":
            io.item_created(ev.item.id, ev.previous_item_id, lambda ev=ev: ev.item)
        elif ev.type == "conversation.item.delete":
            io.item_deleted(ev.item_id)
    events.clear()


@pytest.mark.parametrize("protocol", ["preview", "ga"])
@pytest.mark.parametrize("kept", [range(N), range(0, N, 2)], ids=["edited", "edited_and_cut"])
async def test_the_next_sync_applies_its_context_over_a_given_up_syncs_rest(
    protocol: str, kept: range, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_slicer, "MAX_SLICE", 0.0)  # every tick yields: nothing timed
    queued: list[Any] = []
    io = _runner(protocol, queued)
    first = asyncio.create_task(io.update_chat_ctx(_ctx("said", range(N))))
    # given up once it has completed part of its held items
    while not io.state._completions:
        assert not first.done()
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert io.state._completions  # part of them left
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(io.update_chat_ctx(_ctx("other", kept)))
    while not second.done():
        await asyncio.sleep(0)
        _answer(io, queued)
    await second
    view = {r.item.id: r.item.content for r in io.state.remote}
    assert view == {f"s{k}": [f"other {k}"] for k in kept}
    await io.aclose()
