"""The sync runner on both protocols through drops, renewals and close (found in a second review).

Syncs made during a drop or on ``session_reconnected`` honour edits and trims of turns whose
content was known; a ``generate_reply`` that failed is never sent later; a planned renewal lets
a sync in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer, TextReply
from sync_helpers import (
    agent_context,
    audio_session_kwargs,
    beta_session,
    conversation_ctx,
    creates_on,
    sync,
    user_turn,
    wait_until,
)

from livekit.agents import llm

pytestmark = pytest.mark.skipif(
    os.environ.get("FORK_UNDER_TEST") == "upstream",
    reason="the fork's sync runner and GA route; upstream has neither",
)


JsonDict = dict[str, Any]
CARD = "4111 1111 1111 1111"


def _server_text(server: FakeAzureRealtimeServer, item_id: str) -> str:
    for item in server.conversation:
        if item["id"] == item_id:
            return json.dumps(item)
    return ""


def _redacted(ctx: llm.ChatContext, item_id: str, text: str) -> llm.ChatContext:
    out = ctx.copy()
    idx = next(i for i, item in enumerate(out.items) if item.id == item_id)
    out.items[idx] = out.items[idx].model_copy(update={"content": [text]})
    return out


async def _known_user_turn(
    server: FakeAzureRealtimeServer, sess: Any, local: llm.ChatContext, transcript: str
) -> str:
    await server.wait_received("session.update")
    user_id = await user_turn(server, sess, transcript)
    await wait_until(lambda: local.get_by_id(user_id) is not None)
    await wait_until(lambda: transcript in str(sess.chat_ctx.get_by_id(user_id)))
    return user_id


async def test_redaction_synced_on_session_reconnected_reaches_the_service(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A user turn whose transcript is known (so it "follows your context": edited text is
    replaced) is redacted by a sync made on ``session_reconnected``.

    Sequence: user audio turn, transcript "... 4111 ..." delivered; the agent's context holds
    it; the connection drops; the ``session_reconnected`` handler syncs the context with the
    turn's text redacted. The replay re-creates the turn (origin "server") and bumps its
    ``known_at`` past the sync's ``since`` (captured before the replay is answered), so the
    planner classifies the turn as "content became known after the sync began": kept, and the
    local (redacted) copy is written into the mirror as ``held`` without sending anything. The
    service keeps the card number; a later sync sees no difference and never fixes it.
    """
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        local = agent_context(sess, ("sys_1", "system", "be brief"))
        await sync(sess, local)
        user_id = await _known_user_turn(fake_azure, sess, local, f"my card is {CARD}")
        redacted = _redacted(local, user_id, "my card is [redacted]")

        results: list[BaseException | None] = []

        async def _on_reconnected() -> None:
            try:
                await asyncio.wait_for(sess.update_chat_ctx(redacted), 5)
                results.append(None)
            except BaseException as e:  # noqa: BLE001
                results.append(e)

        tasks: list[asyncio.Task[None]] = []
        sess.on(
            "session_reconnected", lambda _ev: tasks.append(asyncio.create_task(_on_reconnected()))
        )
        await fake_azure.drop_connections()
        await fake_azure.wait_connected(2)
        await wait_until(lambda: bool(results), timeout=6)
        assert results == [None], results
        # the mirror claims the redaction happened
        assert CARD not in str(sess.chat_ctx.get_by_id(user_id))
        # a second sync with the same context: nothing left to do, per the mirror
        await sync(sess, redacted)
        await fake_azure.wait_idle()
        assert CARD not in _server_text(fake_azure, user_id), (
            "the service still holds the redacted text: " + _server_text(fake_azure, user_id)
        )


