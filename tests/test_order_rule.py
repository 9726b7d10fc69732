"""The order rule: after a sync, every local item but a user voice turn stands on the service in
the local relative order, server-made replies included.

An assistant reply whose text the client knows (a text reply, an audio reply whose transcript is
done, a reply the client replayed as text after a reconnect) is ordered like any other item.
Among the plans that restore the order, re-creating a client text item is preferred to
re-creating the reply (an audio reply keeps its audio). See ``tests/test_regressions.py`` for how
regression tests run on upstream.
"""

from __future__ import annotations

import asyncio

import pytest
from fake_azure import AudioReply, FakeAzureRealtimeServer, TextReply
from sync_helpers import (
    beta_session,
    error_codes,
    sent_since,
    sync,
    text_ctx,
    touched_ids,
    wait_replayed,
    wait_until,
)

from livekit.agents import llm

REPLY_TEXT = "A reply the client knows."


# 1.4.6 applies the order by re-creating R: right for a text item, not for a spoken reply
_TEXT_REPLY = pytest.mark.regression(fails_on=("1.4.6.post2",), passes_on=("1.4.6",))
_SPOKEN_REPLY = pytest.mark.regression(fails_on=("1.4.6.post2", "1.4.6"))


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param("text", marks=_TEXT_REPLY),
        pytest.param("audio", marks=_SPOKEN_REPLY),
        pytest.param("replayed_as_text", marks=_TEXT_REPLY),
    ],
)
async def test_client_item_moved_before_a_known_reply_is_moved(
    fake_azure: FakeAzureRealtimeServer, reply: str
) -> None:
    """Service ``[k, R, c]``, local ``[k, c, R]``: the service ends as ``[k, c, R]``.

    R is a reply the service made (text; audio with its transcript done; or either, replayed as
    text after a reconnect). One item is re-created; for an audio reply that is c, so that the
    reply keeps its audio. Both protocols. (1.4.6 applies the order but re-creates R, losing a
    spoken reply's audio.)
    """
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, text_ctx(("k", "user", "first question")))
        fake_azure.script(
            AudioReply(REPLY_TEXT, chunks=3) if reply == "audio" else TextReply(REPLY_TEXT)
        )
        await asyncio.wait_for(sess.generate_reply(), 5.0)
        await fake_azure.wait_idle()
        r_id = fake_azure.conversation_ids()[-1]
        await wait_until(lambda: REPLY_TEXT in str(sess.chat_ctx.get_by_id(r_id)))

        def local(*order: str) -> llm.ChatContext:
            items = {
                "k": llm.ChatMessage(role="user", content=["first question"], id="k"),
                "R": llm.ChatMessage(role="assistant", content=[REPLY_TEXT], id=r_id),
                "c": llm.ChatMessage(role="user", content=["second question"], id="c"),
            }
            return llm.ChatContext(items=[items[name] for name in order])

        await sync(sess, local("k", "R", "c"))
        assert fake_azure.conversation_ids() == ["k", r_id, "c"]
        if reply == "replayed_as_text":
            await fake_azure.drop_connections()
            await wait_replayed(fake_azure, 3)
            await wait_until(lambda: len(sess.chat_ctx.items) == 3)
            assert fake_azure.conversation_ids() == ["k", r_id, "c"]

        start = len(fake_azure.received)
        await sync(sess, local("k", "c", "R"))
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids() == ["k", "c", r_id], "the local order was not applied"
        touched = touched_ids(sent_since(fake_azure, start))
        if reply == "audio":
            assert touched == {"c"}, "the audio reply was re-created where moving c suffices"
        else:
            # R is a text item like c: re-creating either one is the fewest (upstream's pick)
            assert touched in ({"c"}, {r_id}), touched
        content_types = [part["type"] for part in fake_azure.conversation[2]["content"]]
        if reply == "audio":
            assert content_types == ["output_audio" if fake_azure.protocol == "ga" else "audio"], (
                "the audio reply was re-created"
            )
        assert [i.id for i in sess.chat_ctx.items] == ["k", "c", r_id]
