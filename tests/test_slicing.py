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
from test_chat_sync import Spec, _mirror, plan_sync, protocol_items, scenarios

from livekit.agents import llm

loop_slicer = pytest.importorskip(
    "livekit.plugins.openai.realtime.loop_slicer",
    reason="the fork's modules are not in this build (pristine upstream)",
)
chat_sync = pytest.importorskip("livekit.plugins.openai.realtime.chat_sync")
conversation = pytest.importorskip("livekit.plugins.openai.realtime.conversation")
item_events = pytest.importorskip("livekit.plugins.openai.realtime.item_events")
chat_sync_io = pytest.importorskip("livekit.plugins.openai.realtime.chat_sync_io")

from state_helpers import chat_sync_io_runner as _runner  # noqa: E402

# whether each protocol's session carries images
PROTOCOLS = {"preview": False, "ga": True}


def _view_state(remote: Any) -> list[Any]:
    """Everything the view knows of each item, in its order (what a sync or replay may set)."""
    return [
        (r.item.model_dump(exclude={"created_at"}), r.origin, r.known_at, r.heard, r.audio, r.held)
        for r in remote
    ] + [remote.revision]


async def _sync_and_replay(
    specs: list[Spec], local: list[llm.ChatItem], protocol: str
) -> tuple[list[Any], list[Any], list[str], int, list[Any]]:
    """The events a sync of ``local`` queues, those a replay sends, the view after, how many
    times the work yielded to the event loop, and the state: the view's items after the sync
    and after the replay, and the outcomes both reported."""
    remote, since = _mirror(specs)
    queued: list[Any] = []
    sent: list[Any] = []
    io = _runner(protocol, queued)
    io.state.remote = remote
    outcomes: list[Any] = []

    def _log_outcomes() -> None:
        outcomes.extend(io.state.outcomes)
        io.state.outcomes = []

    io._log_outcomes = _log_outcomes
    slicer = loop_slicer.LoopSlicer()
    ctx = llm.ChatContext(items=list(local))
    connection = io.state.connection

    async def _sync() -> None:
        plan = await loop_slicer.drain_sliced(io.state.sync_steps(ctx, since=since), slicer)
        if plan:
            await io._queue_plan(plan, slicer, connection)

    _, sync_turns = await _counting_turns(_sync())
    after_sync = _view_state(io.remote)

    async def _send(event: Any) -> None:
        sent.append(event)

    io.connection_lost()  # the next connection starts empty: the view is replayed on it
    _, replay_turns = await _counting_turns(io.replay(_send))
    yielded = sync_turns + replay_turns
    await io.aclose()
    view = [r.item.id for r in io.remote]

    def _dump(events: list[Any]) -> list[Any]:
        return [e.model_dump(exclude_unset=True) for e in events]

    state = [after_sync, _view_state(io.remote), outcomes]
    return _dump(queued), _dump(sent), view, yielded, state


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
    whole_sync, whole_replay, whole_view, _, whole_state = _run(
        specs, local, protocol, sliced=False
    )
    sync, replay, view, yielded, state = _run(specs, local, protocol, sliced=True)
    assert sync == whole_sync
    assert replay == whole_replay
    assert view == whole_view
    assert state == whole_state  # the same content known, the same items lost, reported so
    if specs or local:
        assert yielded > 0  # the sliced run did pause: the comparison is not of two whole runs


# ------------------------------------- a replay that loses items, a sync from a stale copy of the view

_AT = 0.0  # the items of both runs are made alike, their creation time too
_KINDS = (
    "client", "voice", "voice lost", "voice empty", "reply", "reply lost", "call", "output",
    "server call",
)  # fmt: skip


