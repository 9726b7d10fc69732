"""Order of the other items around a user audio turn that keeps its place on the service.

A user turn created by the service from audio is pinned: the client cannot re-create its audio,
so the turn stays where the service put it even when the local context holds it elsewhere (the
agent appends a late transcript at the end, or the user code moves items). The other items must
still reach the service in the local order. These tests check both the order and the audio. On
upstream a late transcript makes the sync delete the turn while its transcript is pending (the
second test bites there); the first passes there too, since upstream's diff happens to keep the
turn when items are moved around it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer, make_model, session_options

from livekit.agents import llm

SYNC_TIMEOUT = 3.0


def _system_ids(server: FakeAzureRealtimeServer) -> list[str]:
    return [i for i in server.conversation_ids() if i.startswith("sys_")]


def _content_types(server: FakeAzureRealtimeServer, item_id: str) -> list[str]:
    item = next(it for it in server.conversation if it["id"] == item_id)
    return [part["type"] for part in item.get("content", [])]


async def _session_with_transcripts(
    server: FakeAzureRealtimeServer, local: llm.ChatContext
) -> tuple[Any, Any]:
    """A session whose completed transcripts are appended to ``local`` as the agent does."""
    model = make_model(
        server, **session_options(server.protocol, language=None, turn_detection=None)
    )
    session = model.session()
    session.on(
        "input_audio_transcription_completed",
        lambda ev: local.items.append(
            llm.ChatMessage(role="user", content=[ev.transcript], id=ev.item_id)
        ),
    )
    await server.wait_received("session.update")
    return model, session


async def _sync(session: Any, local: llm.ChatContext) -> None:
    await asyncio.wait_for(session.update_chat_ctx(local), SYNC_TIMEOUT)


async def test_items_moved_around_a_user_turn_keep_local_order(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    local = llm.ChatContext.empty()
    model, session = await _session_with_transcripts(fake_azure, local)
    try:
        local.add_message(role="system", content="A", id="sys_a")
        await _sync(session, local)
        user_id = await fake_azure.user_audio_turn("hello", respond=False)
        await fake_azure.wait_for(lambda: local.get_by_id(user_id) is not None)
        local.add_message(role="system", content="B", id="sys_b")
        await _sync(session, local)
        assert fake_azure.conversation_ids() == ["sys_a", user_id, "sys_b"]

        user, sys_b, sys_a = local.items[1], local.items[2], local.items[0]
        local.items[:] = [user, sys_b, sys_a]
        await _sync(session, local)

        assert _system_ids(fake_azure) == ["sys_b", "sys_a"]
        assert _content_types(fake_azure, user_id) == ["input_audio"]
        assert not fake_azure.errors
    finally:
        await session.aclose()
        await model.aclose()


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_items_after_a_late_transcript_keep_local_order(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    local = llm.ChatContext.empty()
    model, session = await _session_with_transcripts(fake_azure, local)
    try:
        local.add_message(role="system", content="A", id="sys_a")
        await _sync(session, local)
        turn = asyncio.create_task(
            fake_azure.user_audio_turn("hello", transcript_delay=0.2, respond=False)
        )
        await fake_azure.wait_for(lambda: len(fake_azure.conversation) == 2)
        await fake_azure.wait_for(lambda: len(session.chat_ctx.items) == 2)

        # the transcript is pending: the local side does not have the turn yet
        local.add_message(role="system", content="late", id="sys_late")
        await _sync(session, local)
        user_id = await turn
        await fake_azure.wait_for(lambda: local.get_by_id(user_id) is not None)
        # the agent appended the turn after sys_late; the service holds it before
        local.add_message(role="system", content="B", id="sys_b")
        await _sync(session, local)

        ids = fake_azure.conversation_ids()
        assert _system_ids(fake_azure) == ["sys_a", "sys_late", "sys_b"]
        assert ids.index(user_id) < ids.index("sys_late")  # the turn came first
        assert _content_types(fake_azure, user_id) == ["input_audio"]
        assert not fake_azure.errors
    finally:
        await session.aclose()
        await model.aclose()
