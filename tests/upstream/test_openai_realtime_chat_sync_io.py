"""Unit tests of livekit.plugins.openai.realtime.chat_sync_io (the asyncio layer).

The session is faked by what ``ChatSyncIO`` is given: a list for its queue of client events,
operations written as themselves, and a flag for ``closed``. No socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from livekit.agents import llm
from livekit.plugins.openai.realtime import chat_sync_io
from livekit.plugins.openai.realtime.chat_sync import ChatContextSyncError
from livekit.plugins.openai.realtime.chat_sync_io import (
    ChatSyncIO,
    decode_server_event,
    item_event_writer,
)
from livekit.plugins.openai.realtime.conversation import CreateItem, DeleteItem, Operation


class _Session:
    def __init__(self) -> None:
        self.queued: list[Any] = []
        self.closed = False
        self.io = ChatSyncIO(
            protocol="test realtime",
            images=False,
            warned=set(),
            queue_event=self.queued.append,
            wire_event=lambda op: op,
            closed=lambda: self.closed,
        )

    def answer(self, op: Operation) -> None:
        """The service does what ``op`` asks."""
        if isinstance(op, CreateItem):
            anchor = None if op.previous_item_id == "root" else op.previous_item_id
            self.io.item_created(op.item.id, anchor, lambda: op.item)
        else:
            self.io.item_deleted(op.item_id)


def _ctx(*ids: str) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    for item_id in ids:
        ctx.add_message(role="user", content=f"text of {item_id}", id=item_id)
    return ctx


async def _until_queued(session: _Session, count: int) -> None:
    for _ in range(1000):
        if len(session.queued) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(session.queued)} events queued, expected {count}")


async def test_a_sync_waits_for_the_connection_and_returns_once_answered() -> None:
    session = _Session()
    sync = asyncio.ensure_future(session.io.update_chat_ctx(_ctx("a", "b")))
    await asyncio.sleep(0)
    assert session.queued == []  # not connected yet
    session.io.connected()
    await _until_queued(session, 2)
    for op in session.queued:
        session.answer(op)
    await sync
    assert [r.item.id for r in session.io.remote] == ["a", "b"]


async def test_a_rejection_settles_the_sync_at_once() -> None:
    session = _Session()
    session.io.connected()
    sync = asyncio.ensure_future(session.io.update_chat_ctx(_ctx("a")))
    await _until_queued(session, 1)
    (op,) = session.queued
    assert session.io.handle_error(op.event_id, "item_create_bad", "bad item", None) is True
    with pytest.raises(ChatContextSyncError) as raised:
        await sync
    assert raised.value.code == "item_create_bad" and raised.value.item_id == "a"


async def test_a_closing_session_stops_the_syncs() -> None:
    session = _Session()
    waiting = asyncio.ensure_future(session.io.update_chat_ctx(_ctx("a")))
    await asyncio.sleep(0)
    session.closed = True
    session.io.close()
    with pytest.raises(ChatContextSyncError, match="closed"):
        await waiting
    with pytest.raises(ChatContextSyncError, match="closed realtime session"):
        await session.io.update_chat_ctx(_ctx("b"))
    assert session.queued == [] and session.io.closing.is_set()


async def test_a_failed_connection_fails_the_syncs_with_its_cause() -> None:
    session = _Session()
    session.io.failed(RuntimeError("HTTP 401"))
    with pytest.raises(ChatContextSyncError, match="HTTP 401"):
        await session.io.update_chat_ctx(_ctx("a"))


async def test_a_reply_request_waits_for_the_syncs_asked_for_before_it() -> None:
    session = _Session()
    sync = asyncio.ensure_future(session.io.update_chat_ctx(_ctx("a")))
    await asyncio.sleep(0)  # the sync is asked for, and waits for the connection
    session.io.queue({"type": "response.create", "event_id": "reply_1"})
    session.io.queue({"type": "input_audio_buffer.append"})  # not ordered: at once
    assert session.queued == [{"type": "input_audio_buffer.append"}]
    session.io.connected()
    await _until_queued(session, 3)
    assert isinstance(session.queued[1], CreateItem)
    assert session.queued[2] == {"type": "response.create", "event_id": "reply_1"}
    session.answer(session.queued[1])
    await sync


async def test_a_replay_is_sent_in_order_and_again_when_sending_it_failed() -> None:
    session = _Session()
    session.io.connected()
    sync = asyncio.ensure_future(session.io.update_chat_ctx(_ctx("a", "b")))
    await _until_queued(session, 2)
    for op in session.queued:
        session.answer(op)
    await sync
    session.io.connection_lost()
    session.io.connection_closed("connection closed")

    async def broken(event: Any) -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        await session.io.replay(broken)
    assert not session.io.ready.is_set()
    sent: list[Operation] = []

    async def send(event: Any) -> None:
        sent.append(event)

    await session.io.replay(send)
    assert [(op.item.id, op.previous_item_id) for op in sent if isinstance(op, CreateItem)] == [
        ("b", "root"),
        ("a", "root"),
    ]
    for op in sent:
        session.answer(op)
    await _until(session.io.ready)


async def _until(event: asyncio.Event) -> None:
    for _ in range(1000):
        if event.is_set():
            return
        await asyncio.sleep(0)
    raise AssertionError("never set")


async def test_a_replay_stops_when_the_session_closes() -> None:
    session = _Session()
    session.io.connected()
    session.io.remote.add(
        llm.ChatMessage(role="user", content=["hi"], id="a"), None, origin="client"
    )
    session.closed = True
    sent: list[Any] = []

    async def send(event: Any) -> None:
        sent.append(event)

    await session.io.replay(send)
    assert sent == []


async def test_stop_cancels_a_main_task_that_does_not_end_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_sync_io, "ACLOSE_TIMEOUT", 0.01)
    session = _Session()

    async def main_task() -> None:
        await asyncio.Event().wait()  # a send loop blocked in a write

    main = asyncio.create_task(main_task())
    session.io.close()
    await asyncio.wait_for(session.io.stop(main), 1)
    assert main.cancelled()


async def test_stop_lets_a_main_task_that_still_sends_end_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_sync_io, "ACLOSE_TIMEOUT", 0.02)
    session = _Session()

    async def main_task() -> None:
        for _ in range(20):  # a slow link flushing what was queued: 0.2 s, ten waits long
            await asyncio.sleep(0.01)
            session.io.sent({"type": "input_audio_buffer.append"})

    main = asyncio.create_task(main_task())
    session.io.close()
    await asyncio.wait_for(session.io.stop(main), 1)
    assert main.done() and not main.cancelled()


async def test_stop_cancels_a_main_task_still_sending_at_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_sync_io, "ACLOSE_TIMEOUT", 0.02)
    monkeypatch.setattr(chat_sync_io, "ACLOSE_LIMIT", 0.1)
    session = _Session()

    async def main_task() -> None:
        while True:
            await asyncio.sleep(0.005)
            session.io.sent({"type": "input_audio_buffer.append"})

    main = asyncio.create_task(main_task())
    session.io.close()
    await asyncio.wait_for(session.io.stop(main), 1)
    assert main.cancelled()


async def test_stop_cancels_again_a_main_task_that_waits_on_after_a_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_sync_io, "ACLOSE_TIMEOUT", 0.01)

    async def main_task() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        await asyncio.Event().wait()  # its cleanup waits too (a close handshake)

    session = _Session()
    main = asyncio.create_task(main_task())
    await asyncio.wait_for(session.io.stop(main), 1)
    assert main.cancelled()


async def test_a_cancelled_stop_cancels_the_main_task() -> None:
    async def main_task() -> None:
        await asyncio.Event().wait()

    session = _Session()
    main = asyncio.create_task(main_task())
    stop = asyncio.create_task(session.io.stop(main))
    await asyncio.sleep(0)
    stop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stop
    with pytest.raises(asyncio.CancelledError):
        await main


async def test_stop_raises_the_error_the_main_task_ended_with() -> None:
    async def main_task() -> None:
        raise RuntimeError("boom")

    session = _Session()
    main = asyncio.create_task(main_task())
    with pytest.raises(RuntimeError, match="boom"):
        await session.io.stop(main)


def test_an_operation_is_written_as_the_protocols_event() -> None:
    write = item_event_writer(create=dict, delete=dict, to_item=lambda item: item.id)
    message = llm.ChatMessage(role="user", content=["hi"], id="a")
    assert write(CreateItem("ev_1", message, "root")) == {
        "type": "conversation.item.create",
        "item": "a",
        "previous_item_id": "root",
        "event_id": "ev_1",
    }
    assert write(DeleteItem("ev_2", "a")) == {
        "type": "conversation.item.delete",
        "item_id": "a",
        "event_id": "ev_2",
    }


def test_a_json_event_is_decoded_and_other_frames_are_skipped() -> None:
    assert decode_server_event('{"type": "session.created"}') == {"type": "session.created"}
    for frame in ("not json", "[1, 2]", '{"no": "type"}', '{"type": 3}'):
        assert decode_server_event(frame) is None
