"""Regression tests of issue 9: how one sync fails, ends and warns.

A rejected item fails alone, even next to a user turn whose transcript is pending; closing the
session ends a sync under way at once; an item the protocol cannot carry is warned about once,
not at every sync (every agent switch). See ``tests/test_regressions.py`` for how regression
tests run on upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fake_azure import FakeAzureRealtimeServer, make_model
from sync_helpers import (
    CAP_S,
    FAST_S,
    FORK_BEFORE,
    AgentNote,
    audio_session_kwargs,
    beta_session,
    cancel_and_wait,
    conversation_ctx,
    error_codes,
    failing_sync,
    issue_9_xfail,
    sync,
    text_ctx,
    user_turn,
)

from livekit.agents import llm

pytestmark = issue_9_xfail()


@pytest.mark.regression(fails_on=("1.4.6", FORK_BEFORE))
async def test_rejection_next_to_pending_turn_does_not_cascade(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """Two new items around a pending user turn: rejecting the first leaves the second alone.

    Service ``[k1, k2, P]`` (P: a user turn whose transcript never arrives), local
    ``[k1, N1, P, N2, k2]``, as a copy of the session's view with items inserted.
    """
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        await sync(sess, text_ctx(("k1", "system", "K1"), ("k2", "system", "K2")))
        pending_id = await user_turn(fake_azure, sess, None, respond=False)
        pending = sess.chat_ctx.get_by_id(pending_id)
        assert pending is not None
        assert fake_azure.conversation_ids() == ["k1", "k2", pending_id]

        local = text_ctx(("k1", "system", "K1"), ("n1", "system", "N1"))
        local.items.append(pending)
        local.add_message(role="system", content="N2", id="n2")
        local.add_message(role="system", content="K2", id="k2")
        fake_azure.reject_next(
            lambda ev: (
                ev.get("type") == "conversation.item.create" and ev["item"].get("id") == "n1"
            ),
            "invalid_value",
            "Rejected by the test.",
            "item.content",
        )
        exc, elapsed = await failing_sync(sess, local)
        assert elapsed < FAST_S
        assert "n1" in str(exc) or getattr(exc, "item_id", None) == "n1"
        assert [getattr(e, "item_id", "n1") for e in getattr(exc, "errors", [exc])] == ["n1"]
        assert error_codes(fake_azure) == ["invalid_value"]
        conv = fake_azure.conversation_ids()
        assert "n2" in conv and "n1" not in conv
        assert conv.index("k1") < conv.index("n2") < conv.index("k2")


@pytest.mark.regression(fails_on=("1.4.6", FORK_BEFORE))
async def test_aclose_during_large_sync_fails_fast(fake_azure: FakeAzureRealtimeServer) -> None:
    """Closing the session while a 2 000-item sync is under way ends the sync within 1 s."""
    model = make_model(fake_azure)
    sess = model.session()
    task: asyncio.Task[None] | None = None
    try:
        await fake_azure.wait_connected()
        task = asyncio.create_task(sess.update_chat_ctx(conversation_ctx(2000)))
        await fake_azure.wait_received("conversation.item.create")
        assert not task.done()
        closed_at = time.perf_counter()
        await sess.aclose()
        with pytest.raises(llm.RealtimeError):
            await asyncio.wait_for(asyncio.shield(task), CAP_S)
        assert time.perf_counter() - closed_at < FAST_S
    finally:
        if task is not None:
            await cancel_and_wait(task)
        await sess.aclose()
        await model.aclose()


def image_only(item_id: str) -> llm.ChatItem:
    return llm.ChatMessage(
        role="user", content=[llm.ImageContent(image="https://example.com/cat.png")], id=item_id
    )


def agent_note(item_id: str) -> llm.ChatItem:
    return AgentNote(id=item_id)  # type: ignore[return-value]


@pytest.mark.regression(fails_on=("1.4.6", FORK_BEFORE))
@pytest.mark.parametrize("make_item", [image_only, agent_note], ids=["image_only", "unknown_type"])
async def test_skipped_item_warned_once(
    fake_azure: FakeAzureRealtimeServer,
    caplog: pytest.LogCaptureFixture,
    make_item: object,
) -> None:
    """An item the protocol cannot carry is warned about once, not at every agent switch."""
    ctx = text_ctx(("sys_1", "system", "TEST"))
    ctx.items.append(make_item("skip_1"))  # type: ignore[operator]

    def warned() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("livekit.plugins.openai") and "skip_1" in r.getMessage()
        ]

    async with beta_session(fake_azure) as (sess, _):
        with caplog.at_level(logging.WARNING, logger="livekit.plugins.openai"):
            first: list[str] = []
            for n in range(3):
                ctx.add_message(role="system", content=f"switch {n}", id=f"switch_{n}")
                await sync(sess, ctx)
                first = first or warned()
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ["sys_1", "switch_0", "switch_1", "switch_2"]
    # at the first sync (what it says is the planner's choice), never again
    assert first
    assert warned() == first
