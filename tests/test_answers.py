"""What the service's answers settle: a retry after a lost answer, a reply asked for mid-sync.

A confirmation settles the operation that caused it, never an older one that timed out; and a
``generate_reply`` asked for while a sync is being sent reaches the service after that sync's
creates. See ``tests/test_regressions.py`` for how regression tests run on upstream.
"""

from __future__ import annotations

import asyncio

import pytest
from fake_azure import FakeAzureRealtimeServer, TextReply
from sync_helpers import (
    CAP_S,
    FAST_S,
    JsonDict,
    beta_session,
    cancel_and_wait,
    conversation_ctx,
    error_codes,
    ids,
    sync,
    text_ctx,
)

from livekit.agents import llm

# the plugin gives up on an unanswered sync after 5 s; this cap leaves room for that wait
LOST_ANSWER_CAP_S = 8.0
# items of the sync a reply is asked for during: long enough that sending it takes a while
SYNC_ITEMS = 1000


def _creates(item_id: str) -> object:
    return lambda ev: (
        ev.get("type") == "conversation.item.create"
        and ((ev.get("item") or {}).get("id") == item_id)
    )


@pytest.mark.regression(fails_on=("1.4.6.post2",), passes_on=("1.4.6",))
@pytest.mark.parametrize("fault", ["no_answer", "error_without_event_id"])
async def test_retry_after_a_lost_answer_settles_at_once(
    fake_azure: FakeAzureRealtimeServer, fault: str
) -> None:
    """A create whose answer is lost times out; the retry, confirmed at once, settles at once.

    The lost answer is a simulated fault: the service answers the create not at all, or with a
    ``server_error`` that names no client event. Both protocols.
    """
    ctx = text_ctx(("sys_1", "system", "TEST"), ("user_1", "user", "hello"))
    if fault == "no_answer":
        lost = fake_azure.lose_next(_creates("user_1"))  # type: ignore[arg-type]
    else:
        lost = fake_azure.reject_next(
            _creates("user_1"),  # type: ignore[arg-type]
            "server_error",
            "The server had an error while processing your request.",
            error_type="server_error",
            echo_event_id=False,
        )
    async with beta_session(fake_azure) as (sess, _):
        with pytest.raises(llm.RealtimeError):
            await asyncio.wait_for(sess.update_chat_ctx(ctx), LOST_ANSWER_CAP_S)
        assert lost.fired
        assert fake_azure.conversation_ids() == ["sys_1"]

        # the same context again: the service confirms the create at once
        try:
            elapsed = await sync(sess, ctx)
        except asyncio.TimeoutError:
            pytest.fail(
                f"the retry did not settle within {CAP_S} s; the service holds "
                f"{fake_azure.conversation_ids()}"
            )
        assert elapsed < FAST_S
        assert fake_azure.conversation_ids() == ["sys_1", "user_1"]
        assert ids(sess.chat_ctx.items) == ["sys_1", "user_1"]


@pytest.mark.regression(fails_on=("1.4.6.post2",), passes_on=("1.4.6",))
async def test_reply_asked_for_mid_sync_goes_out_after_the_sync(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """``generate_reply()`` during a 1 000-item sync reaches the service after all its creates.

    The reply is asked for once the service has the sync's first create; it must be answered on
    the whole conversation. Both protocols.
    """
    ctx = conversation_ctx(SYNC_ITEMS)
    fake_azure.script(TextReply("Answered on the whole conversation."))
    async with beta_session(fake_azure) as (sess, _):
        start = len(fake_azure.received)
        syncing = asyncio.create_task(sess.update_chat_ctx(ctx))
        try:
            await fake_azure.wait_for(
                lambda: fake_azure.received_count("conversation.item.create") >= 1
            )
            reply = sess.generate_reply()
            await asyncio.wait_for(asyncio.shield(syncing), 10.0)
            await asyncio.wait_for(reply, 5.0)
        finally:
            await cancel_and_wait(syncing)
        await fake_azure.wait_idle()

        events: list[JsonDict] = [r.event for r in fake_azure.received[start:]]
        types = [e.get("type") for e in events]
        creates = [i for i, t in enumerate(types) if t == "conversation.item.create"]
        assert len(creates) == SYNC_ITEMS
        assert types.count("response.create") == 1
        reply_at = types.index("response.create")
        assert reply_at > creates[-1], (
            f"response.create went out after {sum(i < reply_at for i in creates)} of the "
            f"{SYNC_ITEMS} creates"
        )
        assert error_codes(fake_azure) == []
        assert fake_azure.conversation_ids()[:SYNC_ITEMS] == ids(ctx.items)