def _state_of(kinds: list[str], protocol: str) -> Any:
    """A state whose view holds ``kinds``: the client's items, the service's voice turns and
    replies (content known, never known, or empty), calls and their outputs."""
    images = PROTOCOLS[protocol]
    ids = itertools.count()
    state = conversation.ConversationState(
        protocol=protocol, images=images, new_event_id=lambda prefix: f"{prefix}{next(ids)}"
    )
    previous: str | None = None
    calls: list[str] = []
    for k, kind in enumerate(kinds):
        item_id = f"i{k}"
        item: llm.ChatItem
        if kind == "client":
            item = llm.ChatMessage(created_at=_AT, id=item_id, role="system", content=[f"m{k}"])
            state.remote.add(item, previous, origin="client")
        elif kind in ("call", "output"):
            if kind == "call" or not calls:
                calls.append(f"c{k}")
                item = llm.FunctionCall(
                    created_at=_AT, id=item_id, call_id=f"c{k}", name="f", arguments="{}"
                )
            else:
                item = llm.FunctionCallOutput(
                    created_at=_AT, id=item_id, call_id=calls[-1], output="1", is_error=False
                )
            state.remote.add(item, previous, origin="client")
        else:
            if kind == "server call":
                item = llm.FunctionCall(
                    created_at=_AT, id=item_id, call_id=f"s{k}", name="f", arguments=""
                )
            else:
                role = "user" if kind.startswith("voice") else "assistant"
                item = llm.ChatMessage(created_at=_AT, id=item_id, role=role, content=[])
            state.item_added(item_id, previous, lambda item=item: item)
            if kind == "voice":
                state.transcript(item_id, f"said {k}", None)
            elif kind == "voice empty":
                state.transcript(item_id, "", None)
            elif kind == "reply":
                state.reply_done(item_id, f"reply {k}", audio=True)
        previous = item_id
    return state


def _patched(mp: pytest.MonkeyPatch, *, sliced: bool) -> None:
    """A zero budget and a pause after every item, or an infinite budget and whole steps."""
    mp.setattr(loop_slicer, "MAX_SLICE", 0.0 if sliced else math.inf)
    step = 1 if sliced else 10**9
    mp.setattr(chat_sync, "STEP_ITEMS", step)
    mp.setattr(chat_sync, "CHUNK_ITEMS", step)
    mp.setattr(conversation, "STEP_ITEMS", step)


async def _counting_turns(work: Any) -> tuple[Any, int]:
    """``await work``, and the event loop turns another task got meanwhile."""
    turns = 0

    async def _count() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(_count())
    await asyncio.sleep(0)
    start = turns
    result = await work
    counter.cancel()
    return result, turns - start


def _empty_reply(item_id: str) -> llm.ChatItem:
    return llm.ChatMessage(created_at=_AT, id=item_id, role="assistant", content=[])


def _dump(events: list[Any]) -> list[Any]:
    return [e.model_dump(exclude_unset=True) for e in events]


