"""A sync planned again after a drop, or asked for again after a timeout, on both protocols.

``update_chat_ctx`` plans a sync again on the next connection when the connection drops before
the service answered it, and a caller may retry a sync that timed out. The retry must treat the
conversation as the first attempt would have: what became known after the sync began is still
unknown to its context, and an answer to the timed-out attempt does not fail the retry.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer
from sync_helpers import (
    audio_session_kwargs,
    beta_session,
    cancel_and_wait,
    conversation_ctx,
    ids,
    sync,
    wait_until,
)

from livekit.agents import llm


def _creates(item_id: str) -> Any:
    return lambda ev: (
        ev.get("type") == "conversation.item.create"
        and ((ev.get("item") or {}).get("id") == item_id)
    )


@pytest.mark.regression(fails_on=("1.4.6.post6", "1.4.6"))
async def test_a_voice_turn_transcribed_mid_sync_survives_the_sync_planned_again_after_a_drop(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """The agent's context (no voice turn: its transcript is pending) plus one message is
    synced; the create gets no answer, the transcript arrives, then the connection drops. The
    sync is planned again after the replay, which re-creates the turn as text: the turn's content
    became known after the sync began, so the context could not hold it and the retry keeps it.
    1.4.6.post6 counted the replayed turn as the client's own item and deleted it; 1.4.6 fails it
    as well."""
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        await fake_azure.wait_received("session.update")
        ctx = conversation_ctx(6)
        await sync(sess, ctx)
        voice = await fake_azure.user_audio_turn(None, respond=False)  # transcript pending
        await wait_until(lambda: sess.chat_ctx.get_by_id(voice) is not None)
        local = ctx.copy()  # the agent's context: the turn joins it with its transcript
        local.add_message(role="user", content="typed meanwhile", id="typed")
        fake_azure.lose_next(_creates("typed"))
        pending = asyncio.create_task(sess.update_chat_ctx(local))
        try:
            await fake_azure.wait_for(
                lambda: fake_azure.received_count("conversation.item.create") > len(ctx.items)
            )
            await fake_azure.transcribe(voice, "hello there")
            await wait_until(lambda: "hello there" in str(sess.chat_ctx.get_by_id(voice)))
            await fake_azure.drop_connections()
            await asyncio.wait_for(pending, 8.0)
        finally:
            await cancel_and_wait(pending)
        await fake_azure.wait_idle()
        assert voice in fake_azure.conversation_ids()
        assert "typed" in fake_azure.conversation_ids()
        assert [e.code for e in fake_azure.errors] == []
        assert sess.chat_ctx.get_by_id(voice) is not None


@pytest.mark.regression(fails_on=("1.4.6.post6",))
async def test_a_late_answer_to_a_timed_out_create_does_not_fail_the_retry(
    fake_azure: FakeAzureRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync's create gets its answer only after the caller gave up; the caller retries, and
    the late answer lands while the retry is still queueing its events (before it reached the
    item): the retry does not create the item a second time (the service refuses a duplicate
    id) and succeeds, and the service holds the context in order. 1.4.6.post6 sent the duplicate
    and failed the retry."""
    chat_sync_io = pytest.importorskip("livekit.plugins.openai.realtime.chat_sync_io")
    monkeypatch.setattr(chat_sync_io, "CHAT_CTX_SYNC_TIMEOUT", 0.3)
    async with beta_session(fake_azure) as (sess, _):
        ctx = conversation_ctx(4)
        await sync(sess, ctx)
        local = ctx.copy()
        local.add_message(role="user", content="slow", id="slow")
        held = fake_azure.lose_next(_creates("slow"))
        with pytest.raises(llm.RealtimeError, match="timed out"):
            await asyncio.wait_for(sess.update_chat_ctx(local), 3.0)
        assert held.fired
        retry_ctx = local.copy()
        for n in range(40):
            retry_ctx.add_message(role="user", content=f"retry {n}", id=f"retry_{n}")
        # the late answer lands once the retry has queued its first event (the item's create is
        # queued last: the run goes out last item first)
        queued: list[Any] = []
        queue_event = sess._chat_sync._queue_event

        def _queue(event: Any) -> None:
            queued.append(event)
            queue_event(event)

        monkeypatch.setattr(sess._chat_sync, "_queue_event", _queue)
        slicer_type = chat_sync_io.LoopSlicer

        class _LateAnswerSlicer(slicer_type):  # type: ignore[misc,valid-type]
            async def tick(self) -> None:
                if queued and not held_answered:
                    held_answered.append(True)
                    await fake_azure.answer_late(held)
                    await wait_until(lambda: sess.chat_ctx.get_by_id("slow") is not None)
                await super().tick()

        held_answered: list[bool] = []
        monkeypatch.setattr(chat_sync_io, "LoopSlicer", _LateAnswerSlicer)
        await asyncio.wait_for(sess.update_chat_ctx(retry_ctx), 3.0)
        assert held_answered
        await fake_azure.wait_idle()
        assert [e.code for e in fake_azure.errors] == []
        assert fake_azure.conversation_ids() == ids(retry_ctx.items)