async def test_redaction_synced_during_the_drop_reaches_the_service(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """Same as above, with the sync made while the connection is down ("a sync made during
    the drop ... waits for the replay and sends only what is missing")."""
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        local = agent_context(sess, ("sys_1", "system", "be brief"))
        await sync(sess, local)
        user_id = await _known_user_turn(fake_azure, sess, local, f"my card is {CARD}")
        redacted = _redacted(local, user_id, "my card is [redacted]")

        await fake_azure.drop_connections()
        await wait_until(lambda: not sess._chat_sync.ready.is_set())  # the client saw the drop
        await asyncio.wait_for(sess.update_chat_ctx(redacted), 6)
        await fake_azure.wait_connected(2)
        await sync(sess, redacted)
        await fake_azure.wait_idle()
        assert CARD not in _server_text(fake_azure, user_id), (
            "the service still holds the redacted text: " + _server_text(fake_azure, user_id)
        )


async def test_trim_synced_during_the_drop_deletes_the_turn(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A known user turn dropped from the context by a sync made during the drop must be
    deleted (it "follows your context"); the replay's ``known_at`` bump makes that sync keep
    it instead."""
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        local = agent_context(sess, ("sys_1", "system", "be brief"))
        await sync(sess, local)
        user_id = await _known_user_turn(fake_azure, sess, local, "forget this turn")
        trimmed = local.copy()
        trimmed.items = [i for i in trimmed.items if i.id != user_id]

        await fake_azure.drop_connections()
        await wait_until(lambda: not sess._chat_sync.ready.is_set())
        await asyncio.wait_for(sess.update_chat_ctx(trimmed), 6)
        await fake_azure.wait_connected(2)
        await fake_azure.wait_idle()
        assert user_id not in fake_azure.conversation_ids(), (
            "the sync made during the drop kept a turn its context had dropped"
        )


async def test_generate_reply_failed_on_drop_is_not_sent_on_the_next_connection(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """``generate_reply`` queued behind a large sync when the connection drops.

    Its future fails ("the connection ... closed before the reply was created"), but the
    ``response.create`` stays in ``_msg_ch`` (only item events are cancelled via
    ``ChatSyncIO.cancelled``) and goes out on the next connection after the replay: the service
    answers, and the client emits the reply as a server-initiated generation. The caller was
    told there is no reply; the user hears one.
    """
    ctx = conversation_ctx(3000)
    async with beta_session(fake_azure) as (sess, _):
        await fake_azure.wait_received("session.update")
        generations: list[llm.GenerationCreatedEvent] = []
        sess.on("generation_created", generations.append)
        fake_azure.script(TextReply("a reply nobody asked for"))
        seen = 0

        def _tenth_create(conn: int, ev: JsonDict) -> bool:
            nonlocal seen
            if conn == 0 and ev.get("type") == "conversation.item.create":
                seen += 1
                return seen == 10
            return False

        fake_azure.drop_when(_tenth_create)
        sync_task = asyncio.create_task(sess.update_chat_ctx(ctx))
        await fake_azure.wait_received("conversation.item.create", 1)
        fut = sess.generate_reply()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(sync_task, 10)
        with pytest.raises(llm.RealtimeError):
            await asyncio.wait_for(fut, 6)
        assert "response.create" not in fake_azure.received_types(0), "precondition: not sent"
        await fake_azure.wait_connected(2)
        await asyncio.sleep(1.0)
        await fake_azure.wait_idle()
        assert "response.create" not in fake_azure.received_types(1), (
            f"generate_reply failed, yet its response.create was sent on the new connection; "
            f"generations seen: {[(g.response_id, g.user_initiated) for g in generations]}"
        )


async def test_generate_reply_after_aclose_fails_at_once(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """``generate_reply`` on a closed session: the event is dropped (ChanClosed is suppressed)
    but the future waits the full 5 s timeout instead of failing at once, unlike
    ``update_chat_ctx`` on a closed session (< 1 s)."""
    async with beta_session(fake_azure) as (sess, _):
        await sess.aclose()
        loop = asyncio.get_running_loop()
        started = loop.time()
        fut = sess.generate_reply()
        with pytest.raises(llm.RealtimeError):
            await asyncio.wait_for(fut, 7)
        assert loop.time() - started < 1.0, f"took {loop.time() - started:.1f}s"


async def test_planned_session_renewal_does_not_fail_a_sync_in_flight(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """``max_session_duration`` renewal is a reconnect the client chooses; it waits for the
    current generation (``_current_generation._done_fut``) but not for the item events of a
    sync in flight: ``connection_closed()`` fails them and ``update_chat_ctx`` raises, although
    nothing went wrong on the network. A sync made during the renewal would have waited."""
    ctx = conversation_ctx(3000)
    async with beta_session(fake_azure, max_session_duration=0.4) as (sess, _):
        await fake_azure.wait_received("session.update")
        await asyncio.sleep(0.25)
        await asyncio.wait_for(sess.update_chat_ctx(ctx), 10)


@pytest.mark.regression(fails_on=("1.4.6.post3",))
async def test_aclose_during_a_replay_stops_sending_it(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """``aclose()`` while a 1 000-item replay is being sent after a drop: the rest of it is
    not sent (it would go to a connection about to close). Both protocols. (The fork with the
    state machine sent the whole replay first.)"""
    count = 1000
    async with beta_session(fake_azure) as (sess, _):
        # a guard only (a loaded machine may take seconds for the first sync)
        await asyncio.wait_for(sess.update_chat_ctx(conversation_ctx(count)), 60)
        await fake_azure.drop_connections()
        await fake_azure.wait_connected(2)
        await fake_azure.wait_for(lambda: creates_on(fake_azure, 1) >= 20, timeout=10.0)
        await sess.aclose()
        await asyncio.sleep(0.2)  # anything still queued reaches the server
        assert creates_on(fake_azure, 1) < count, "the whole replay was sent after aclose()"
