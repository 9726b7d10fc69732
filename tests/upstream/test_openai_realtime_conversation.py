"""Unit tests of livekit.plugins.openai.realtime.conversation (the sans-IO state).

Each test pins one guarantee of the module's docstring; the service's answers are the calls a
session makes for its server events."""

from __future__ import annotations

import itertools
from collections.abc import Generator
from typing import TypeVar

from livekit.agents import llm
from livekit.plugins.openai.realtime.chat_sync import ChatContextSyncError
from livekit.plugins.openai.realtime.conversation import (
    ConversationState,
    CreateItem,
    DeleteItem,
    Operation,
)
from livekit.plugins.openai.realtime.item_events import Batch

T = TypeVar("T")


def _run(steps: Generator[None, None, T]) -> T:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def _state() -> ConversationState:
    counter = itertools.count(1)
    return ConversationState(protocol="test realtime", new_event_id=lambda p: f"{p}{next(counter)}")


def _msg(item_id: str, text: str, role: llm.ChatRole = "user") -> llm.ChatMessage:
    return llm.ChatMessage(role=role, content=[text] if text else [], id=item_id)


def _sync(state: ConversationState, *items: llm.ChatItem) -> tuple[list[Operation], Batch]:
    plan = _run(state.sync_steps(llm.ChatContext(items=list(items)), since=state.remote.revision))
    batch = Batch()
    return list(state.operations(plan, batch)), batch


def _confirm(state: ConversationState, ops: list[Operation]) -> None:
    """The service does what the operations ask, in the order they were sent."""
    for op in ops:
        if isinstance(op, CreateItem):
            anchor = None if op.previous_item_id == "root" else op.previous_item_id
            state.item_added(op.item.id, anchor, lambda: _msg("unused", "x"))
        else:
            state.item_deleted(op.item_id)


def _speech(state: ConversationState, item_id: str, transcript: str | None) -> None:
    last = state.remote.last()
    state.item_added(item_id, last.item.id if last else None, lambda: _msg(item_id, ""))
    if transcript is not None:
        state.transcript(item_id, transcript, None)


def _ids(state: ConversationState) -> list[str]:
    return [r.item.id for r in state.remote]


def test_operations_are_deletes_then_each_run_last_item_first() -> None:
    state = _state()
    ops, batch = _sync(state, _msg("a", "one"), _msg("b", "two"))
    assert [(op.item.id, op.previous_item_id) for op in ops if isinstance(op, CreateItem)] == [
        ("b", "root"),
        ("a", "root"),
    ]
    assert all(state.events.get(op.event_id) is not None for op in ops)
    _confirm(state, ops)
    assert batch.done and batch.error() is None and _ids(state) == ["a", "b"]
    ops, _ = _sync(state, _msg("b", "two"), _msg("c", "three"))
    assert isinstance(ops[0], DeleteItem) and ops[0].item_id == "a"
    assert [(op.item.id, op.previous_item_id) for op in ops[1:] if isinstance(op, CreateItem)] == [
        ("c", "b")
    ]


def test_a_rejection_names_its_event_and_is_the_batch_error() -> None:
    state = _state()
    ops, batch = _sync(state, _msg("a", "one"))
    assert state.item_rejected("unknown_event", "x", "nope", None) is None
    assert state.item_rejected(ops[0].event_id, "item_create_bad", "bad item", "item") is True
    error = batch.error()
    assert batch.done and error is not None and error.code == "item_create_bad"
    assert error.item_id == "a" and error.param == "item" and _ids(state) == []


def test_a_refused_delete_of_an_item_the_service_lacks_leaves_the_view() -> None:
    state = _state()
    _speech(state, "speech", "hello")
    ops, batch = _sync(state)
    assert isinstance(ops[0], DeleteItem)
    state.item_rejected(ops[0].event_id, "item_delete_invalid_item_id", "no such item", None)
    assert _ids(state) == [] and batch.error() is not None


def test_a_late_answer_to_an_expired_operation_still_updates_the_view() -> None:
    state = _state()
    ops, batch = _sync(state, _msg("a", "one"))
    state.events.expire(batch, ChatContextSyncError("timed out"))
    assert batch.done and batch.error() is not None
    _confirm(state, ops)
    r = state.remote.get("a")
    assert r is not None and r.origin == "client" and r.known_at is not None


def test_no_operation_outlives_its_connection_or_the_session() -> None:
    state = _state()
    ops, batch = _sync(state, _msg("a", "one"))
    state.connection_closed()
    error = batch.error()
    assert error is not None and "closed before it answered" in str(error)
    assert state.cancelled(ops[0].event_id)  # never sent: it must not go out any more
    state.close()
    ops, batch = _sync(state, _msg("a", "one"))
    assert batch.done and batch.error() is not None and state.cancelled(ops[0].event_id)


