"""What the client knows of an item's content, and what it sends of it.

A voice turn whose transcript is empty is still the service's audio item: a sync of a context
that holds it (as the session's own view or as the agent appends it) keeps it. A user image is
sent where the protocol has an image part (GA ``input_image``) and skipped where it has none
(the preview), the rest of the message sent. See ``tests/test_regressions.py`` for how
regression tests run on upstream.
"""

from __future__ import annotations

import pytest
from fake_azure import FakeAzureRealtimeServer
from sync_helpers import (
    agent_context,
    audio_session_kwargs,
    beta_session,
    error_codes,
    sent_since,
    sync,
    text_ctx,
    wait_until,
)

from livekit.agents import llm

# a 1x1 PNG
PNG_DATA_URL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.mark.regression(fails_on=("1.4.6.post2",), passes_on=("1.4.6",))
@pytest.mark.parametrize("source", ["session_view", "agent_context"])
async def test_voice_turn_with_empty_transcript_kept_by_next_sync(
    fake_azure: FakeAzureRealtimeServer, source: str
) -> None:
    """A voice turn transcribed as ``""`` (noise) stays on the service through the next sync.

    The sync is of ``session.chat_ctx.copy()`` plus one new item (AgentActivity's path when a
    tool returns or text arrives), or of the agent's context, to which AgentActivity appended
    ``ChatMessage(role="user", id=item_id, content=[""])``. Both protocols.
    """
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        local = agent_context(sess, ("sys_1", "system", "TEST"))
        await sync(sess, local)
        await fake_azure.wait_received("session.update")
        turn_id = await fake_azure.user_audio_turn("", respond=False)
        await wait_until(lambda: local.get_by_id(turn_id) is not None)
        await wait_until(lambda: sess.chat_ctx.get_by_id(turn_id) is not None)
        assert fake_azure.conversation_ids() == ["sys_1", turn_id]

        ctx = sess.chat_ctx.copy() if source == "session_view" else local
        ctx.add_message(role="user", content="typed text", id="user_1")
        start = len(fake_azure.received)
        await sync(sess, ctx)

        sent = sent_since(fake_azure, start)
        deleted = [e["item_id"] for e in sent if e["type"] == "conversation.item.delete"]
        assert deleted == [], f"the sync deleted the voice turn {turn_id}: {deleted}"
        assert [e["type"] for e in sent] == ["conversation.item.create"], sent
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ["sys_1", turn_id, "user_1"]
        assert fake_azure.conversation[1]["content"][0]["type"] == "input_audio"
        assert sess.chat_ctx.get_by_id(turn_id) is not None


def _image_message() -> llm.ChatContext:
    ctx = text_ctx(("sys_1", "system", "TEST"))
    ctx.add_message(
        role="user",
        content=["what is in this picture?", llm.ImageContent(image=PNG_DATA_URL)],
        id="user_img",
    )
    ctx.add_message(role="assistant", content="a dot", id="asst_1")
    return ctx


@pytest.mark.regression(fails_on=("1.4.6.post2:ga",), passes_on=("1.4.6:ga",))
@pytest.mark.protocols("ga")
async def test_user_image_sent_as_input_image_on_ga(fake_azure: FakeAzureRealtimeServer) -> None:
    """GA: a user message's image goes out as an ``input_image`` part next to its text."""
    ctx = _image_message()
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ["sys_1", "user_img", "asst_1"]
        parts = fake_azure.conversation[1]["content"]
        assert {"type": "input_text", "text": "what is in this picture?"} in parts
        images = [part for part in parts if part["type"] == "input_image"]
        assert len(images) == 1, parts
        assert images[0]["image_url"].startswith("data:image/png;base64,")


@pytest.mark.protocols("preview")
async def test_user_image_skipped_on_preview(fake_azure: FakeAzureRealtimeServer) -> None:
    """Preview: the protocol has no image part; the image is skipped, the text sent."""
    ctx = _image_message()
    async with beta_session(fake_azure) as (sess, errors):
        await sync(sess, ctx)
        assert error_codes(fake_azure) == []
        assert errors == []
        assert fake_azure.conversation_ids() == ["sys_1", "user_img", "asst_1"]
        assert fake_azure.conversation[1]["content"] == [
            {"type": "input_text", "text": "what is in this picture?"}
        ]