async def _replay_and_stale_sync(
    kinds: list[str],
    protocol: str,
    copy_at: int,
    answered: int,
    streaming: int,
    edits: list[tuple[str, str]],
) -> Any:
    """A replay of ``kinds`` (outcomes, events, view), then a sync from a copy of the view
    taken after the replay's ``copy_at``-th event, with ``answered`` of its creates answered
    since, ``streaming`` replies begun since (the copy holds their text: the sync takes it as
    their content) and ``edits`` (new items, drops) made to the copy: its plan, events and
    view."""
    queued: list[Any] = []
    io = _runner(protocol, queued)
    io.state = _state_of(kinds, protocol)
    outcomes: list[Any] = []

    def _log_outcomes() -> None:
        outcomes.extend(io.state.outcomes)
        io.state.outcomes = []

    io._log_outcomes = _log_outcomes
    sent: list[Any] = []
    copy: list[llm.ChatItem] | None = None

    async def _send(event: Any) -> None:
        nonlocal copy
        sent.append(event)
        if len(sent) == copy_at:
            copy = [r.item for r in io.remote]  # session.chat_ctx.copy(), mid-replay

    io.connection_lost()
    _, replay_turns = await _counting_turns(io.replay(_send))
    if copy is None:
        copy = [r.item for r in io.remote]
    after_replay = _view_state(io.remote)
    for event in sent[:answered]:  # the service confirms a prefix of the replay
        if event.type == "conversation.item.create":
            item_id = event.item.id
            io.item_created(item_id, None, lambda item_id=item_id: _empty_reply(item_id))
    local = list(copy)
    for k in range(streaming):  # a reply the service streams: the caller holds its text
        item_id = f"s{k}"
        last = io.remote.last()
        previous = last.item.id if last is not None else None
        io.item_created(item_id, previous, lambda item_id=item_id: _empty_reply(item_id))
        local.append(
            llm.ChatMessage(created_at=_AT, id=item_id, role="assistant", content=[f"heard {k}"])
        )
    for k, (edit, kind) in enumerate(edits):
        at = k * 7 % (len(local) + 1)
        if edit == "drop" and at < len(local):
            del local[at]
        elif kind == "pair":
            call = llm.FunctionCall(
                created_at=_AT, id=f"nc{k}", call_id=f"nc{k}", name="f", arguments="{}"
            )
            out = llm.FunctionCallOutput(
                created_at=_AT, id=f"no{k}", call_id=f"nc{k}", output="1", is_error=False
            )
            local[at:at] = [call, out]
        else:
            local.insert(
                at, llm.ChatMessage(created_at=_AT, id=f"n{k}", role="user", content=[f"new {k}"])
            )
    since = io.remote.revision
    slicer = loop_slicer.LoopSlicer()
    ctx = llm.ChatContext(items=local)
    plan, sync_turns = await _counting_turns(
        loop_slicer.drain_sliced(io.state.sync_steps(ctx, since=since), slicer)
    )
    if plan:
        await io._queue_plan(plan, slicer, io.state.connection)
    await io.aclose()
    return (
        _dump(sent),
        after_replay,
        _comparable(plan),
        _dump(queued),
        _view_state(io.remote),
        outcomes,
    ), (replay_turns, sync_turns)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(_KINDS), max_size=40),
    copy_at=st.integers(0, 60),
    answered=st.integers(0, 60),
    streaming=st.integers(0, 3),
    edits=st.lists(st.tuples(st.sampled_from(["new", "drop"]), st.sampled_from(["msg", "pair"]))),
)
def test_slicing_keeps_a_lossy_replay_and_a_sync_from_a_stale_copy(
    protocol: str,
    kinds: list[str],
    copy_at: int,
    answered: int,
    streaming: int,
    edits: list[tuple[str, str]],
) -> None:
    """Both protocols. A replay that loses items (content never known) and leaves empty ones
    out, of a view with calls and outputs; then a sync from a copy of the view taken
    mid-replay (``session.chat_ctx`` read then), with some of the replay answered since and
    new items in the copy, and replies streaming whose text the copy holds: sliced as finely as it goes (a zero budget), the replay sends the
    same events, reports the same outcomes and leaves the same view, and the sync plans and
    queues the same events and leaves the same view, as unsliced (an infinite budget)."""
    runs = []
    for sliced in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            _patched(mp, sliced=sliced)
            runs.append(
                asyncio.run(
                    _replay_and_stale_sync(kinds, protocol, copy_at, answered, streaming, edits)
                )
            )
    (whole, _), (sliced_result, (replay_turns, sync_turns)) = runs
    names = ("replay events", "view after replay", "plan", "sync events", "view", "outcomes")
    for name, whole_part, sliced_part in zip(names, whole, sliced_result, strict=True):
        assert sliced_part == whole_part, name
    if kinds:
        assert replay_turns > 0 and sync_turns > 0  # both sliced runs did pause


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
        items, warnings = protocol_items(ctx, remote, warned=set(), images=images)
    except chat_sync.ChatContextSyncError as e:
        return "raises", str(e)
    plan = plan_sync(remote, items, since=before if since is None else since)
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
    images = PROTOCOLS[protocol]
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


# ------------------------------------------------- the view changes while an appended sync plans

_CHANGES = ("server event", "transcript", "delete")


def _settled_state(protocol: str) -> Any:
    """A state whose view holds 6 settled items: the client's, and a voice turn transcribed."""
    images = PROTOCOLS[protocol]
    state = conversation.ConversationState(protocol=protocol, images=images)
    previous = None
    for k in range(6):
        if k == 2:
            item = llm.ChatMessage(id="voice", role="user", content=["hi"])
            state.remote.add(item, previous, origin="server")
        else:
            item = llm.ChatMessage(id=f"v{k}", role="user", content=[f"m{k}"])
            state.remote.add(item, previous, origin="client")
        previous = item.id
    return state


def _change(state: Any, change: str) -> None:
    """What the service may say while a sync plans: a new item, a transcript, a delete."""
    if change == "server event":
        reply = llm.ChatMessage(id="srv_new", role="assistant", content=[])
        state.item_added("srv_new", "v5", lambda: reply)
    elif change == "transcript":
        state.transcript("voice", "hello there", None)
    else:
        state.item_deleted("v5")


