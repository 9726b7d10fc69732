"""A drop and its replay while a sync is still planning (before it queued its completions).

Unsliced, the replay comes before the sync (the spoken replies whose end has not arrived are
lost, the sync creates them again from the context) or after it (the sync took the context's
text as their content, the replay re-creates them): the view ends with every item either way.
``ChatSyncIO`` plans a sync again when its plan has events and the connection dropped meanwhile;
a plan without events is not planned again.
"""

from __future__ import annotations

from typing import Any

import pytest

from livekit.agents import llm

conversation = pytest.importorskip(
    "livekit.plugins.openai.realtime.conversation",
    reason="the fork's modules are not in this build (pristine upstream)",
)
item_events = pytest.importorskip("livekit.plugins.openai.realtime.item_events")

N = 100  # a few steps of planning (``STEP_ITEMS`` each)


def _spoken_replies() -> tuple[Any, llm.ChatContext]:
    """N spoken replies of the service whose end has not arrived; the context holds their text."""
    state = conversation.ConversationState(protocol="realtime", images=False)
    prev = None
    for k in range(N):
        item_id = f"s{k}"
        state.item_added(
            item_id,
            prev,
            lambda item_id=item_id: llm.ChatMessage(id=item_id, role="assistant", content=[]),
        )
        prev = item_id
    for r in state.remote:
        r.audio = True
    local: list[llm.ChatItem] = [
        llm.ChatMessage(id=f"s{k}", role="assistant", content=[f"local {k}"]) for k in range(N)
    ]
    return state, llm.ChatContext(items=local)


def _run(at: int | None) -> tuple[int, Any, int]:
    """The sync's steps, its plan and the items in the view, with a replay before step ``at``
    (None: after the sync)."""
    state, ctx = _spoken_replies()
    steps = state.sync_steps(ctx, since=state.remote.revision)
    n = 0

    def replay() -> None:
        state.connection_lost()
        for _ in state.replay_steps(item_events.Batch()):
            pass

    while True:
        if n == at:
            replay()
        try:
            next(steps)
        except StopIteration as done:
            plan = done.value
            break
        n += 1
    if at is None:
        replay()
    return n, plan, len(list(state.remote))


def test_a_replay_while_a_sync_plans_leaves_no_item_of_the_context_out() -> None:
    """Wherever the replay lands, a plan without events (not planned again) leaves the view
    holding every item of the context, as either unsliced order does."""
    steps, plan, view = _run(None)
    assert view == N
    _, plan, view = _run(0)
    assert plan.creates == N
    left_out = {
        at: view
        for at in range(steps + 1)
        if not (result := _run(at))[1] and (view := result[2]) < N
    }
    assert left_out == {}
