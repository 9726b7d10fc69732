"""aclose() when the service stops reading the socket, on both protocols.

The fake accepts the connection, then stops reading it: the session's writes fill the TCP
buffers and block. ``aclose()`` must return within a bound anyway, and a sync and a reply still
waiting for the service must fail with an error rather than wait with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
from typing import Any

import aiohttp
import pytest
from fake_azure import FakeAzureRealtimeServer, make_model
from sync_helpers import cancel_and_wait, until_send_loop_blocked

from livekit.agents import llm

# 1 MiB of silence per event; far more events than a loopback connection's buffers hold
AUDIO = base64.b64encode(bytes(3 << 18)).decode()
EVENTS = 64
# aclose()'s wait for the main task, shortened (the fork's ACLOSE_TIMEOUT)
ACLOSE_WAIT_S = 0.2
# what "returns" means: a few times the shortened wait; a hang fails here instead of sticking
ACLOSE_BOUND_S = 3.0


def _shorten_aclose_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from livekit.plugins.openai.realtime import chat_sync_io
    except ImportError:  # pristine upstream: no such module, and no bound to shorten
        return
    monkeypatch.setattr(chat_sync_io, "ACLOSE_TIMEOUT", ACLOSE_WAIT_S, raising=False)


@pytest.mark.regression(fails_on=("1.4.6", "1.4.6.post7"))
async def test_aclose_returns_and_fails_pending_calls_when_the_service_stops_reading(
    fake_azure: FakeAzureRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service stops reading; the session queues far more audio than the buffers hold, then
    a sync and a reply behind it. aclose() returns within the bound (1.4.6 and 1.4.6.post7 wait
    for the blocked send loop forever), the sync fails with an error, and so does the reply."""
    _shorten_aclose_wait(monkeypatch)
    model = make_model(fake_azure)
    sess = model.session()
    queued: list[Any] = []
    sess.on("openai_client_event_queued", queued.append)
    sync: asyncio.Task[None] | None = None
    reply: asyncio.Future[llm.GenerationCreatedEvent] | None = None
    try:
        await fake_azure.wait_received("session.update")
        fake_azure.stop_reading()
        for _ in range(EVENTS):
            sess.send_event({"type": "input_audio_buffer.append", "audio": AUDIO})
        await until_send_loop_blocked(queued)
        assert len(queued) < EVENTS  # the send loop is blocked in a write

        ctx = sess.chat_ctx.copy()
        ctx.add_message(role="user", content="are you there?", id="msg_there")
        sync = asyncio.create_task(sess.update_chat_ctx(ctx))
        reply = sess.generate_reply()
        await asyncio.sleep(0.1)
        assert not sync.done() and not reply.done()  # both wait behind the audio

        await asyncio.wait_for(sess.aclose(), ACLOSE_BOUND_S)
        with pytest.raises(llm.RealtimeError):
            await asyncio.wait_for(sync, 1.0)
        with pytest.raises(llm.RealtimeError):
            await asyncio.wait_for(reply, 1.0)
    finally:
        # the service goes away: whatever a hung close left waiting on the connection ends
        await fake_azure.drop_connections()
        if sync is not None:
            await cancel_and_wait(sync)
        if reply is not None and not reply.done():
            reply.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(sess.aclose(), 5.0)
        await model.aclose()


def _open_client_websockets() -> list[aiohttp.ClientWebSocketResponse]:
    gc.collect()
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, aiohttp.ClientWebSocketResponse) and not o.closed
    ]


@pytest.mark.regression(fails_on=("1.4.6", "1.4.6.post7"))
async def test_aclose_during_a_stalled_replay_closes_its_websocket(
    fake_azure: FakeAzureRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service stops reading while the session replays its conversation on a new
    connection. aclose() returns, and leaves no websocket open (the replay's connection is not
    yet handed to the receive loop, whose cleanup closes it; 1.4.6 and 1.4.6.post7 never
    return)."""
    _shorten_aclose_wait(monkeypatch)
    model = make_model(fake_azure)
    sess = model.session()
    queued: list[Any] = []
    try:
        await fake_azure.wait_received("session.update")
        text = "x" * 100_000  # 80 such items are far more than the buffers hold
        ctx = llm.ChatContext.empty()
        for n in range(80):
            ctx.add_message(role="user" if n % 2 == 0 else "assistant", content=text, id=f"i{n}")
        await asyncio.wait_for(sess.update_chat_ctx(ctx), 20)

        def _stall_the_second_connection(ev: Any) -> None:
            # the fake numbers connections from 0; the replay follows the session.update
            if ev.connection == 1 and ev.event.get("type") == "session.update":
                fake_azure.stop_reading()

        fake_azure.observe(_stall_the_second_connection)
        reconnected: list[Any] = []
        sess.on("session_reconnected", reconnected.append)
        sess.on("openai_client_event_queued", queued.append)
        await fake_azure.drop_connections()
        await fake_azure.wait_connected(2, timeout=10)
        await until_send_loop_blocked(queued)
        assert not reconnected  # the replay is blocked in a write

        await asyncio.wait_for(sess.aclose(), ACLOSE_BOUND_S)
        assert _open_client_websockets() == []
    finally:
        await fake_azure.drop_connections()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(sess.aclose(), 5.0)
        await model.aclose()
