"""The conversation item events a realtime session sent and the service has not answered yet.

Every ``conversation.item.create`` and ``conversation.item.delete`` is tracked by its
``event_id``, which the service echoes in an error. A confirmation (``conversation.item.created``
or ``.deleted``) names only the item, so it settles the oldest pending event of that kind for that
item: the service answers in order. The events of one ``update_chat_ctx`` form a :class:`Batch`,
done once each of them is settled.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from livekit.agents import llm

from .chat_sync import ChatContextSyncError, Origin

__all__ = ["Batch", "ItemEvent", "PendingItemEvents"]

Kind = Literal["create", "delete"]


@dataclass
class Batch:
    """The events of one sync, done when the service has answered all of them."""

    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    remaining: int = 0
    errors: list[ChatContextSyncError] = field(default_factory=list)
    last_answer: float = field(default_factory=time.monotonic)
    size: int = 0

    def raise_errors(self) -> None:
        """Raise the rejections of the batch as one ``ChatContextSyncError``, if any."""
        if not self.errors:
            return
        first = self.errors[0]
        message = first.args[0]
        if len(self.errors) > 1:
            message = (
                f"{len(self.errors)} of {self.size} chat context events failed, first: {message}"
            )
        raise ChatContextSyncError(
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
    """the sync waiting for the answer, None when nobody waits"""
    sent: bool = False


class PendingItemEvents:
    """Item events by event id until the service answers them or they fail."""

    def __init__(self) -> None:
        self._by_event: dict[str, ItemEvent] = {}
        self._by_item: dict[tuple[Kind, str], deque[ItemEvent]] = {}
        self._cancelled: set[str] = set()
        self._closed: ChatContextSyncError | None = None

    def __len__(self) -> int:
        return len(self._by_event)

    def get(self, event_id: str) -> ItemEvent | None:
        return self._by_event.get(event_id)

    def track(
        self,
        kind: Kind,
        item_id: str,
        event_id: str,
        *,
        item: llm.ChatItem | None = None,
        origin: Origin = "client",
        batch: Batch | None = None,
    ) -> ItemEvent:
        """Track an event about to be sent; once closed, it fails at once."""
        ev = ItemEvent(kind, item_id, event_id, item, origin, batch)
        if batch is not None:
            batch.remaining += 1
            batch.size += 1
        if self._closed is not None:
            self._cancelled.add(event_id)
            self._settle(ev, self._closed)
            return ev
        self._by_event[event_id] = ev
        self._by_item.setdefault((kind, item_id), deque()).append(ev)
        return ev

    def confirmed(self, kind: Kind, item_id: str) -> ItemEvent | None:
        """The service did it: settle the oldest pending event of ``kind`` for ``item_id``."""
        queue = self._by_item.get((kind, item_id))
        if not queue:
            return None
        ev = queue[0]
        self._settle(ev, None)
        return ev

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
        for ev in list(self._by_event.values()):
            if batch is None or ev.batch is batch:
                if not ev.sent:
                    self._cancelled.add(ev.event_id)
                self._settle(ev, error)

    def close(self, error: ChatContextSyncError) -> None:
        """Fail everything pending, and every event tracked from now on."""
        self._closed = error
        self.fail(error)

    def cancelled(self, event_id: str) -> bool:
        """Whether the event failed before it was sent; it must not be sent any more."""
        try:
            self._cancelled.remove(event_id)
        except KeyError:
            return False
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
        if error is not None:
            batch.errors.append(error)
        batch.remaining -= 1
        batch.last_answer = time.monotonic()
        if batch.remaining == 0 and not batch.done.done():
            batch.done.set_result(None)

    async def wait(self, batch: Batch, *, idle_timeout: float) -> None:
        """Wait until every event of ``batch`` is settled; raise its rejections, if any.

        Events still unanswered after ``idle_timeout`` seconds without any answer fail; they stay
        tracked, so that a late answer is still recognised as ours.

        Raises:
            ChatContextSyncError: The service rejected events, answered none for
                ``idle_timeout`` seconds, or they failed (connection closed, session closed).
        """
        batch.last_answer = time.monotonic()
        while batch.remaining > 0:
            idle = time.monotonic() - batch.last_answer
            if idle >= idle_timeout:
                timed_out = ChatContextSyncError(
                    f"update_chat_ctx timed out: the realtime service answered none of "
                    f"{batch.remaining} pending events for {idle_timeout:g}s"
                )
                for ev in list(self._by_event.values()):
                    if ev.batch is batch:
                        self._leave_batch(ev, timed_out)
                break
            await asyncio.wait({batch.done}, timeout=idle_timeout - idle)
        batch.raise_errors()
