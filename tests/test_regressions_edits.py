"""Regression tests of issue 9: trims, edits and tool calls of the agent's context reach the service.

The agent (AgentActivity) appends voice turns, replies and tool calls to its own context
without syncing; ``update_chat_ctx`` later receives that context (every agent switch). Pristine
1.4.6 gets these right; the fork before the planner series (``1.4.6.post1``) does not: it
only deletes a server-made audio item that an earlier sync held, never re-creates one whose
text changed, and re-creates a server function call whose arguments it never recorded.
See ``tests/test_regressions.py`` for how regression tests run on upstream.
"""

from __future__ import annotations

from typing import Literal

import pytest
from fake_azure import AudioReply, FakeAzureRealtimeServer, FunctionCallReply
from sync_helpers import (
    FORK_BEFORE,
    agent_context,
    assistant_text_type,
    audio_session_kwargs,
    beta_session,
    error_codes,
    issue_9_xfail,
    sent_since,
    sync,
    voice_turn,
    wait_until,
)

from livekit.agents import llm

pytestmark = issue_9_xfail()


@pytest.mark.regression(fails_on=(FORK_BEFORE,), passes_on=("1.4.6",))
async def test_trim_and_clear_remove_voice_turns(fake_azure: FakeAzureRealtimeServer) -> None:
    """Dropping the first voice turn from the context deletes it; an empty context deletes all."""
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        local = agent_context(sess)
        user_1, reply_1 = await voice_turn(
            fake_azure, sess, local, "what time is it", AudioReply("It is noon.")
        )
        user_2, reply_2 = await voice_turn(
            fake_azure, sess, local, "and the date", AudioReply("It is Monday.")
        )
        assert fake_azure.conversation_ids() == [user_1, reply_1, user_2, reply_2]
        assert [i.id for i in local.items] == [user_1, reply_1, user_2, reply_2]

        await sync(sess, local.copy().truncate(max_items=2))
        assert fake_azure.conversation_ids() == [user_2, reply_2]

        await sync(sess, llm.ChatContext.empty())
        assert fake_azure.conversation_ids() == []
        assert error_codes(fake_azure) == []


@pytest.mark.regression(fails_on=(FORK_BEFORE,), passes_on=("1.4.6",))
@pytest.mark.parametrize("role", ["user", "assistant"])
async def test_edited_voice_turn_replaced_on_server(
    fake_azure: FakeAzureRealtimeServer, role: Literal["user", "assistant"]
) -> None:
    """A transcribed turn or a reply whose text the agent redacts holds the new text remotely."""
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        local = agent_context(sess, ("sys_1", "system", "TEST"))
        await sync(sess, local)
        user_id, reply_id = await voice_turn(
            fake_azure,
            sess,
            local,
            "call me on 555 0123",
            AudioReply("I will call 555 0123."),
        )
        await sync(sess, local)  # an agent switch: nothing to change
        assert fake_azure.conversation_ids() == ["sys_1", user_id, reply_id]

        index = 1 if role == "user" else 2
        redacted = "call me on [redacted]" if role == "user" else "I will call [redacted]."
        edited = local.copy()
        edited.items[index] = llm.ChatMessage(
            role=role,
            content=[redacted],
            id=edited.items[index].id,
        )
        await sync(sess, edited)

        conv = fake_azure.conversation
        assert error_codes(fake_azure) == []
        assert len(conv) == 3
        assert [i["id"] for i in conv if i is not conv[index]] == [
            i.id for i in edited.items if i is not edited.items[index]
        ]
        # the audio item made way for a text one at its position (same id, or a mapped one)
        part_type = "input_text" if role == "user" else assistant_text_type(fake_azure)
        assert conv[index]["role"] == role
        assert conv[index]["content"] == [{"type": part_type, "text": redacted}]


@pytest.mark.regression(fails_on=(FORK_BEFORE,), passes_on=("1.4.6",))
async def test_server_function_call_not_recreated(fake_azure: FakeAzureRealtimeServer) -> None:
    """A tool call the service made is left alone when the agent syncs its own copy of it.

    The agent appends the call with its arguments, syncs the output on top of the session's
    view (``AgentActivity`` after a tool execution), then syncs its whole context at the next
    agent switch: only the output is ever created.
    """
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        local = agent_context(sess, ("sys_1", "system", "TEST"))
        await sync(sess, local)
        call = FunctionCallReply("get_weather", {"city": "Paris"}, call_id="call_1")
        user_id, call_item_id = await voice_turn(fake_azure, sess, local, "weather in Paris?", call)
        server_call = fake_azure.conversation[-1]
        assert server_call["type"] == "function_call"
        await wait_until(lambda: len(local.items) == 2)

        local.items.append(
            llm.FunctionCall(
                id=call_item_id,
                call_id="call_1",
                name="get_weather",
                arguments=server_call["arguments"],
            )
        )
        output = llm.FunctionCallOutput(
            id="output_1", call_id="call_1", name="get_weather", output="sunny", is_error=False
        )
        tool_sync = sess.chat_ctx.copy()
        tool_sync.items.append(output)
        start = len(fake_azure.received)
        await sync(sess, tool_sync)
        local.items.append(output)
        await sync(sess, local)  # the next agent switch

        sent = sent_since(fake_azure, start)
        assert [(e["type"], e["item"]["id"]) for e in sent if "item" in e] == [
            ("conversation.item.create", "output_1")
        ]
        assert [e for e in sent if "item" not in e] == []  # no delete
        assert fake_azure.conversation_ids() == ["sys_1", user_id, call_item_id, "output_1"]
        assert error_codes(fake_azure) == []
