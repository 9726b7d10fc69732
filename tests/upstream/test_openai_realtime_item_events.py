"""Unit tests of livekit.plugins.openai.realtime.item_events (the books of unanswered events)."""

from __future__ import annotations

import contextlib

import pytest

from livekit.plugins.openai.realtime.chat_sync import ChatContextSyncError
from livekit.plugins.openai.realtime.item_events import Batch, ItemEvent, PendingItemEvents


def _error(code: str = "boom") -> ChatContextSyncError:
    return ChatContextSyncError(f"failed: {code}", code=code)


def test_events_are_tracked_by_event_id() -> None:
    events = PendingItemEvents()
    ev = events.track(ItemEvent("create", "item_a", "ev_1"))
    assert events.get("ev_1") is ev and len(events) == 1
    assert events.get("ev_2") is None


def test_a_confirmation_settles_the_oldest_event_of_its_kind_for_its_item() -> None:
    events = PendingItemEvents()
    batch = Batch()
    first = events.track(ItemEvent("create", "item_a", "ev_1", batch=batch))
    delete = events.track(ItemEvent("delete", "item_a", "ev_2", batch=batch))
    assert events.confirmed("create", "item_a") is first
    assert events.confirmed("create", "item_a") is None  # the delete is not a create
    assert not batch.done and events.get("ev_2") is delete
    assert events.confirmed("delete", "item_a") is delete
    assert batch.done and batch.error() is None and len(events) == 0


def test_a_rejection_settles_the_event_it_names_only() -> None:
    events = PendingItemEvents()
    batch = Batch()
    events.track(ItemEvent("delete", "item_a", "ev_1", batch=batch))
    events.track(ItemEvent("delete", "item_a", "ev_2", batch=batch))
    assert events.rejected("ev_9", _error()) is None
    rejected = events.rejected("ev_2", _error("item_delete_invalid_item_id"))
    assert rejected is not None and rejected.event_id == "ev_2"
    assert events.get("ev_1") is not None and batch.remaining == 1


def test_a_batch_is_done_once_each_event_is_settled_and_reports_every_rejection() -> None:
    settled: list[int] = []
    batch = Batch()
    batch.on_settle = lambda: settled.append(batch.remaining)
    events = PendingItemEvents()
    for n in range(3):
        events.track(ItemEvent("create", f"item_{n}", f"ev_{n}", batch=batch))
    events.rejected("ev_0", _error("first"))
    events.confirmed("create", "item_1")
    events.rejected("ev_2", _error("second"))
    assert settled == [2, 1, 0] and batch.done
    error = batch.error()
    assert error is not None and error.code == "first"
    assert error.args[0].startswith("2 of 3 chat context events failed, first: failed: first")
    assert [e.code for e in error.errors] == ["first", "second"]


def test_an_expired_event_takes_only_an_answer_no_live_event_waits_for() -> None:
    events = PendingItemEvents()
    gave_up, waiting = Batch(), Batch()
    old = events.track(ItemEvent("create", "item_a", "ev_old", batch=gave_up))
    events.expire(gave_up, _error("timeout"))
    assert gave_up.done and gave_up.error() is not None and old.expired
    assert events.get("ev_old") is old and not events.live("create", "item_a")
    new = events.track(ItemEvent("create", "item_a", "ev_new", batch=waiting))
    assert events.live("create", "item_a")
    assert events.confirmed("create", "item_a") is new and waiting.done
    # with no live event left, a late answer settles the expired one
    assert events.confirmed("create", "item_a") is old and len(events) == 0


def _answered_in_place_of_an_expired_event() -> tuple[PendingItemEvents, ItemEvent]:
    """``ev_old`` creating ``item_a`` expired, then ``ev_new`` creating it was answered (though
    the answer may be ``ev_old``'s); the books and ``ev_old``."""
    events = PendingItemEvents()
    gave_up = Batch()
    old = events.track(ItemEvent("create", "item_a", "ev_old", batch=gave_up))
    events.expire(gave_up, _error("timeout"))
    events.track(ItemEvent("create", "item_a", "ev_new", batch=Batch()))
    events.confirmed("create", "item_a")  # ev_new, though ev_old's answer it may be
    return events, old