def _appended(state: Any) -> llm.ChatContext:
    items = [r.item for r in state.remote]
    items += [llm.ChatMessage(id=f"new{k}", role="system", content=[f"n{k}"]) for k in range(3)]
    items.append(llm.FunctionCall(id="call", call_id="cc", name="f", arguments="{}"))
    return llm.ChatContext(items=items)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("change", _CHANGES)
def test_a_view_changed_between_the_steps_of_an_appended_sync_gives_the_full_plan(
    protocol: str, change: str
) -> None:
    """Both protocols. The service changes the view (a new item, a transcript, a delete) at
    each pause of an appended sync's planning in turn: the sync plans what the full plan makes
    of the context and the view as they end, never a plan of the view before the change.

    A pin: no released version has the short way (main's first one, before this test, planned
    the new items after the view as it was when a change came while it read them)."""
    if not hasattr(chat_sync, "appended_sync_steps"):
        pytest.skip("this build plans every sync in full")
    images = PROTOCOLS[protocol]
    with pytest.MonkeyPatch.context() as mp:
        for module in (chat_sync, conversation):
            mp.setattr(module, "STEP_ITEMS", 1)  # a pause after every item
        mp.setattr(chat_sync, "CHUNK_ITEMS", 1)
        state = _settled_state(protocol)
        pauses = sum(
            1
            for _ in chat_sync.appended_sync_steps(
                state.remote, _appended(state), since=state.remote.revision, warned=set()
            )
        )
        assert pauses > 3  # the short way, paused all along (so that each pause is tried)
        for at in range(pauses):
            state = _settled_state(protocol)
            ctx = _appended(state)
            since = state.remote.revision
            steps = state.sync_steps(ctx, since=since)
            plan = None
            for n in itertools.count():
                if n == at:
                    _change(state, change)
                try:
                    next(steps)
                except StopIteration as done:
                    plan = done.value
                    break
            expected_state = _settled_state(protocol)
            _change(expected_state, change)
            remote = expected_state.remote
            items, _ = protocol_items(ctx, remote, warned=set(), images=images)
            expected = plan_sync(remote, items, since=since)
            assert _comparable(plan) == _comparable(expected), f"changed at pause {at}"


# ------------------------------------------------------- many pending events failed in slices


def test_a_failure_of_every_pending_event_leaves_the_books_at_once_and_settles_in_steps() -> None:
    """``fail_steps``: before its first pause every pending event is out of the books (an answer
    to one reaches nothing, the unsent ones are cancelled, an event tracked meanwhile is the next
    connection's own); once drained, each sync got the failure, once per event."""
    events = item_events.PendingItemEvents()
    first, second = item_events.Batch(), item_events.Batch()
    for k in range(100):
        ev = events.track(
            item_events.ItemEvent("create", f"i{k}", f"e{k}", batch=first if k < 60 else second)
        )
        ev.sent = k % 2 == 0
    error = chat_sync.ChatContextSyncError("the connection closed")
    steps = events.fail_steps(error)
    next(steps)
    assert len(events) == 0
    assert events.confirmed("create", "i1") is None
    assert events.rejected("e3", chat_sync.ChatContextSyncError("late")) is None
    assert events.cancelled("e1") and not events.cancelled("e0")
    later = item_events.Batch()
    events.track(item_events.ItemEvent("create", "i1", "next", batch=later))
    assert not first.done and not second.done  # still being settled
    for _ in steps:
        pass
    assert first.done and second.done
    assert first.errors == [error] * 60 and second.errors == [error] * 40
    assert [events.cancelled(f"e{k}") for k in range(1, 8, 2)] == [False, True, True, True]
    assert events.confirmed("create", "i1") is not None and later.done and not later.errors


