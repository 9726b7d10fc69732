"""The conversation item events a realtime session sent and the service has not answered yet.

No I/O and no clock: the asyncio layer waits, this module only keeps the books. Every
``conversation.item.create`` and ``conversation.item.delete`` is tracked by its ``event_id``,
which the service echoes in an error. A confirmation (``conversation.item.created`` / ``.added``
or ``.deleted``) names only the item, so it settles the oldest event of that kind for that item
that a caller still waits for; an event whose caller gave up (timed out) is kept only so that a
late answer still updates the state, and settles a confirmation only when no live event of the
item is pending. The events of one ``update_chat_ctx`` (or of one replay) form a
:class:`Batch`, done once each of them is settled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Literal

from livekit.agents import llm

from .chat_sync import STEP_ITEMS, ChatContextSyncError, Origin

__all__ = ["Batch", "ItemEvent", "PendingItemEvents"]

Kind = Literal["create", "delete"]


@dataclass
class Batch:
    """The events of one sync, done when the service has answered all of them.

    It holds no collection of its events: failing or expiring it is O(1) (see
    :meth:`PendingItemEvents.fail` and :meth:`PendingItemEvents.expire`), and tracking an event
    never grows a second big dict.
    """

    remaining: int = 0
    size: int = 0
    errors: list[ChatContextSyncError] = field(default_factory=list)
    booked: dict[int, int] = field(default_factory=dict)
    """how many of its events not settled yet were tracked in each generation of the books (a
    generation ends when :meth:`PendingItemEvents.fail_steps` takes every pending event out)"""
    expired_gen: int | None = None
    """the generation whose events of it expired at once (its caller stopped waiting); set at
    most once, like :attr:`failed_gen` (see :attr:`ended`)"""
    failed_gen: int | None = None
    """the generation whose events of it failed at once: they are out of the books, though
    still stored until a look-up meets them"""
    on_settle: Callable[[], None] | None = None
    """called whenever one of its events is settled (the waiter's clock and wake-up)"""
    ended: bool = False
    """failed or expired (:meth:`PendingItemEvents.fail` with it, or
    :meth:`PendingItemEvents.expire`): its caller has its answer, it takes no more events"""

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
    gen: int = field(default=0, repr=False)
    """the generation of the books it was tracked in"""
    gave_up: bool = field(default=False, repr=False)
    """set once its expired batch let it go (see :attr:`expired`)"""
    owed: list[str] = field(default_factory=list, repr=False)
    """the live events settled by a confirmation it may have been owed (``_ambiguous``)"""

    @property
    def expired(self) -> bool:
        """Its caller stopped waiting: it may only take an answer no live event is waiting for."""
        return self.gave_up or (self.batch is not None and self.batch.expired_gen == self.gen)

    @property
    def awaited(self) -> bool:
        """Whether a caller still waits for its answer."""
        batch = self.batch
        return batch is not None and self.gen not in (batch.expired_gen, batch.failed_gen)

    @property
    def dead(self) -> bool:
        """Failed with its whole batch: no longer pending, though maybe still stored."""
        return self.batch is not None and self.batch.failed_gen == self.gen


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
        self._gen = 0  # bumped each time ``fail_steps`` takes every pending event out
        self._dead = 0  # events of failed batches still stored in ``_by_event``

    def __len__(self) -> int:
        """The pending events (those of failed batches, still stored, do not count)."""
        return len(self._by_event) - self._dead

    def stored(self) -> int:
        """The events still held in memory: pending ones, those of failed batches not let go
        yet (see :meth:`fail`), and those :meth:`fail_steps` took out and has not settled (or
        :meth:`cancelled` not told) yet. A leak check counts these: :func:`len` leaves out
        the events of failed batches and those taken out."""
        return len(self._by_event) + len(self._detached)

    def get(self, event_id: str) -> ItemEvent | None:
        ev = self._by_event.get(event_id)
        if ev is not None and ev.dead:
            self._purge(ev)
            return None
        return ev

    def live(self, kind: Kind, item_id: str) -> bool:
        """Whether an event of ``kind`` for ``item_id`` that a caller waits for is pending."""
        return any(not ev.expired for ev in self._queue(kind, item_id))

    def track(self, ev: ItemEvent) -> ItemEvent:
        """Track an event about to be sent; once closed, it fails at once.

        Raises:
            ValueError: Its batch failed or expired (see :attr:`Batch.ended`), or an event with
                its ``event_id`` is pending: the books know an event by its id (an id may be
                used again once its event is settled or failed).
        """
        if ev.batch is not None and ev.batch.ended:
            # its caller read the batch's answer already: one more event would undo ``done``
            raise ValueError(f"item event {ev.event_id!r}: its batch failed or expired")
        # ``get`` lets go a failed event still stored under the id (as :meth:`fail` did); a
        # pending one is refused
        if self.get(ev.event_id) is not None:
            raise ValueError(f"item event {ev.event_id!r} is tracked already and still pending")
        stale = self._detached.get(ev.event_id)
        if stale is not None and stale.dead:
            # one of a failed batch that ``fail_steps`` took out: let go too, not at its step
            del self._detached[ev.event_id]
            if not stale.sent:
                self._cancelled.add(ev.event_id)
        # a refusal naming the id is the new event's from now on (see ``taken_over``)
        self._ambiguous.pop(ev.event_id, None)
        ev.gen = self._gen
        if (batch := ev.batch) is not None:
            batch.remaining += 1
            batch.size += 1
            batch.booked[ev.gen] = batch.booked.get(ev.gen, 0) + 1
        if self._closed is not None:
            self._cancelled.add(ev.event_id)
            self._leave_batch(ev, self._closed)
            return ev
        self._by_event[ev.event_id] = ev
        self._by_item.setdefault((ev.kind, ev.item_id), deque()).append(ev)
        return ev

    def confirmed(self, kind: Kind, item_id: str) -> ItemEvent | None:
        """The service did it: settle the oldest live event of ``kind`` for ``item_id`` (or, with
        none live, the oldest expired one)."""
        queue = self._queue(kind, item_id)
        if not queue:
            return None
        ev = next((e for e in queue if not e.expired), queue[0])
        if ev is not queue[0]:
            # an older, expired event may be the one answered: should the service refuse ``ev``
            # later, that refusal means it held the item already (see ``taken_over``)
            self._ambiguous[ev.event_id] = queue[0]
            queue[0].owed.append(ev.event_id)
        self._settle(ev, None)
        return ev

    def taken_over(self, event_id: str) -> ItemEvent | None:
        """A refusal of ``event_id``, which was settled as confirmed in place of an expired event
        of the same item: the confirmation was the expired one's, and the item is held. Settles
        and returns that expired event (None: ``event_id`` was not such an event)."""
        older = self._ambiguous.pop(event_id, None)
        if older is not None and self.get(older.event_id) is older:
            self._settle(older, None)
            return older
        return None

    def rejected(self, event_id: str, error: ChatContextSyncError) -> ItemEvent | None:
        """The service refused the event ``event_id``, if it is pending."""
        ev = self.get(event_id)
        if ev is not None:
            self._settle(ev, error)
        return ev

    def fail(self, error: ChatContextSyncError, *, batch: Batch | None = None) -> None:
        """Settle every pending event (of ``batch`` only, when given) with ``error``.

        Events not sent yet are never sent: see :meth:`cancelled`. For ``batch``, O(1) in its
        events: they fail for it at once and count as gone; each leaves the books when a look-up
        meets it (or with the next :meth:`fail_steps`). A batch ends once (failed or expired,
        see :attr:`Batch.ended`): a later call for it does nothing, so its generation of failed
        events is never overwritten.
        """
        if batch is None:
            for _ in self.fail_steps(error):
                pass
            return
        if batch.ended:
            return  # failed or expired already: none of its events is in the books
        batch.ended = True
        count = batch.booked.pop(self._gen, 0)
        if count == 0:
            return  # none of its events is in the books
        self._dead += count
        batch.failed_gen = self._gen
        self._fail_for_caller(batch, count, error)

    def fail_steps(self, error: ChatContextSyncError) -> Generator[None, None, None]:
        """:meth:`fail` of every pending event, in steps: before the first step, they all leave
        the books (no answer reaches them any more, those not sent are cancelled), then each
        step settles a few of them with ``error``, in the order they were tracked."""
        failing = list(self._by_event.values())
        if self._detached:
            self._detached.update(self._by_event)
        else:
            self._detached = self._by_event  # no copy: thousands would be rehashed at once
        old_items = self._by_item
        self._by_event = {}
        self._by_item = {}
        self._gen += 1
        self._dead = 0
        self._ambiguous.clear()  # the events they were about are gone
        failing.reverse()  # taken from the end, in the order tracked, so freed as they go
        while failing:
            yield
            for _ in range(min(STEP_ITEMS, len(failing))):
                ev = failing.pop()
                if self._detached.pop(ev.event_id, None) is not None and not ev.sent:
                    self._cancelled.add(ev.event_id)
                self._leave_batch(ev, error)
            for _ in range(min(STEP_ITEMS, len(old_items))):
                old_items.popitem()  # freed a step at a time, not thousands at once
        old_items.clear()

    def expire(self, batch: Batch, error: ChatContextSyncError) -> None:
        """The caller of ``batch`` stopped waiting: its events fail for it, and stay tracked
        (expired) so that a late answer still updates the state.

        O(1) in its events: they are expired through ``batch`` (see :attr:`ItemEvent.expired`)
        and leave it only as they settle. Like :meth:`fail`, once per batch.
        """
        if batch.ended:
            return  # failed or expired already: none of its events is in the books
        batch.ended = True
        count = batch.booked.pop(self._gen, 0)
        if count == 0:
            return
        batch.expired_gen = self._gen
        self._fail_for_caller(batch, count, error)

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
        self.get(event_id)  # an event of a failed batch leaves the books (cancelled if not sent)
        try:
            self._cancelled.remove(event_id)
        except KeyError:
            ev = self._detached.pop(event_id, None)
            return ev is not None and not ev.sent
        return True

    def _queue(self, kind: Kind, item_id: str) -> deque[ItemEvent]:
        """The stored events of ``kind`` for ``item_id``, those of failed batches taken out."""
        queue = self._by_item.get((kind, item_id))
        if queue is None:
            return deque()
        for ev in [ev for ev in queue if ev.dead]:
            self._purge(ev)
        return queue

    def _purge(self, ev: ItemEvent) -> None:
        """An event of a failed batch leaves the books, as :meth:`fail` would have done it."""
        self._dead -= 1
        if not ev.sent:
            self._cancelled.add(ev.event_id)
        ev.batch = None
        self._unbook(ev)

    def _settle(self, ev: ItemEvent, error: ChatContextSyncError | None) -> None:
        self._unbook(ev)
        self._leave_batch(ev, error)

    def _unbook(self, ev: ItemEvent) -> None:
        for event_id in ev.owed:
            # settled: a refusal of those can no longer be this one's confirmation
            if self._ambiguous.get(event_id) is ev:
                del self._ambiguous[event_id]
        ev.owed.clear()
        # this very event only: another one may have been tracked with its id since
        if self._by_event.get(ev.event_id) is not ev:
            return
        del self._by_event[ev.event_id]
        key = (ev.kind, ev.item_id)
        queue = self._by_item[key]
        # by identity: ``deque.remove`` compares the dataclasses field by field
        for n, queued in enumerate(queue):
            if queued is ev:
                del queue[n]
                break
        if not queue:
            del self._by_item[key]

    def _fail_for_caller(self, batch: Batch, count: int, error: ChatContextSyncError) -> None:
        # ``count`` of its events fail for its caller at once, as if one by one
        batch.errors.extend([error] * count)
        batch.remaining -= count
        if batch.on_settle is not None:
            batch.on_settle()

    def _leave_batch(self, ev: ItemEvent, error: ChatContextSyncError | None) -> None:
        batch, ev.batch = ev.batch, None
        if batch is None:
            return
        if batch.expired_gen == ev.gen:
            ev.gave_up = True  # it failed for its caller when the batch expired
            return
        if batch.failed_gen == ev.gen:
            return  # it failed for its caller with the batch
        left = batch.booked.get(ev.gen, 0) - 1
        if left > 0:
            batch.booked[ev.gen] = left
        else:
            batch.booked.pop(ev.gen, None)
        if error is not None:
            batch.errors.append(error)
        batch.remaining -= 1
        if batch.on_settle is not None:
            batch.on_settle()