def test_a_refusal_of_an_event_settled_in_place_of_an_expired_one_hands_it_back() -> None:
    events, old = _answered_in_place_of_an_expired_event()
    assert events.taken_over("ev_new") is old  # the item is held: ev_old was answered
    assert len(events) == 0 and events.taken_over("ev_new") is None


def test_fail_settles_every_event_with_the_cause_and_cancels_those_not_sent() -> None:
    events = PendingItemEvents()
    one, other = Batch(), Batch()
    sent = events.track(ItemEvent("create", "item_a", "ev_1", batch=one))
    sent.sent = True
    events.track(ItemEvent("create", "item_b", "ev_2", batch=one))
    events.track(ItemEvent("delete", "item_c", "ev_3", batch=other))
    events.fail(_error("dropped"), batch=one)
    assert one.done and not other.done and len(events) == 1
    error = one.error()
    assert error is not None and [e.code for e in error.errors] == ["dropped", "dropped"]
    assert not events.cancelled("ev_1")  # it went out already
    assert events.cancelled("ev_2") and not events.cancelled("ev_2")  # told once
    events.fail(_error("closed"))
    assert other.done and len(events) == 0 and events.cancelled("ev_3")


def test_once_closed_every_event_tracked_fails_at_once_with_the_cause() -> None:
    events = PendingItemEvents()
    before = Batch()
    events.track(ItemEvent("create", "item_a", "ev_1", batch=before))
    events.close(_error("session closed"))
    after = Batch()
    events.track(ItemEvent("create", "item_b", "ev_2", batch=after))
    for batch in (before, after):
        error = batch.error()
        assert batch.done and error is not None and error.code == "session closed"
    assert len(events) == 0 and events.cancelled("ev_2")
    assert events.confirmed("create", "item_b") is None


def test_stored_counts_the_events_of_a_failed_batch_until_they_are_let_go() -> None:
    events = PendingItemEvents()
    failed, other = Batch(), Batch()
    events.track(ItemEvent("create", "item_a", "ev_1", batch=failed))
    events.track(ItemEvent("create", "item_b", "ev_2", batch=failed))
    events.track(ItemEvent("create", "item_c", "ev_3", batch=other))
    events.fail(_error("dropped"), batch=failed)
    # out of the books at once, still held in memory until a look-up or fail_steps lets go
    assert len(events) == 1 and events.stored() == 3
    assert events.get("ev_1") is None and events.stored() == 2
    steps = events.fail_steps(_error("closed"))
    next(steps)
    assert len(events) == 0 and events.stored() == 2  # taken out, not settled yet
    for _ in steps:
        pass
    assert events.stored() == 0 and other.done


def _tracked_again_after_a_failure(item_id: str) -> tuple[PendingItemEvents, ItemEvent, Batch]:
    """``ev_1`` tracked for ``item_a`` in a batch that then failed, then for ``item_id``."""
    events = PendingItemEvents()
    failed = Batch()
    events.track(ItemEvent("create", "item_a", "ev_1", batch=failed))
    events.fail(_error("dropped"), batch=failed)
    waiting = Batch()
    return events, events.track(ItemEvent("create", item_id, "ev_1", batch=waiting)), waiting


def test_an_event_id_tracked_again_after_its_batch_failed_is_the_new_event_only() -> None:
    events, again, waiting = _tracked_again_after_a_failure("item_b")
    # the failed event's queue entry leaves the books, and takes nothing of the new one
    assert not events.live("create", "item_a")
    assert events.get("ev_1") is again and len(events) == 1 and events.stored() == 1
    assert events.cancelled("ev_1") and not events.cancelled("ev_1")  # the failed one, once
    assert events.confirmed("create", "item_b") is again and waiting.done
    assert len(events) == 0 and events.stored() == 0 and not events.live("create", "item_b")


