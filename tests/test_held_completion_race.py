"""A server event about an item a sync completes, landing between two steps of that sync.

A sync whose context holds the text of a server-made item of unknown content (a voice turn
whose transcript is pending, a reply not ended yet) records that text as the item's content
(``SyncPlan.held``). Unsliced, the service's transcript or reply end lands before the sync (the
item is then known, the sync leaves it) or after it (its content replaces the context's): the
view holds the service's content either way. Sliced, the same event may land between the step
that planned the item as held and the step that completes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from livekit.agents import llm

conversation = pytest.importorskip(
    "livekit.plugins.openai.realtime.conversation",
    reason="the fork's modules are not in this build (pristine upstream)",
)

from state_helpers import text_ctx, unknown_server_items  # noqa: E402

N = 100  # past a few steps of the held loop (``STEP_ITEMS`` each)
TARGET = "s90"  # completed in a later step than the one that plans it


def _state(role: str) -> tuple[Any, llm.ChatContext]:
    """N server-made items of unknown content, and a context that holds text for each."""
    state = conversation.ConversationState(protocol="realtime", images=False)
    unknown_server_items(state, N, role)
    return state, text_ctx(role, "local", range(N))


def _transcript(state: Any) -> None:
    state.transcript(TARGET, "the service's transcript", 0.9)


def _reply_end(state: Any) -> None:
    state.reply_done(TARGET, "the service's transcript", audio=True)


EVENTS: dict[str, tuple[str, Callable[[Any], None]]] = {
    "transcript": ("user", _transcript),
    "reply end": ("assistant", _reply_end),
}


def _sync_with(state: Any, ctx: llm.ChatContext, event: Callable[[], Any], at: int | None) -> int:
    """Sync ``ctx`` on ``state`` with ``event()`` before step ``at`` (None: after the sync);
    the sync's steps."""
    steps = state.sync_steps(ctx, since=state.remote.revision)
    n = 0
    while True:
        if n == at:
            event()
        try:
            next(steps)
        except StopIteration:
            break
        n += 1
    if at is None:
        event()
    return n


def _run(role: str, event: Callable[[Any], None], at: int | None) -> tuple[int, str]:
    """The sync's steps, and the target's text after the sync with ``event`` landing before
    step ``at`` (None: after the sync)."""
    state, ctx = _state(role)
    n = _sync_with(state, ctx, lambda: event(state), at)
    remote = state.remote.get(TARGET)
    assert remote is not None
    return n, remote.item.text_content or ""


@pytest.mark.regression(fails_on=("1.4.6.post8",))
@pytest.mark.parametrize("kind", list(EVENTS))
def test_an_event_between_two_steps_leaves_the_content_an_unsliced_sync_leaves(kind: str) -> None:
    """Wherever the event lands, the item holds the service's content, as unsliced."""
    role, event = EVENTS[kind]
    steps, after = _run(role, event, None)
    _, before = _run(role, event, 0)
    assert after == before == "the service's transcript"
    differs = [at for at in range(steps + 1) if _run(role, event, at)[1] != after]
    assert differs == [], f"{len(differs)} of {steps + 1} places leave the context's text"


def _spoken_replies() -> tuple[Any, llm.ChatContext]:
    """N spoken replies of the service whose end has not arrived, the context holds their text."""
    state, ctx = _state("assistant")
    for r in state.remote:
        r.audio = True
    return state, ctx


def _replay(state: Any) -> tuple[int, int]:
    """The connection drops and the view is replayed: the creates sent, the items lost."""
    item_events = pytest.importorskip("livekit.plugins.openai.realtime.item_events")
    state.connection_lost()
    creates = [op for op in state.replay_steps(item_events.Batch()) if op is not None]
    lost = [o for o in state.outcomes if o.kind == "lost"]
    return len(creates), len(lost[0].item_ids) if lost else 0


def _sync_with_replay_at(at: int | None) -> tuple[int, tuple[int, int]]:
    state, ctx = _spoken_replies()
    replayed: list[tuple[int, int]] = []
    n = _sync_with(state, ctx, lambda: replayed.append(_replay(state)), at)
    assert len(replayed) == 1
    return n, replayed[0]


def test_a_replay_between_two_steps_of_a_sync_replays_what_an_unsliced_order_does() -> None:
    """A drop lands while a sync takes the context's text as the content of N spoken replies:
    unsliced, the replay finds all of them known (the sync ran first: N creates) or none (the
    replay ran first: all lost); never a part of them lost (f816817 yields mid-completions)."""
    steps, after = _sync_with_replay_at(None)
    _, before = _sync_with_replay_at(0)
    assert (after, before) == ((N, 0), (0, N))
    mixed = {
        at: replayed
        for at in range(steps + 1)
        if (replayed := _sync_with_replay_at(at)[1]) not in (after, before)
    }
    assert mixed == {}
