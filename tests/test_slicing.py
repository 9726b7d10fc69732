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
import contextlib
import itertools
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
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


def _runner(protocol: str, queued: list[Any]) -> Any:
    """A ``ChatSyncIO`` of ``protocol`` queueing into ``queued``, with numbered event ids."""
    wire, images = PROTOCOLS[protocol]
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
    return io


async def _sync_and_replay(
    specs: list[Spec], local: list[llm.ChatItem], protocol: str
) -> tuple[list[Any], list[Any], list[str], int]:
    """The events a sync of ``local`` queues, those a replay sends, the view after, and how
    many times the work yielded to the event loop."""
    remote, since = _mirror(specs)
    queued: list[Any] = []
    sent: list[Any] = []
    io = _runner(protocol, queued)
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
    connection = io.state.connection
    plan = await loop_slicer.drain_sliced(io.state.sync_steps(ctx, since=since), slicer)
    if plan:
        await io._queue_plan(plan, slicer, connection)

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
        mp.setattr(chat_sync, "CHUNK_ITEMS", step)
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


# ------------------------------------------------------------------ the plan of an appended sync


def _new_item(kind: str, k: int, view_calls: list[str]) -> llm.ChatItem:
    """A new local item of ``kind``; some the protocol cannot carry, some it must map."""
    if kind == "empty":
        return llm.ChatMessage(id=f"e{k}", role="user", content=[""])
    if kind == "long id":
        return llm.ChatMessage(id=f"long_{k}_" + "x" * 40, role="user", content=["long"])
    if kind == "image":
        image = llm.ImageContent(image="data:image/png;base64,AAAA")
        return llm.ChatMessage(id=f"i{k}", role="user", content=["look", image])
    if kind == "call":
        return llm.FunctionCall(id=f"c{k}", call_id=f"cc{k}", name="f", arguments="{}")
    if kind == "output":  # of a view's call, an earlier new call, or of no call at all
        call_id = view_calls[k % len(view_calls)] if view_calls and k % 3 else f"cc{k - 1}"
        return llm.FunctionCallOutput(id=f"o{k}", call_id=call_id, output="1", is_error=False)
    if kind == "handoff":
        return llm.AgentHandoff(id=f"h{k}", new_agent_id="other")
    return llm.ChatMessage(id=f"m{k}", role="user", content=[f"new {k}"])


def _comparable(plan: Any) -> Any:
    return (
        plan.deletes,
        [(i.anchor, [item.model_dump() for item in i.items]) for i in plan.insertions],
        plan.kept,
        [item.model_dump() for item in plan.held],
        sorted(plan.replaced),
    )


