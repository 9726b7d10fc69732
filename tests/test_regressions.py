"""Focused regression tests of the beta realtime chat context sync, one behaviour each.

Each test drives a real ``RealtimeSessionBeta`` (``RealtimeModel.with_azure``) against the fake
Azure server. Tests marked ``regression(fails_on=...)`` reproduce a bug of the named upstream
versions and must fail there by behaviour (``nox -s tests_upstream``): everything imported at
module level exists upstream too, and fork-only names are looked up with ``getattr`` fallbacks.
Calls that hang upstream (an unanswered future, a 5 s timeout) are capped with
``asyncio.wait_for`` so that the upstream runs fail in about a second. ``fails_on`` may also name
``"1.4.6.post1"``, the fork before the sync planner series (``nox -s tests_fork``); those tests
live in ``test_regressions_{edits,reconnect,sync}.py`` and are a strict xfail while that wheel is
installed (see ``sync_helpers.issue_9_xfail``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest
from fake_azure import AudioReply, FakeAzureRealtimeServer, make_model
from sync_helpers import (
    CAP_S,
    FAST_S,
    INSTRUCTIONS_ID,
    UPSTREAM,
    AgentNote,
    Session,
    assert_summary_under_short_id,
    audio_session_kwargs,
    beta_session,
    conversation_ctx,
    creates_on,
    error_codes,
    failing_sync,
    ids,
    sent_since,
    start_user_turn,
    stored_events,
    sync,
    text_ctx,
    touched_ids,
    user_turn,
    wait_replayed,
    wait_until,
)

from livekit.agents import llm

# --------------------------------------------------------------------------- what is sent


@pytest.mark.regression(fails_on=("1.4.3",))
async def test_handoff_and_config_update_never_sent(fake_azure: FakeAzureRealtimeServer) -> None:
    """The framework's bookkeeping items are not conversation: nothing typeless goes out."""
    ctx = llm.ChatContext.empty()
    ctx.items.append(llm.AgentHandoff(id="handoff_1", new_agent_id="greeter"))
    ctx.add_message(role="system", content="TEST", id="sys_1")
    ctx.items.append(llm.AgentConfigUpdate(id="config_1", instructions="be brief"))
    ctx.add_message(role="user", content="hello", id="user_1")
    async with beta_session(fake_azure) as (sess, errors):
        elapsed = await sync(sess, ctx)
        assert fake_azure.typeless_creates == 0
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ["sys_1", "user_1"]
        assert errors == []
        assert elapsed < FAST_S


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_unknown_item_type_skipped_with_warning(
    fake_azure: FakeAzureRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An item type the protocol cannot express is skipped, with a warning naming it."""
    ctx = text_ctx(("user_1", "user", "hello"))
    ctx.items.append(AgentNote(id="note_1"))  # type: ignore[arg-type]
    ctx.add_message(role="assistant", content="hi there", id="asst_1")
    async with beta_session(fake_azure) as (sess, _):
        with caplog.at_level(logging.WARNING):
            elapsed = await sync(sess, ctx)
        assert fake_azure.typeless_creates == 0
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ["user_1", "asst_1"]
        assert elapsed < FAST_S
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("note_1" in m and "agent_note" in m for m in warned), warned


@pytest.mark.regression(fails_on=("1.4.3",))
async def test_instructions_removed_system_messages_kept(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """The agent instructions go with session.update; the user's system messages are synced."""
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are a helpful agent.", id=INSTRUCTIONS_ID)
    ctx.add_message(role="system", content="TEST", id="sys_1")
    ctx.add_message(role="user", content="hello", id="user_1")
    ctx.add_message(role="developer", content="be terse", id="dev_1")
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ["sys_1", "user_1", "dev_1"]
        assert [i["role"] for i in fake_azure.conversation] == ["system", "user", "system"]


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_empty_message_not_sent(
    fake_azure: FakeAzureRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty message is skipped with a warning; the items after it are still synced."""
    ctx = text_ctx(("sys_1", "system", "TEST"))
    ctx.items.append(llm.ChatMessage(role="assistant", content=[], id="empty_1"))
    ctx.add_message(role="user", content="hello", id="user_1")
    ctx.items.append(llm.ChatMessage(role="user", content=[""], id="empty_2"))
    ctx.add_message(role="assistant", content="hi", id="asst_1")
    async with beta_session(fake_azure) as (sess, errors):
        with caplog.at_level(logging.WARNING):
            elapsed = await sync(sess, ctx)
        assert error_codes(fake_azure) == []
        assert errors == []
        assert fake_azure.conversation_ids() == ["sys_1", "user_1", "asst_1"]
        assert elapsed < FAST_S
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "empty_1" in warned and "empty_2" in warned


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_long_item_id_synced_once(fake_azure: FakeAzureRealtimeServer) -> None:
    """An id longer than the service's 32 characters is mapped; the next sync sends nothing."""
    long_id = "handoff_summary_" + "x" * 40
    ctx = text_ctx(
        ("sys_1", "system", "TEST"),
        (long_id, "system", "summary of the previous agent"),
        ("user_1", "user", "hello"),
    )
    async with beta_session(fake_azure) as (sess, _):
        elapsed = await sync(sess, ctx)
        assert error_codes(fake_azure) == []
        assert_summary_under_short_id(fake_azure)
        assert elapsed < FAST_S

        start = len(fake_azure.received)
        await sync(sess, ctx)
        assert sent_since(fake_azure, start) == []
        assert error_codes(fake_azure) == []


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_duplicate_ids_rejected_before_sending(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """Two items with one id cannot be synced: the call fails at once and sends nothing."""
    ctx = text_ctx(("sys_1", "system", "TEST"), ("dup_1", "user", "a"), ("dup_1", "user", "b"))
    async with beta_session(fake_azure) as (sess, _):
        start = len(fake_azure.received)
        _, elapsed = await failing_sync(sess, ctx)
        assert elapsed < FAST_S
        assert sent_since(fake_azure, start) == []
        assert error_codes(fake_azure) == []


# --------------------------------------------------------------------------- service errors


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_rejection_settles_at_once_without_cascade(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A rejected create fails the call quickly with the service's code, and only that item."""
    ctx = text_ctx(
        ("sys_1", "system", "TEST"),
        ("user_1", "user", "hello"),
        ("asst_1", "assistant", "hi"),
        ("user_2", "user", "bye"),
    )
    fake_azure.reject_next(
        lambda ev: (
            ev.get("type") == "conversation.item.create" and ev["item"].get("id") == "asst_1"
        ),
        "invalid_value",
        "Rejected by the test.",
        "item.content",
    )
    async with beta_session(fake_azure) as (sess, errors):
        exc, elapsed = await failing_sync(sess, ctx)
        assert elapsed < FAST_S
        assert getattr(exc, "code", None) == "invalid_value"
        assert "Rejected by the test." in str(exc)
        # only the rejected item is missing: no item chained on it failed as well
        assert error_codes(fake_azure) == ["invalid_value"]
        assert fake_azure.conversation_ids() == ["sys_1", "user_1", "user_2"]
        assert ids(sess.chat_ctx.items) == ["sys_1", "user_1", "user_2"]

        # the next sync creates what is missing, after what the service really holds
        start = len(fake_azure.received)
        await sync(sess, ctx)
        sent = sent_since(fake_azure, start)
        assert [(e["type"], e["item"]["id"], e["previous_item_id"]) for e in sent] == [
            ("conversation.item.create", "asst_1", "user_1")
        ]
        assert error_codes(fake_azure) == ["invalid_value"]
        assert fake_azure.conversation_ids() == ["sys_1", "user_1", "asst_1", "user_2"]
        # the failure went to the caller, not to the session's error event
        assert errors == []


def forget_on_server(server: FakeAzureRealtimeServer, item_id: str) -> None:
    """Make the service lose an item behind the client's back.

    The fake has no public control for this; its live connection's conversation store is
    reached directly (test-only workaround).
    """
    server._current().conversation.delete(item_id)


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_delete_of_missing_item_corrects_mirror(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A delete the service answers with "does not exist" drops the item from the mirror."""
    ctx = text_ctx(
        ("sys_1", "system", "TEST"), ("user_1", "user", "hello"), ("asst_1", "assistant", "hi")
    )
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        forget_on_server(fake_azure, "user_1")

        smaller = text_ctx(("sys_1", "system", "TEST"), ("asst_1", "assistant", "hi"))
        exc, elapsed = await failing_sync(sess, smaller)
        assert elapsed < FAST_S
        assert getattr(exc, "code", None) == "item_delete_invalid_item_id"
        assert ids(sess.chat_ctx.items) == ["sys_1", "asst_1"]

        # the mirror matches the service again: nothing left to do, nothing fails
        start = len(fake_azure.received)
        await sync(sess, smaller)
        assert sent_since(fake_azure, start) == []
        assert error_codes(fake_azure) == ["item_delete_invalid_item_id"]


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_closed_session_fails_at_once(fake_azure: FakeAzureRealtimeServer) -> None:
    """update_chat_ctx on a closed session raises immediately instead of timing out."""
    model = make_model(fake_azure)
    sess = model.session()
    try:
        await fake_azure.wait_connected()
    finally:
        await sess.aclose()
        await model.aclose()
    _, elapsed = await failing_sync(sess, text_ctx(("user_1", "user", "hello")))
    assert elapsed < FAST_S


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_generate_reply_rejected_fails_at_once(fake_azure: FakeAzureRealtimeServer) -> None:
    """A response.create the service rejects fails generate_reply now, not after 5 s."""
    fake_azure.reject_next(
        "response.create", "invalid_value", "Rejected by the test.", "response.modalities"
    )
    async with beta_session(fake_azure) as (sess, _):
        started = time.perf_counter()
        with pytest.raises(llm.RealtimeError) as info:
            await asyncio.wait_for(sess.generate_reply(), CAP_S)
        assert time.perf_counter() - started < FAST_S
        assert "Rejected by the test." in str(info.value)


# --------------------------------------------------------------------------- audio turns


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_audio_item_pending_transcript_not_deleted(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A user turn whose transcript is pending is not deleted by a sync that lacks it."""
    ctx = text_ctx(("sys_1", "system", "TEST"))
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        await sync(sess, ctx)
        user_id, turn = await start_user_turn(
            fake_azure, sess, "what time is it", transcript_delay=0.5, respond=False
        )
        try:
            ctx.add_message(role="system", content="TEST 2", id="sys_2")
            await sync(sess, ctx)  # the local side does not have the user turn yet
            assert not turn.done(), "the transcript arrived before the sync: nothing tested"
            assert error_codes(fake_azure) == []
            assert user_id in fake_azure.conversation_ids()
            # new items land after the user turn, as they happened
            assert fake_azure.conversation_ids() == ["sys_1", user_id, "sys_2"]
        finally:
            assert await turn == user_id
        assert fake_azure.conversation[1]["content"][0]["transcript"] == "what time is it"


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_audio_item_survives_without_transcription(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """With transcription off the local side never gets the turn; the service keeps it."""
    ctx = text_ctx(("sys_1", "system", "TEST"))
    async with beta_session(
        fake_azure, **audio_session_kwargs(fake_azure, transcription=False)
    ) as (sess, _):
        await sync(sess, ctx)
        user_id = await user_turn(fake_azure, sess, None, respond=False)
        for n in (2, 3):
            ctx.add_message(role="system", content=f"TEST {n}", id=f"sys_{n}")
            await sync(sess, ctx)
        assert error_codes(fake_azure) == []
        held = fake_azure.conversation
        assert ids(held) == ["sys_1", user_id, "sys_2", "sys_3"]
        assert held[1]["content"][0]["type"] == "input_audio"


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_late_transcript_leaves_server_items_alone(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A transcript that arrives after the reply puts the turn after it locally: no re-sync.

    That is how the agent records it (the user message is appended when its transcript
    arrives). The service's audio items must not be deleted or re-created as text for it.
    """
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        await sync(sess, text_ctx(("sys_1", "system", "TEST")))
        fake_azure.script(AudioReply("It is noon."))
        user_id = await user_turn(
            fake_azure, sess, "what time is it", transcript_delay=0.2, respond=True
        )
        await fake_azure.wait_idle()
        conv = fake_azure.conversation
        assert ids(conv)[:2] == ["sys_1", user_id]
        reply_id = conv[2]["id"]
        await wait_until(lambda: sess.chat_ctx.get_by_id(reply_id) is not None)
        await wait_until(lambda: "what time is it" in str(sess.chat_ctx.get_by_id(user_id)))

        # the agent's view: the reply, then the user's words, both as text
        local = text_ctx(
            ("sys_1", "system", "TEST"),
            (reply_id, "assistant", "It is noon."),
            (user_id, "user", "what time is it"),
        )
        local.add_message(role="system", content="TEST 2", id="sys_2")
        start = len(fake_azure.received)
        await sync(sess, local)
        sent = sent_since(fake_azure, start)
        assert touched_ids(sent) == {"sys_2"}, sent
        assert error_codes(fake_azure) == []
        user_item = next(i for i in fake_azure.conversation if i["id"] == user_id)
        assert [c["type"] for c in user_item["content"]] == ["input_audio"]
        assert user_item["content"][0]["transcript"] == "what time is it"


async def test_deliberately_removed_audio_item_is_deleted(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """The other side of the rule: a turn the local side held and then dropped is deleted."""
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        await sync(sess, text_ctx(("sys_1", "system", "TEST")))
        user_id = await user_turn(fake_azure, sess, "forget this", respond=False)
        await wait_until(lambda: "forget this" in str(sess.chat_ctx.get_by_id(user_id)))

        held = text_ctx(("sys_1", "system", "TEST"), (user_id, "user", "forget this"))
        await sync(sess, held)
        assert fake_azure.conversation_ids() == ["sys_1", user_id]

        await sync(sess, text_ctx(("sys_1", "system", "TEST")))
        assert fake_azure.conversation_ids() == ["sys_1"]
        assert ids(sess.chat_ctx.items) == ["sys_1"]
        assert error_codes(fake_azure) == []


# --------------------------------------------------------------------------- reconnect


def tool_ctx() -> llm.ChatContext:
    """System and user messages around a function call and its output."""
    ctx = text_ctx(("sys_1", "system", "TEST"), ("user_1", "user", "weather in Paris?"))
    ctx.items.append(
        llm.FunctionCall(id="call_item_1", call_id="call_1", name="get_weather", arguments="{}")
    )
    ctx.items.append(
        llm.FunctionCallOutput(
            id="output_1", call_id="call_1", name="get_weather", output="sunny", is_error=False
        )
    )
    ctx.add_message(role="system", content="TEST 2", id="sys_2")
    ctx.add_message(role="assistant", content="It is sunny.", id="asst_1")
    return ctx


TOOL_CTX_IDS = ["sys_1", "user_1", "call_item_1", "output_1", "sys_2", "asst_1"]
TOOL_CTX_TYPES = ["message", "message", "function_call", "function_call_output"] + ["message"] * 2


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
async def test_reconnect_replays_whole_conversation(
    fake_azure_factory: Any,
) -> None:
    """After a dropped connection the new one gets every item back, in order.

    The server here does not check that a function call output follows its call (whether
    Azure's preview does is unknown); ``test_function_call_output_follows_its_call`` covers
    that check.
    """
    server: FakeAzureRealtimeServer = await fake_azure_factory(
        enforce_function_call_output_call_id=False
    )
    ctx = tool_ctx()
    async with beta_session(server) as (sess, _):
        await sync(sess, ctx)
        assert server.conversation_ids() == TOOL_CTX_IDS

        assert await server.drop_connections() == 1
        await wait_replayed(server, len(TOOL_CTX_IDS))
        assert error_codes(server) == []
        assert server.conversation_ids() == TOOL_CTX_IDS
        assert [i["type"] for i in server.conversation] == TOOL_CTX_TYPES
        # the client's view of the new conversation follows the service's answers
        await wait_until(lambda: ids(sess.chat_ctx.items) == TOOL_CTX_IDS)


async def test_sync_during_reconnect_sends_only_what_is_missing(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A sync made after the client saw the drop and before it reconnected adds one item.

    The guard next to ``test_sync_on_session_reconnected_sends_only_what_is_missing``
    (tests/test_regressions_reconnect.py): 1.4.6 and the fork get this order right.
    """
    ctx = conversation_ctx(300)
    async with beta_session(fake_azure) as (sess, errors):
        await sync(sess, ctx)
        ctx.add_message(role="user", content="one more", id="item_new")
        await fake_azure.drop_connections()
        # the client saw the drop (a recoverable error) and reconnects 0.1 s later
        await wait_until(lambda: bool(errors))
        assert fake_azure.connections == 1
        await sync(sess, ctx)

        await wait_replayed(fake_azure, 301)
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ids(ctx.items)
        assert creates_on(fake_azure, 1) == 301


@pytest.mark.parametrize("when", ["sync", "replay"])
async def test_function_call_output_follows_its_call(
    fake_azure: FakeAzureRealtimeServer, when: str
) -> None:
    """A call and its output synced together, or replayed on reconnect, are both accepted.

    The fake server checks that a ``function_call_output`` names a call already in the
    conversation, as OpenAI documents. On upstream the ``replay`` case fails anyway (function
    calls are not replayed).
    """
    ctx = tool_ctx()
    async with beta_session(fake_azure) as (sess, _):
        if when == "sync":
            with contextlib.suppress(llm.RealtimeError, asyncio.TimeoutError):
                await sync(sess, ctx)
        else:
            # the call first, its output in a later sync: each is anchored on the item before
            partial = tool_ctx()
            partial.items[:] = partial.items[:3]
            await sync(sess, partial)
            await sync(sess, ctx)
            assert error_codes(fake_azure) == []
            assert await fake_azure.drop_connections() == 1
            await wait_replayed(fake_azure, len(TOOL_CTX_IDS))
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == TOOL_CTX_IDS


# --------------------------------------------------------------------------- bookkeeping


@pytest.mark.skipif(UPSTREAM, reason="the fork's bookkeeping has no upstream equivalent")
async def test_pending_maps_empty_after_each_call(fake_azure: FakeAzureRealtimeServer) -> None:
    """Nothing stays tracked once a call settled: success, rejection, missing item."""

    def pending(sess: Session) -> list[int]:
        events = sess._chat_sync.events
        return [stored_events(events), len(events._by_item), len(events._cancelled)]

    ctx = text_ctx(("sys_1", "system", "TEST"), ("user_1", "user", "hello"))
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        assert pending(sess) == [0, 0, 0]

        ctx.add_message(role="assistant", content="hi", id="asst_1")
        fake_azure.reject_next("conversation.item.create", "invalid_value", "Rejected.")
        await failing_sync(sess, ctx)
        assert pending(sess) == [0, 0, 0]

        forget_on_server(fake_azure, "user_1")
        await failing_sync(sess, text_ctx(("sys_1", "system", "TEST")))
        assert pending(sess) == [0, 0, 0]

        await sync(sess, ctx)
        assert pending(sess) == [0, 0, 0]
        assert fake_azure.conversation_ids() == ["sys_1", "user_1", "asst_1"]
