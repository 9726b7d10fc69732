"""Syncs and replies around a drop or a lost answer (the review of issue 14's state machine).

A sync queued just before the client sees a drop is planned again on the next connection; a
replayed item whose create got no answer is created again by the next sync; a reply asked for
behind a sync whose answer was lost is still answered. Both protocols.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer, TextReply
from sync_helpers import (
    LANDED,
    beta_session,
    cancel_and_wait,
    conversation_ctx,
    ids,
    sync,
    text_ctx,
    wait_until,
)

from livekit.agents import llm

# big enough that the drop lands while the sync's creates are still queued
QUEUED = 300


def _creates(item_id: str) -> Any:
    return lambda ev: (
        ev.get("type") == "conversation.item.create"
        and ((ev.get("item") or {}).get("id") == item_id)
    )


@pytest.mark.regression(fails_on=(LANDED,), passes_on=("1.4.6",))
async def test_sync_queued_as_the_connection_drops_lands_on_the_next_one(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A copy of ``chat_ctx`` plus one item, synced right after the service dropped the socket
    (the client has not seen it yet): the sync succeeds on the next connection, and the service
    and the view hold the new item. Both protocols. (The fork as landed failed the sync with
    "closed before it answered" and lost the item.)"""
    ctx = conversation_ctx(QUEUED)
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        await fake_azure.drop_connections()
        local = sess.chat_ctx.copy()
        local.add_message(role="user", content="one more", id="item_new")
        await asyncio.wait_for(sess.update_chat_ctx(local), 8.0)
        await fake_azure.wait_for(lambda: len(fake_azure.conversation) > QUEUED, timeout=3.0)
        assert fake_azure.conversation_ids() == ids(local.items)
        assert sess.chat_ctx.get_by_id("item_new") is not None


# pins the state machine's replay view (1.4.6.post2 re-created the item too: no regression mark)
async def test_replayed_item_without_answer_is_created_by_the_next_sync(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """The replay's create of one item gets no answer: once the replay's wait ends, a sync of
    ``chat_ctx`` plus one item creates that item again, and the service holds the whole
    context. Both protocols."""
    ctx = conversation_ctx(20)
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        fake_azure.lose_next(_creates("item_10"))
        await fake_azure.drop_connections()
        await fake_azure.wait_connected(2)
        await wait_until(lambda: sess._chat_sync.ready.is_set(), 8.0)
        local = sess.chat_ctx.copy()
        local.add_message(role="user", content="x", id="x")
        await asyncio.wait_for(sess.update_chat_ctx(local), 6.0)
        assert fake_azure.conversation_ids() == ids(local.items)


# pins the held-back requests' timer (1.4.6.post2 held nothing back: no regression mark)
async def test_reply_behind_a_sync_with_a_lost_answer_is_answered(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """``generate_reply()`` asked for behind a sync whose create got no answer waits for it
    (5 s) and is answered: its own 5 s start once its request goes out. Both protocols."""
    async with beta_session(fake_azure) as (sess, _):
        fake_azure.lose_next(_creates("a"))
        first = asyncio.create_task(sess.update_chat_ctx(text_ctx(("a", "user", "A"))))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(
            sess.update_chat_ctx(text_ctx(("a", "user", "A"), ("b", "user", "B")))
        )
        await asyncio.sleep(0)
        fake_azure.script(TextReply("hi"))
        try:
            created = await asyncio.wait_for(sess.generate_reply(), 12.0)
            assert isinstance(created, llm.GenerationCreatedEvent)
        finally:
            for task in (first, second):
                await cancel_and_wait(task)