@pytest.mark.regression(fails_on=("1.4.6.post3", "1.4.6.post4"))
def test_closing_a_session_with_thousands_of_pending_events_fails_the_sync_in_slices() -> None:
    """Both layers: ``close()`` with 2 000 creates unanswered fails the sync with its cause
    (not after the 5 s timeout), settling them in slices the event loop runs between."""
    turns = itertools.count()
    turn = 0  # the event loop's turns counted so far
    settled_at: list[int] = []  # the turn each event was settled in
    leave_batch = item_events.PendingItemEvents._leave_batch

    def _leave_batch(self: Any, ev: Any, error: Any) -> None:
        settled_at.append(turn)
        leave_batch(self, ev, error)

    async def _count_turns() -> None:
        nonlocal turn
        while True:
            await asyncio.sleep(0)
            turn = next(turns)

    async def _main() -> str:
        queued: list[Any] = []
        io = _runner("ga", queued)
        io.connected()
        items: list[llm.ChatItem] = [
            llm.ChatMessage(id=f"m{k}", role="user", content=["x"]) for k in range(2000)
        ]
        sync = asyncio.create_task(io.update_chat_ctx(llm.ChatContext(items=items)))
        while len(queued) < len(items):
            await asyncio.sleep(0)
        counter = asyncio.create_task(_count_turns())
        await asyncio.sleep(0)
        io.close()
        with pytest.raises(chat_sync.ChatContextSyncError) as raised:
            await sync
        counter.cancel()
        await io.aclose()
        return str(raised.value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_slicer, "MAX_SLICE", 0.0)
        mp.setattr(item_events.PendingItemEvents, "_leave_batch", _leave_batch)
        message = asyncio.run(_main())
    assert "closed before the service answered" in message
    assert len(settled_at) == 2000
    assert len(set(settled_at)) > 1, "the failure of 2 000 events was settled in one callback"


# ---------------------------------------------------------- no step reads the whole history


@pytest.mark.regression(fails_on=("1.4.6.post5",))
def test_no_step_of_a_first_sync_reads_more_than_a_step_of_items() -> None:
    """The plan of a first sync of 2 000 items (an empty view: every item is new) looks each
    item's wire id up a step of items at a time, so that a slice can end between any two steps
    (1.4.6.post5 checked all the new items against the view in one step: 2.6 ms at 10 000)."""
    lookups = 0
    wire_item_id = chat_sync.wire_item_id

    def _counted(item_id: str) -> str:
        nonlocal lookups
        lookups += 1
        return str(wire_item_id(item_id))

    ids = itertools.count()
    state = conversation.ConversationState(
        protocol="ga", images=True, new_event_id=lambda prefix: f"{prefix}{next(ids)}"
    )
    items: list[llm.ChatItem] = [
        llm.ChatMessage(id=f"m{k}", role="user", content=["x"]) for k in range(2000)
    ]
    per_step: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chat_sync, "wire_item_id", _counted)
        steps = state.sync_steps(llm.ChatContext(items=items), since=state.remote.revision)
        while True:
            lookups = 0
            try:
                next(steps)
            except StopIteration as done:
                plan = done.value
                break
            finally:
                per_step.append(lookups)
    assert sum(per_step) >= len(items)  # the counter sees the lookups
    assert max(per_step) <= chat_sync.STEP_ITEMS
    assert [i.id for ins in plan.insertions for i in ins.items] == [i.id for i in items]


# --------------------------------------------------------- cancellations nothing will consume


@pytest.mark.regression(fails_on=("1.4.6.post6", "1.4.6.post7"))
@pytest.mark.parametrize("cut", ["send fails", "session closes"])
def test_a_replay_cut_short_leaves_no_cancellation_behind(cut: str) -> None:
    """A replay whose send fails (or whose session closes) mid-way: the operation it had made
    and not sent is cancelled and nothing asks about it again, so the books keep nothing of it
    (they used to keep its id forever)."""

    async def _run() -> Any:
        io = _runner("preview", [])
        io.state = _settled_state("preview")
        closing = False
        io._closed = lambda: closing
        sent: list[Any] = []

        async def _send(event: Any) -> None:
            nonlocal closing
            if len(sent) == 3:
                if cut == "send fails":
                    raise ConnectionError("gone")
                closing = True
            sent.append(event)

        io.connection_lost()
        with contextlib.suppress(ConnectionError):
            await io.replay(_send)
        books = io.events
        result = (len(sent), len(books), sorted(books._cancelled), dict(books._detached))
        await io.aclose()
        return result

    count, pending, cancelled, detached = asyncio.run(_run())
    assert count in (3, 4) and cancelled == [] and detached == {}
    assert pending == 0  # the replay failed as a whole: the next connection replays again
