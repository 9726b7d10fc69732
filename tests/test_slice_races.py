"""Server events that land between two slices of the plugin's work, on both protocols.

The sans-IO core pauses between steps, so the service's events may arrive in the middle of a
step-wise build. Each test holds one pause open until the event is in, which makes the race
deterministic (a real pause opens the same window, only shorter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer, TextReply
from sync_helpers import audio_session_kwargs, beta_session, conversation_ctx, sync, wait_until

chat_sync_io = pytest.importorskip(
    "livekit.plugins.openai.realtime.chat_sync_io",
    reason="the fork's modules are not in this build (pristine upstream)",
)
loop_slicer = pytest.importorskip("livekit.plugins.openai.realtime.loop_slicer")


@pytest.mark.regression(fails_on=("1.4.6.post5",))
async def test_a_transcript_during_a_text_truncation_keeps_the_voice_turn(
    fake_azure: FakeAzureRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text-only truncation builds its local context in steps; a pending voice turn's
    transcript that arrives between two of them counts as unknown for that sync (it came after
    the sync began): the turn is kept, not replaced by the empty copy the build read before
    (which the service refuses as an empty message). 1.4.6.post5 took the sync's start after
    the build and replaced it."""
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        await fake_azure.wait_received("session.update")
        voice = await fake_azure.user_audio_turn(None, respond=False)  # transcript pending
        await wait_until(lambda: sess.chat_ctx.get_by_id(voice) is not None)
        ctx = sess.chat_ctx.copy()
        ctx.items.extend(conversation_ctx(40).items)
        await sync(sess, ctx)
        fake_azure.script(TextReply("a long text reply the user did not read to the end"))
        await asyncio.wait_for(sess.generate_reply(), 5)
        await fake_azure.wait_idle()
        reply = fake_azure.conversation_ids()[-1]
        await wait_until(lambda: "long text" in str(sess.chat_ctx.get_by_id(reply)))

        drain_sliced = loop_slicer.drain_sliced

        async def _transcript_mid_build(
            steps: Generator[None, None, Any], slicer: Any = None
        ) -> Any:
            if getattr(steps, "__name__", "") == "text_truncation_steps":
                next(steps)  # a step of the build ran
                await fake_azure.transcribe(voice, "wait, stop")
                await wait_until(lambda: "stop" in str(sess.chat_ctx.get_by_id(voice)))
            return await drain_sliced(steps, slicer)

        monkeypatch.setattr(chat_sync_io, "drain_sliced", _transcript_mid_build)
        sess.truncate(
            message_id=reply, modalities=["text"], audio_end_ms=0, audio_transcript="a long text"
        )
        await wait_until(lambda: not sess._chat_sync._tasks, 5)
        await fake_azure.wait_idle()
        assert voice in fake_azure.conversation_ids()
        assert [e.code for e in fake_azure.errors] == []
        held = next(i for i in fake_azure.conversation if i["id"] == reply)
        assert "a long text" in str(held) and "to the end" not in str(held)
