"""Unit tests of livekit.plugins.openai.realtime.item_events."""

from __future__ import annotations

from livekit.plugins.openai.realtime.chat_sync import ChatContextSyncError
from livekit.plugins.openai.realtime.item_events import Batch, ItemEvent, PendingItemEvents


def test_a_confirmation_settles_the_oldest_event_for_its_item() -> None:
    events = PendingItemEvents()
    batch = Batch()
    first = events.track(ItemEvent("create", "item_a", "ev_1", batch=batch))
    events.track(ItemEvent("create", "item_a", "ev_2", batch=batch))
    assert events.confirmed("create", "item_a") is first
    assert not batch.done
    assert events.confirmed("create", "item_a") is not None
    assert batch.done and batch.error() is None


def test_a_rejection_is_the_batch_error() -> None:
    events = PendingItemEvents()
    batch = Batch()
    events.track(ItemEvent("delete", "item_a", "ev_1", batch=batch))
    error = ChatContextSyncError("no such item", code="item_delete_invalid_item_id")
    events.rejected("ev_1", error)
    assert batch.done
    raised = batch.error()
    assert raised is not None and raised.code == "item_delete_invalid_item_id"
