"""The session's view of the conversation across reconnects, and what a later drop keeps.

A dropped connection is replaced and the new one gets the conversation again (the replay).
``session.chat_ctx`` is what AgentActivity copies to sync (a tool's output, typed text, the
20-minute renewal): a copy made while the replay is being answered must not make the sync
delete what the replay re-creates, and the view should hold those items all along. What
happened on a connection whose replay was cut short by a second drop (a user turn, a reply)
belongs to the conversation the next replay restores. See ``tests/test_regressions.py`` for
how regression tests run on upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from fake_azure import FakeAzureRealtimeServer, ReceivedEvent, TextReply
from sync_helpers import (
    Session,
    audio_session_kwargs,
    beta_session,
    cancel_and_wait,
    conversation_ctx,
    creates_on,
    error_codes,
    ids,
    sync,
    wait_replayed,
    wait_until,
)

from livekit import rtc
from livekit.agents import llm

REPLAYED = 200
# seconds the fake takes per create while a replay is to be caught in progress
SLOW_CREATE_S = 0.005
NEW_ID = "item_new"


def _on_replay_create(
    server: FakeAzureRealtimeServer, connection: int, callback: Callable[[int], None]
) -> None:
    """Call ``callback(n)`` as the ``n``-th create (1-based) arrives on ``connection``."""
    count = 0

    def _observe(received: ReceivedEvent) -> None:
        nonlocal count
        if received.connection == connection and (
            received.event.get("type") == "conversation.item.create"
        ):
            count += 1
            callback(count)

    server.observe(_observe)


def _with_new_item(view: llm.ChatContext) -> llm.ChatContext:
    """AgentActivity's sync: the session's view, copied, plus one new item."""
    ctx = view.copy()
    ctx.add_message(role="user", content="typed during the reconnect", id=NEW_ID)
    return ctx


def _deletes_on(server: FakeAzureRealtimeServer, connection: int) -> list[str]:
    return [
        r.event["item_id"]
        for r in server.received
        if r.connection == connection and r.event.get("type") == "conversation.item.delete"
    ]


def _start_copy_sync(
    sess: Session, server: FakeAzureRealtimeServer, moment: str, syncs: list[asyncio.Task[None]]
) -> None:
    """Start AgentActivity's sync of a copy of the view at ``moment`` of the reconnect."""

    def _start() -> None:
        if not syncs:
            syncs.append(asyncio.create_task(sess.update_chat_ctx(_with_new_item(sess.chat_ctx))))

    if moment == "session_reconnected":
        sess.on("session_reconnected", lambda _: _start())
    else:  # the replay is half answered
        _on_replay_create(server, 1, lambda n: _start() if n == REPLAYED // 2 else None)


async def _drop_during_copy_sync(
    sess: Session, server: FakeAzureRealtimeServer, moment: str
) -> None:
    """Drop the connection, sync a copy of the view plus one item at ``moment`` (see
    :func:`_start_copy_sync`), and wait until the service has answered the replay and the sync."""
    syncs: list[asyncio.Task[None]] = []
    _start_copy_sync(sess, server, moment, syncs)
    server.create_delay = SLOW_CREATE_S
    await server.drop_connections()
    await wait_until(lambda: bool(syncs), timeout=5.0)
    try:
        await asyncio.wait_for(asyncio.shield(syncs[0]), 8.0)
    finally:
        await cancel_and_wait(syncs[0])
    # the sync settled: the service has answered everything sent before its last create
    await server.wait_for(lambda: creates_on(server, 1) >= REPLAYED + 1)


@pytest.mark.regression(fails_on=("1.4.6.post2",), passes_on=("1.4.6",))
@pytest.mark.parametrize("moment", ["session_reconnected", "mid_replay"])
async def test_sync_of_view_copy_during_replay_deletes_nothing(
    fake_azure: FakeAzureRealtimeServer, moment: str
) -> None:
    """A sync of ``session.chat_ctx.copy()`` plus one item, made during the replay, adds it.

    The copy is made at ``session_reconnected`` or while the replay is half answered. The
    service must end with the 200 replayed items (in their order) and the new one; the sync
    deletes nothing and sends one create after the replay. Both protocols.
    """
    ctx = conversation_ctx(REPLAYED)
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        assert fake_azure.conversation_ids() == ids(ctx.items)

        await _drop_during_copy_sync(sess, fake_azure, moment)

        deleted = _deletes_on(fake_azure, 1)
        assert deleted == [], f"the sync deleted {len(deleted)} replayed items"
        assert error_codes(fake_azure) == []
        held = fake_azure.conversation_ids()
        assert sorted(held) == sorted([*ids(ctx.items), NEW_ID])
        assert [i for i in held if i != NEW_ID] == ids(ctx.items)
        assert creates_on(fake_azure, 1) == REPLAYED + 1


@pytest.mark.regression(fails_on=("1.4.6.post2", "1.4.6"))
async def test_view_holds_replayed_items_throughout_the_replay(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """``session.chat_ctx`` holds every replayed item while the replay is being answered.

    It is sampled at ``session_reconnected`` and as each replay create reaches the service; a
    sync of its copy plus one item made at ``session_reconnected`` appends that item after the
    replayed ones. Both protocols.
    """
    ctx = conversation_ctx(REPLAYED)
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)

        samples: list[tuple[str, int]] = []

        def _sample(moment: str) -> None:
            samples.append((moment, len(sess.chat_ctx.items)))

        _on_replay_create(fake_azure, 1, lambda n: _sample(f"replay create {n}"))
        sess.on("session_reconnected", lambda _: _sample("session_reconnected"))
        await _drop_during_copy_sync(sess, fake_azure, "session_reconnected")

        short = [(moment, n) for moment, n in samples if n < REPLAYED]
        assert len(samples) > REPLAYED
        assert short == [], f"the view lost items at {len(short)} moments, first {short[:3]}"
        assert fake_azure.conversation_ids() == [*ids(ctx.items), NEW_ID]
        assert ids(sess.chat_ctx.items) == [*ids(ctx.items), NEW_ID]


@pytest.mark.regression(fails_on=("1.4.6.post2", "1.4.6"))
async def test_turn_on_connection_dropped_mid_replay_kept_by_next_replay(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A user turn and a reply made on a connection whose replay a second drop cut short are
    in the next replay and in ``session.chat_ctx``.

    The fake answers the replay slowly; while it is half answered, the service detects a user
    turn (its transcript delivered) and answers it, then the connection drops again. The third
    connection must hold the whole conversation: the 100 synced items, the turn (as its
    transcript) and the reply. Both protocols.
    """
    count = REPLAYED // 2
    ctx = conversation_ctx(count)
    async with beta_session(fake_azure, **audio_session_kwargs(fake_azure)) as (sess, _):
        transcripts: list[str] = []
        sess.on("input_audio_transcription_completed", lambda ev: transcripts.append(ev.item_id))
        await sync(sess, ctx)

        fake_azure.create_delay = 4 * SLOW_CREATE_S
        await fake_azure.drop_connections()
        await fake_azure.wait_connected(2)
        await fake_azure.wait_for(lambda: creates_on(fake_azure, 1) >= count // 5)
        fake_azure.script(TextReply("Answered on the interrupted connection."))
        turn_id = await fake_azure.user_audio_turn("spoken during the replay", respond=True)
        await fake_azure.wait_idle()
        reply_id = fake_azure.conversation_ids()[-1]
        await wait_until(lambda: turn_id in transcripts)
        await wait_until(lambda: sess.chat_ctx.get_by_id(reply_id) is not None)
        await asyncio.sleep(0.05)  # the reply's end reaches the client
        assert creates_on(fake_azure, 1) < count, "the replay was answered before the drop"

        fake_azure.create_delay = 0.0
        await fake_azure.drop_connections()
        await fake_azure.wait_connected(3)
        with contextlib.suppress(asyncio.TimeoutError):  # a short replay: the asserts tell
            await fake_azure.wait_for(lambda: creates_on(fake_azure, 2) >= count, timeout=3.0)
        await asyncio.sleep(0.2)  # the rest of the replay, if any

        held = fake_azure.conversation_ids()
        assert turn_id in held, "the user turn of the interrupted connection was not replayed"
        assert reply_id in held, "the reply of the interrupted connection was not replayed"
        assert held.index(turn_id) < held.index(reply_id)
        assert [i for i in held if i not in (turn_id, reply_id)] == ids(ctx.items), (
            f"the third connection holds {len(held)} items"
        )
        by_id = {i["id"]: i for i in fake_azure.conversation}
        assert by_id[turn_id]["content"] == [
            {"type": "input_text", "text": "spoken during the replay"}
        ]
        assert "Answered on the interrupted connection." in str(by_id[reply_id]["content"])
        view = ids(sess.chat_ctx.items)
        assert turn_id in view and reply_id in view
        assert error_codes(fake_azure) == []


async def test_audio_pushed_during_a_reconnect_goes_out_after_the_replay(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """Input audio pushed while the connection is replaced reaches the new connection only after
    every create of the replay: the service, which handles client events in order, cannot answer
    it (server VAD) on a half-restored conversation. Both protocols."""
    ctx = conversation_ctx(50)
    async with beta_session(fake_azure) as (sess, _):
        await sync(sess, ctx)
        await fake_azure.drop_connections()
        frame = rtc.AudioFrame(
            data=b"\x00\x00" * 2400, sample_rate=24000, num_channels=1, samples_per_channel=2400
        )
        for _ in range(5):
            sess.push_audio(frame)
        await wait_replayed(fake_azure, 50)
        await fake_azure.wait_for(
            lambda: "input_audio_buffer.append" in fake_azure.received_types(1), timeout=2.0
        )
        types = fake_azure.received_types(1)
        last_create = max(i for i, t in enumerate(types) if t == "conversation.item.create")
        first_audio = types.index("input_audio_buffer.append")
        assert types.count("conversation.item.create") == 50
        assert first_audio > last_create, types[: last_create + 2]
