"""GA event orders the GA session must handle like the preview ones (found in a second review):
an item reported only by ``conversation.item.done``, an xAI-style subclass hook, Azure's old event
names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_azure import (
    AudioReply,
    FakeAzureRealtimeServer,
    FunctionCallReply,
    GaProtocol,
    make_model,
)
from sync_helpers import agent_context, audio_session_kwargs, sync, voice_turn

from livekit.agents import llm
from livekit.plugins.openai.realtime.realtime_model import RealtimeSession

pytestmark = pytest.mark.skipif(
    os.environ.get("FORK_UNDER_TEST") == "upstream",
    reason="the fork's sync runner and GA route; upstream has neither",
)


JsonDict = dict[str, Any]


class DoneOnlyGa(GaProtocol):
    """GA layer announcing items only with ``conversation.item.done`` (no ``.added``): the
    case patch 0009 says it covers ("``conversation.item.done`` for an item never reported as
    added")."""

    def translate(self, event_type: str, fields: JsonDict) -> list[tuple[str, JsonDict]]:
        if event_type == "conversation.item.added":
            return []
        return super().translate(event_type, fields)


class XaiLikeSession(RealtimeSession):
    """The hook livekit-plugins-xai 1.4.6 overrides, verbatim: server-side xAI tools (names
    not in the session's tools) are not passed on."""

    def _handle_function_call(self, item: Any) -> None:
        if not self._tools.get_function_tool(item.name):
            return
        super()._handle_function_call(item)


@contextlib.asynccontextmanager
async def ga_server(**options: Any) -> AsyncIterator[FakeAzureRealtimeServer]:
    options.setdefault("protocol", "ga")
    server = FakeAzureRealtimeServer(**options)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@contextlib.asynccontextmanager
async def ga_session(
    server: FakeAzureRealtimeServer, session_cls: type[RealtimeSession] | None = None, **kw: Any
) -> AsyncIterator[RealtimeSession]:
    model = make_model(server, **kw)
    if session_cls is None:
        sess = model.session()
    else:
        sess = session_cls(model)
        model._sessions.add(sess)
    try:
        await server.wait_connected()
        await server.wait_received("session.update")
        yield sess
    finally:
        await sess.aclose()
        await model.aclose()


async def _function_call_turn(
    server: FakeAzureRealtimeServer, sess: RealtimeSession, name: str
) -> str:
    server.script(FunctionCallReply(name, {"q": "weather in Paris"}))
    await asyncio.wait_for(sess.generate_reply(), 3)
    await server.wait_idle()
    await asyncio.sleep(0.1)
    (call,) = [i for i in server.conversation if i["type"] == "function_call"]
    return str(call["id"])


async def _assert_call_followed(
    server: FakeAzureRealtimeServer, sess: RealtimeSession, call_id: str
) -> None:
    remote = sess._chat_sync.remote.get(call_id)
    assert remote is not None
    assert remote.known_at is not None, (
        f"the finished function call `{call_id}` is still 'content unknown' in the mirror "
        f"({remote.item!r}): it is never deleted and never replayed"
    )


async def test_ga_function_call_reported_only_by_item_done_is_known() -> None:
    """GA order: ``response.output_item.done`` (the runner's ``function_call_done`` finds no
    item and does nothing), then ``conversation.item.done`` (adds the call as a server item of
    unknown content). Messages are rescued by ``response.done`` (``reply_pending``); function
    calls are not, so the call stays unknown for good: a trim never deletes it, a reconnect
    drops it ("cannot replay ... no transcript") while its output is replayed."""
    async with ga_server(protocol=DoneOnlyGa()) as server, ga_session(server) as sess:
        call_id = await _function_call_turn(server, sess, "lookup")
        await _assert_call_followed(server, sess, call_id)


async def test_ga_function_call_only_done_trimmed_is_deleted() -> None:
    """The same call, dropped from the context (a trim): it "follows your context" once
    complete, so it must be deleted; it is kept as content-unknown instead. (A sync whose
    context holds the call rescues it: the planner's ``held`` marks it known.)"""
    async with ga_server(protocol=DoneOnlyGa()) as server, ga_session(server) as sess:
        call_id = await _function_call_turn(server, sess, "lookup")
        await sync(sess, llm.ChatContext.empty())
        await server.wait_idle()
        assert call_id not in server.conversation_ids(), "trimmed function call not deleted"


async def test_xai_style_hook_keeps_the_mirror_fed() -> None:
    """``function_call_done`` sits inside ``_handle_function_call``, which subclasses override
    (livekit-plugins-xai 1.4.6 returns early for its server-side tools). The preview session
    calls the runner from ``_handle_response_output_item_done`` itself. On GA a subclass hook
    thus decides whether the mirror learns the call's arguments: the call stays unknown."""
    async with ga_server() as server, ga_session(server, XaiLikeSession) as sess:
        call_id = await _function_call_turn(server, sess, "web_search")
        await _assert_call_followed(server, sess, call_id)


async def test_xai_style_trimmed_server_tool_call_is_deleted() -> None:
    async with ga_server() as server, ga_session(server, XaiLikeSession) as sess:
        call_id = await _function_call_turn(server, sess, "web_search")
        await sync(sess, llm.ChatContext.empty())
        await server.wait_idle()
        assert call_id not in server.conversation_ids(), "trimmed server tool call not deleted"


# ----------------------------------------------------------------- tried, holds (for the record)


async def test_ga_legacy_names_voice_turn_redaction_and_trim() -> None:
    """Azure's old-style names on GA (``conversation.item.created`` without ``.done``,
    ``response.audio_transcript.delta``...): a voice turn, then the user turn trimmed and the
    reply's text edited."""
    async with ga_server(legacy_event_names=True) as server:
        kw = audio_session_kwargs(server)
        async with ga_session(server, **kw) as sess:
            local = agent_context(sess, ("sys_1", "system", "be brief"))
            await sync(sess, local)
            user_id, reply_id = await voice_turn(
                server, sess, local, "my card is 4111", AudioReply("your card 4111 is noted")
            )
            edited = local.copy()
            edited.items = [i for i in edited.items if i.id != user_id]
            idx = next(i for i, it in enumerate(edited.items) if it.id == reply_id)
            edited.items[idx] = edited.items[idx].model_copy(update={"content": ["noted"]})
            await sync(sess, edited)
            await server.wait_idle()
            assert "4111" not in json.dumps(server.conversation), server.conversation
