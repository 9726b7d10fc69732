"""Unit tests of livekit.plugins.openai.realtime.conversation (the sans-IO state)."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

from livekit.agents import llm
from livekit.plugins.openai.realtime.conversation import ConversationState

T = TypeVar("T")


def _run(steps: Generator[None, None, T]) -> T:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def test_a_sync_plans_the_creates_of_a_new_context() -> None:
    state = ConversationState(protocol="test realtime")
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="hello", id="item_a")
    ctx.add_message(role="assistant", content="hi", id="item_b")
    plan = _run(state.sync_steps(ctx, since=0))
    assert [i.id for ins in plan.insertions for i in ins.items] == ["item_a", "item_b"]


def test_items_the_service_reports_are_in_the_view() -> None:
    state = ConversationState(protocol="test realtime")
    message = llm.ChatMessage(role="user", content=["hello"], id="item_a")
    state.item_added("item_a", None, lambda: message)
    assert [item.id for item in state.remote.to_chat_ctx().items] == ["item_a"]
    state.item_deleted("item_a")
    assert state.remote.to_chat_ctx().items == []