def test_an_event_id_tracked_again_for_the_same_item_after_its_batch_failed() -> None:
    events, again, waiting = _tracked_again_after_a_failure("item_a")
    assert events.confirmed("create", "item_a") is again and waiting.done
    assert not events.live("create", "item_a") and events.confirmed("create", "item_a") is None
    assert len(events) == 0 and events.stored() == 0


def test_an_event_id_still_pending_is_not_tracked_again() -> None:
    events = PendingItemEvents()
    gave_up, other = Batch(), Batch()
    first = events.track(ItemEvent("create", "item_a", "ev_1", batch=gave_up))
    events.expire(gave_up, _error("timeout"))  # expired: still pending, for a late answer
    with pytest.raises(ValueError, match="ev_1"):
        events.track(ItemEvent("delete", "item_b", "ev_1", batch=other))
    assert other.size == 0 and other.done and not events.live("delete", "item_b")
    assert events.get("ev_1") is first and len(events) == 1


def test_a_refusal_of_an_event_id_tracked_again_is_the_new_event_s_own() -> None:
    events, old = _answered_in_place_of_an_expired_event()
    waiting = Batch()
    again = events.track(ItemEvent("delete", "item_b", "ev_new", batch=waiting))
    # the refusal names the event tracked last with that id: it hands nothing back
    assert events.taken_over("ev_new") is None
    assert events.rejected("ev_new", _error("refused")) is again and waiting.done
    assert events.get("ev_old") is old


def _end(events: PendingItemEvents, batch: Batch, how: str) -> None:
    if how == "fail":
        events.fail(_error("dropped"), batch=batch)
    else:
        events.expire(batch, _error("timeout"))


def _batch_of_one_event_ended(how: str) -> tuple[PendingItemEvents, Batch]:
    """A batch that tracked ``ev_1`` and then failed or expired (``how``), and its books."""
    events = PendingItemEvents()
    batch = Batch()
    events.track(ItemEvent("create", "item_a", "ev_1", batch=batch))
    _end(events, batch, how)
    return events, batch


@pytest.mark.parametrize("how", ["fail", "expire"])
def test_a_batch_failed_or_expired_takes_no_more_events(how: str) -> None:
    events, batch = _batch_of_one_event_ended(how)
    with contextlib.suppress(ValueError):
        events.track(ItemEvent("create", "item_b", "ev_2", batch=batch))
    # its caller had its answer: the batch stays done, with its one event
    assert batch.done and batch.size == 1 and len(batch.errors) == 1
    with pytest.raises(ValueError, match="ev_3"):
        events.track(ItemEvent("create", "item_b", "ev_3", batch=batch))
    assert events.get("ev_3") is None and not events.live("create", "item_b")
    assert not events.cancelled("ev_3")  # refused, not tracked: nothing to tell


@pytest.mark.parametrize("how", ["fail", "expire"])
def test_a_batch_ended_before_fail_steps_and_again_after_never_goes_below_zero(how: str) -> None:
    events, batch = _batch_of_one_event_ended(how)
    steps = events.fail_steps(_error("closed"))
    next(steps)  # ev_1 is out of the books, not settled yet
    with contextlib.suppress(ValueError):
        events.track(ItemEvent("create", "item_b", "ev_2", batch=batch))
    _end(events, batch, how)
    for _ in steps:
        pass
    assert batch.remaining == 0 and batch.done
    assert batch.size == 1 and len(batch.errors) == 1 and events.stored() == 0


def test_a_failed_event_taken_out_by_fail_steps_is_let_go_before_its_id_comes_again() -> None:
    events = PendingItemEvents()
    failed = Batch()
    events.track(ItemEvent("create", "item_a", "ev_1", batch=failed))
    events.fail(_error("dropped"), batch=failed)  # not sent: cancelled
    steps = events.close_steps(_error("closed"))
    next(steps)  # the failed event is taken out of the books, not let go yet
    events.track(ItemEvent("create", "item_b", "ev_1", batch=Batch()))  # closed: fails at once
    # one failure told for the id, as when fail() let its first event go at once
    assert events.cancelled("ev_1")
    for _ in steps:
        pass
    assert not events.cancelled("ev_1") and events.stored() == 0
