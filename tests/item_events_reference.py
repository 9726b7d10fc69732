"""Reference model for tests/test_item_events_equivalence.py: ``item_events`` as of 7850ebd,
before its failures and expiries were made cheap per call. Not shipped; only compared against.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Literal

from livekit.agents import llm
from livekit.plugins.openai.realtime.chat_sync import STEP_ITEMS, ChatContextSyncError, Origin

__all__ = ["Batch", "ItemEvent", "PendingItemEvents"]

Kind = Literal["create", "delete"]


@dataclass
class Batch:
    """The events of one sync, done when the service has answered all of them."""

    remaining: int = 0
    size: int = 0
    errors: list[ChatContextSyncError] = field(default_factory=list)
    events: dict[str, ItemEvent] = field(default_factory=dict)
    """its events not settled yet, by event id (a failure of the batch walks these only; a
    settled one leaves at once, so that thousands are not freed in one go with the batch)"""
    on_settle: Callable[[], None] | None = None
    """called whenever one of its events is settled (the waiter's clock and wake-up)"""

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def error(self) -> ChatContextSyncError | None:
        """The rejections of the batch as one ``ChatContextSyncError``, if any."""
        if not self.errors:
            return None
        first = self.errors[0]
        message = first.args[0]
        if len(self.errors) > 1:
            message = (
                f"{len(self.errors)} of {self.size} chat context events failed, first: {message}"
            )
        return ChatContextSyncError(
            message,
            code=first.code,
            param=first.param,
            event_id=first.event_id,
            item_id=first.item_id,
            errors=list(self.errors),
        )


@dataclass
class ItemEvent:
    """A create or delete the service has not answered yet."""

    kind: Kind
    item_id: str
    event_id: str
    item: llm.ChatItem | None = None
    """the item a create sends"""
    origin: Origin = "client"
    """what the mirror records the created item as (see ``chat_sync.SyncPlan.replaced``)"""
    batch: Batch | None = None
    """the sync waiting for the answer, None when nobody waits (any more)"""
    replay: bool = False
    """a create that re-creates an item of the view on a new connection"""
    sent: bool = False
    expired: bool = False
    """its caller stopped waiting: it may only take an answer no live event is waiting for"""


class PendingItemEvents:
    """Item events by event id until the service answers them or they fail."""

    def __init__(self) -> None:
        self._by_event: dict[str, ItemEvent] = {}
        self._by_item: dict[tuple[Kind, str], deque[ItemEvent]] = {}
        self._cancelled: set[str] = set()
        # events failed all at once (``fail_steps``) and not settled yet: none of them is
        # pending any more, and those not sent are cancelled already
        self._detached: dict[str, ItemEvent] = {}
        self._closed: ChatContextSyncError | None = None
        # live events settled by a confirmation an older expired event may have been owed
        self._ambiguous: dict[str, ItemEvent] = {}

    def __len__(self) -> int:
        return len(self._by_event)

    def get(self, event_id: str) -> ItemEvent | None:
        return self._by_event.get(event_id)

    def live(self, kind: Kind, item_id: str) -> bool:
        """Whether an event of ``kind`` for ``item_id`` that a caller waits for is pending."""
        return any(not ev.expired for ev in self._by_item.get((kind, item_id), ()))

    def track(self, ev: ItemEvent) -> ItemEvent:
        """Track an event about to be sent; once closed, it fails at once."""
        if ev.batch is not None:
            ev.batch.remaining += 1
            ev.batch.size += 1
        if self._closed is not None:
            self._cancelled.add(ev.event_id)
            self._leave_batch(ev, self._closed)
            return ev
        if ev.batch is not None:
            ev.batch.events[ev.event_id] = ev
        self._by_event[ev.event_id] = ev
        self._by_item.setdefault((ev.kind, ev.item_id), deque()).append(ev)
        return ev

    def confirmed(self, kind: Kind, item_id: str) -> ItemEvent | None:
        """The service did it: settle the oldest live event of ``kind`` for ``item_id`` (or, with
        none live, the oldest expired one)."""
        queue = self._by_item.get((kind, item_id))
        if not queue:
            return None
        ev = next((e for e in queue if not e.expired), queue[0])
        if ev is not queue[0]:
            # an older, expired event may be the one answered: should the service refuse ``ev``
            # later, that refusal means it held the item already (see ``taken_over``)
            self._ambiguous[ev.event_id] = queue[0]
        self._settle(ev, None)
        return ev

    def taken_over(self, event_id: str) -> ItemEvent | None:
        """A refusal of ``event_id``, which was settled as confirmed in place of an expired event
        of the same item: the confirmation was the expired one's, and the item is held. Settles
        and returns that expired event (None: ``event_id`` was not such an event)."""
        older = self._ambiguous.pop(event_id, None)
        if older is not None and self._by_event.get(older.event_id) is older:
            self._settle(older, None)
            return older
        return None

    def rejected(self, event_id: str, error: ChatContextSyncError) -> ItemEvent | None:
        """The service refused the event ``event_id``, if it is pending."""
        ev = self._by_event.get(event_id)
        if ev is not None:
            self._settle(ev, error)
        return ev

    def fail(self, error: ChatContextSyncError, *, batch: Batch | None = None) -> None:
        """Settle every pending event (of ``batch`` only, when given) with ``error``.

        Events not sent yet are never sent: see :meth:`cancelled`.
        """
        if batch is None:
            for _ in self.fail_steps(error):
                pass
            return
        for ev in list(batch.events.values()):
            if self._by_event.get(ev.event_id) is ev:
                if not ev.sent:
                    self._cancelled.add(ev.event_id)
                self._settle(ev, error)

    def fail_steps(self, error: ChatContextSyncError) -> Generator[None, None, None]:
        """:meth:`fail` of every pending event, in steps: before the first step, they all leave
        the books (no answer reaches them any more, those not sent are cancelled), then each
        step settles a few of them with ``error``, in the order they were tracked."""
        failing = list(self._by_event.values())
        self._detached.update(self._by_event)
        self._by_event = {}
        self._by_item = {}
        self._ambiguous.clear()  # the events they were about are gone
        for start in range(0, len(failing), STEP_ITEMS):
            yield
            for ev in failing[start : start + STEP_ITEMS]:
                if self._detached.pop(ev.event_id, None) is not None and not ev.sent:
                    self._cancelled.add(ev.event_id)
                self._leave_batch(ev, error)

    def expire(self, batch: Batch, error: ChatContextSyncError) -> None:
        """The caller of ``batch`` stopped waiting: its events fail for it, and stay tracked
        (expired) so that a late answer still updates the state."""
        for ev in list(batch.events.values()):
            if self._by_event.get(ev.event_id) is ev:
                ev.expired = True
                self._leave_batch(ev, error)

    def close(self, error: ChatContextSyncError) -> None:
        """Fail everything pending, and every event tracked from now on."""
        for _ in self.close_steps(error):
            pass

    def close_steps(self, error: ChatContextSyncError) -> Generator[None, None, None]:
        """:meth:`close`, settling what is pending in steps (see :meth:`fail_steps`)."""
        self._closed = error
        yield from self.fail_steps(error)

    def cancelled(self, event_id: str) -> bool:
        """Whether the event failed before it was sent; it must not be sent any more."""
        try:
            self._cancelled.remove(event_id)
        except KeyError:
            ev = self._detached.pop(event_id, None)
            return ev is not None and not ev.sent
        return True

    def _settle(self, ev: ItemEvent, error: ChatContextSyncError | None) -> None:
        if self._by_event.pop(ev.event_id, None) is not None:
            queue = self._by_item[(ev.kind, ev.item_id)]
            queue.remove(ev)
            if not queue:
                del self._by_item[(ev.kind, ev.item_id)]
        self._leave_batch(ev, error)

    def _leave_batch(self, ev: ItemEvent, error: ChatContextSyncError | None) -> None:
        batch, ev.batch = ev.batch, None
        if batch is None:
            return
        batch.events.pop(ev.event_id, None)
        if error is not None:
            batch.errors.append(error)
        batch.remaining -= 1
        if batch.on_settle is not None:
            batch.on_settle()