def test_what_the_caller_should_know_is_an_outcome_value() -> None:
    state = _state()
    _sync(state, _msg("empty", ""), _msg("a", "one"))
    _speech(state, "speech", None)
    state.item_added("speech", None, lambda: _msg("speech", ""))
    state.item_added("late", "never_seen", lambda: _msg("late", ""))
    kinds = [(o.kind, o.item_ids) for o in state.outcomes]
    assert kinds == [
        ("skipped", ("empty",)),
        ("unexpected", ("speech",)),
        ("unexpected", ("late",)),
    ]
    assert _ids(state) == ["speech", "late"]  # an item after an unknown one is placed last


def test_the_service_items_content_is_unknown_until_its_transcript_or_end() -> None:
    state = _state()
    _speech(state, "speech", None)
    state.item_added("reply", "speech", lambda: _msg("reply", "", role="assistant"))
    speech = state.remote.get("speech")
    assert state.reply_pending("reply") and speech is not None and speech.known_at is None
    state.transcript("speech", "hello", 0.9)
    assert state.reply_done("reply", "hi there", audio=True) is None
    speech, reply = state.remote.get("speech"), state.remote.get("reply")
    assert speech is not None and speech.item.type == "message"
    assert speech.item.content == ["hello"] and speech.item.transcript_confidence == 0.9
    assert reply is not None and reply.audio and not state.reply_pending("reply")


def _dropped_with_a_replay(state: ConversationState) -> tuple[list[Operation], Batch]:
    state.connection_lost()
    state.connection_closed()
    batch = Batch()
    return [op for op in state.replay_steps(batch) if op is not None], batch


def test_a_replay_recreates_the_view_which_keeps_the_whole_conversation() -> None:
    state = _state()
    ops, _ = _sync(state, _msg("a", "one"))
    _confirm(state, ops)
    _speech(state, "speech", "hello")
    _speech(state, "silent", "")
    _speech(state, "pending", None)
    ops, batch = _dropped_with_a_replay(state)
    assert [(op.item.id, op.previous_item_id) for op in ops if isinstance(op, CreateItem)] == [
        ("speech", "root"),
        ("a", "root"),
    ]
    assert [(o.kind, o.item_ids) for o in state.outcomes] == [
        ("lost", ("pending",)),
        ("not_replayed", ("silent",)),
    ]
    assert _ids(state) == ["a", "speech"]  # not held yet, still in the view
    # a sync made from a copy of the view meanwhile deletes nothing
    plan = _run(state.sync_steps(state.remote.to_chat_ctx(), since=state.remote.revision))
    assert plan.deletes == []
    _confirm(state, list(reversed(ops)))
    assert batch.done and all(r.held and r.origin == "client" for r in state.remote)


def test_a_drop_during_a_replay_replays_again_with_what_that_connection_added() -> None:
    state = _state()
    ops, _ = _sync(state, _msg("a", "one"), _msg("b", "two"))
    _confirm(state, ops)
    ops, first = _dropped_with_a_replay(state)
    _confirm(state, [op for op in ops if isinstance(op, CreateItem) and op.item.id == "a"])
    _speech(state, "speech", "added meanwhile")
    ops, _ = _dropped_with_a_replay(state)
    assert first.done
    assert [op.item.id for op in reversed(ops) if isinstance(op, CreateItem)] == [
        "a",
        "b",
        "speech",
    ]


def test_a_truncated_reply_is_replayed_as_what_the_user_heard() -> None:
    state = _state()
    state.item_added("reply", None, lambda: _msg("reply", "", role="assistant"))
    state.reply_done("reply", "Hello there, how are you", audio=True)
    state.truncate("reply", "Hello there")
    state.truncated("reply")
    ops, _ = _dropped_with_a_replay(state)
    items = [op.item for op in ops if isinstance(op, CreateItem)]
    assert [item.content for item in items if item.type == "message"] == [["Hello there"]]


def test_a_text_truncation_of_a_streaming_reply_waits_for_its_end() -> None:
    state = _state()
    state.item_added("reply", None, lambda: _msg("reply", "", role="assistant"))
    assert _run(state.text_truncation_steps("reply", "Hel")) is None
    assert state.reply_done("reply", "Hello", audio=False) == "Hel"
    local = _run(state.text_truncation_steps("reply", "Hel"))
    assert local is not None and [i.content for i in local if i.type == "message"] == [["Hel"]]
