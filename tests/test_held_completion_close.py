"""A sync given up mid-completion, closed only once its frame is freed, while a later sync completes.

``ChatSyncIO.update_chat_ctx`` runs a sync's steps through ``drain_sliced``, which does not
close them when the task is cancelled: the generator stays suspended until the
``CancelledError``'s traceback is freed, then its finaliser throws ``GeneratorExit`` in, at
whatever step a later sync has reached. Unsliced, a sync cannot be cancelled mid-completion and
a later sync completes every item it holds.
"""

from __future__ import annotations

from typing import Any

import pytest

from livekit.agents import llm

conversation = pytest.importorskip(
    "livekit.plugins.openai.realtime.conversation",
    reason="the fork's modules are not in this build (pristine upstream)",
)

from state_helpers import text_ctx, unknown_server_items  # noqa: E402

N = 100  # a few steps of the held loop (``STEP_ITEMS`` each)


def _state() -> Any:
    """N server-made voice turns whose transcripts have not arrived."""
    state = conversation.ConversationState(protocol="realtime", images=False)
    unknown_server_items(state, N, "user")
    return state


def _ctx(tag: str) -> llm.ChatContext:
    return text_ctx("user", tag, range(N))


def _unknown(state: Any) -> int:
    return sum(1 for r in state.remote if r.known_at is None)


def _until_completing(steps: Any, state: Any) -> None:
    """Step ``steps`` until it has completed some of the items still unknown, not all."""
    before = _unknown(state)
    while _unknown(state) == before:
        next(steps)
    assert 0 < _unknown(state) < before


def test_closing_a_given_up_sync_leaves_a_later_syncs_completions() -> None:
    """Sync A is given up mid-completion; sync B holds the rest; A's generator is finalised
    while B completes: B still completes every item it holds."""
    state = _state()
    first = state.sync_steps(_ctx("A"), since=state.remote.revision)
    _until_completing(first, state)
    later = state.sync_steps(_ctx("B"), since=state.remote.revision)
    _until_completing(later, state)
    first.close()  # the finaliser, once the cancelled task's traceback is freed
    for _ in later:
        pass
    assert _unknown(state) == 0


def test_a_replay_after_a_sync_given_up_mid_completion_replays_what_an_unsliced_order_does() -> (
    None
):
    """N spoken replies whose end has not arrived; the sync taking the context's text as their
    content is given up (closed) mid-completion, then the connection drops. Unsliced, a sync is
    given up before its completions or after them: the replay loses all N or re-creates all N,
    never a part of them."""
    item_events = pytest.importorskip("livekit.plugins.openai.realtime.item_events")
    state = _state()
    for r in state.remote:
        r.audio = True
        r.item.role = "assistant"
    steps = state.sync_steps(_ctx("A"), since=state.remote.revision)
    _until_completing(steps, state)
    steps.close()
    state.connection_lost()
    creates = [op for op in state.replay_steps(item_events.Batch()) if op is not None]
    lost = [o for o in state.outcomes if o.kind == "lost"]
    outcome = (len(creates), len(lost[0].item_ids) if lost else 0)
    assert outcome in ((N, 0), (0, N))