def _full_plan(
    specs: list[Spec], local: list[llm.ChatItem], since: int | None, images: bool
) -> Any:
    remote, before = _mirror(specs)
    ctx = llm.ChatContext(items=list(local))
    try:
        items, warnings = chat_sync.protocol_items(ctx, remote, warned=set(), images=images)
    except chat_sync.ChatContextSyncError as e:
        return "raises", str(e)
    plan = chat_sync.plan_sync(remote, items, since=before if since is None else since)
    return items, warnings, _comparable(plan)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_an_appended_sync_plans_what_the_full_plan_does(
    protocol: str, scenario: tuple[list[Spec], list[llm.ChatItem]], data: st.DataObject
) -> None:
    """The view as it is (the same items, or equal copies), a small edit (items added at the
    end, or one item dropped, edited or moved), planned from the new items alone when it can
    be: the same protocol items, warnings and plan as the full plan, or the same error."""
    _, images = PROTOCOLS[protocol]
    specs, _ = scenario
    remote, before = _mirror(specs)
    since = None if data.draw(st.booleans()) else remote.revision  # None: "during" counts
    view = [r.item for r in remote]
    local = [item if data.draw(st.booleans()) else item.model_copy() for item in view]
    edit = data.draw(st.sampled_from(["append", "append", "append", "drop", "edit", "move"]))
    kinds: list[str] = []
    if edit == "append":
        kinds = data.draw(
            st.lists(
                st.sampled_from(
                    ["message", "message", "empty", "long id", "image", "call", "output"]
                    + ["handoff", "duplicate", "view id"]
                ),
                max_size=4,
            )
        )
        view_calls = [item.call_id for item in view if item.type == "function_call"]
        for k, kind in enumerate(kinds):
            if kind == "duplicate" and len(local) > len(view):
                local.append(local[-1].model_copy())
            elif kind == "view id" and view:
                local.append(data.draw(st.sampled_from(view)).model_copy())
            else:
                local.append(_new_item(kind, k, view_calls))
    elif local:
        k = data.draw(st.integers(0, len(local) - 1))
        if edit == "drop":
            del local[k]
        elif edit == "move":
            local.insert(data.draw(st.integers(0, len(local) - 1)), local.pop(k))
        elif local[k].type == "message":
            local[k] = local[k].model_copy(update={"content": ["edited"]})

    steps = chat_sync.appended_sync_steps(
        remote,
        llm.ChatContext(items=list(local)),
        since=before if since is None else since,
        warned=set(),
        images=images,
    )
    try:
        fast = chat_sync._drain(steps)
    except chat_sync.ChatContextSyncError as e:
        fast = ("raises", str(e))
    settled = since is not None and all(r.known_at is not None for r in remote)
    if edit == "append" and settled and set(kinds) <= {"message", "empty", "long id", "image"}:
        assert fast is not None, "an appended sync of a settled view takes the short way"
    if fast is None:
        return
    full = _full_plan(specs, local, since, images)
    if full[0] == "raises":
        assert fast == full
        return
    items, warnings, plan = fast
    full_items, full_warnings, full_plan = full
    assert [item.model_dump() for item in items] == [
        item.model_dump() for item in full_items[len(view) :]
    ]
    assert warnings == full_warnings
    assert _comparable(plan) == full_plan


async def _sync_planning_during_replay(protocol: str, count: int, start_after: int) -> Any:
    """A sync that drops 10 items of a ``count``-item view is still planning (sliced) when the
    connection drops and the replay is built and sent."""
    queued: list[Any] = []
    io = _runner(protocol, queued)
    previous = None
    for k in range(count):
        item = llm.ChatMessage(id=f"item_{k}", role="user", content=[f"m{k}"])
        io.remote.add(item, previous, origin="client")
        previous = item.id
    io.connected()
    view = [r.item.id for r in io.remote]
    dropped = {f"item_{k}" for k in range(10, 20)}
    local = [r.item for r in io.remote if r.item.id not in dropped]
    local.append(llm.ChatMessage(id="item_new", role="user", content=["new"]))
    sync = asyncio.create_task(io.update_chat_ctx(llm.ChatContext(items=local)))
    for _ in range(start_after):
        await asyncio.sleep(0)
    missing_at: list[int] = []
    sent: list[Any] = []

    async def _send(event: Any) -> None:
        sent.append(event)
        # every item the replay re-creates, sent or still to be, stays in the view
        if any(item_id not in io.remote for item_id in view):
            missing_at.append(len(sent))

    io.connection_lost()
    await io.replay(_send)
    queued_while_replaying = list(queued)
    io.close()
    with contextlib.suppress(BaseException):
        await sync
    await io.aclose()
    return missing_at, queued_while_replaying


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("start_after", [1, 3, 10, 30])
def test_a_sync_planning_during_a_replay_keeps_the_replayed_items_in_the_view(
    protocol: str, start_after: int
) -> None:
    """Both protocols. The sync's plan, made before the drop, neither removes from the view an
    item whose replay create is still to be built, nor goes out on the new connection."""
    with pytest.MonkeyPatch.context() as mp:
        # a pause after every step (of the module's own size): the replay overtakes the plan
        mp.setattr(loop_slicer, "MAX_SLICE", 0.0)
        missing_at, queued = asyncio.run(_sync_planning_during_replay(protocol, 1000, start_after))
    assert missing_at == [], f"the view lacked replayed items at sends {missing_at[:5]}"
    assert queued == [], "a plan made for the old connection was queued on the new one"
