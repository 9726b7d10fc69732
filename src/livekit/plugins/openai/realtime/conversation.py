"""The realtime conversation as one state machine: what the service holds and what is in flight.

No I/O, no asyncio, no logging, protocol-neutral. The sessions translate their protocol's
server events into the calls below (``item_added``, ``transcript``, ``reply_done``...) and the
operations it returns (:class:`CreateItem`, :class:`DeleteItem`) into client events; the asyncio
layer (``chat_sync_io``) sends them and waits. What happened that a caller may want to know (an
item skipped, lost or rejected) is an :class:`Outcome` in ``outcomes``, for the caller to log.

What the state guarantees:

- The view (``remote``, which the session shows as ``chat_ctx``) holds every item the service
  holds and every item a replay is re-creating on a new connection, in the service's order, at
  every moment: a sync made from a copy of it deletes nothing the service holds.
- An operation is settled only by the answer to it: a rejection names its event id; a
  confirmation names the item and settles the oldest operation of that item a caller still
  waits for. An operation whose caller timed out only takes an answer no live one waits for.
  No operation outlives the connection it was sent on.
- A new connection replays the whole view (every item whose content is known), and a drop
  during that replay replays the view again, including what the interrupted connection added.
- What the client knows of each item the service made (transcript pending or delivered, reply
  streaming or done, what the user heard of a truncated reply, a call's final arguments) is
  kept here; ``chat_sync`` plans syncs and replays from it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Literal

from livekit.agents import llm, utils

from .chat_sync import (
    STEP_ITEMS,
    ChatContextSyncError,
    RemoteConversation,
    Steps,
    SyncPlan,
    appended_sync_steps,
    plan_replay_steps,
    plan_sync_steps,
    protocol_items_steps,
)
from .item_events import Batch, ItemEvent, PendingItemEvents

__all__ = ["ConversationState", "CreateItem", "DeleteItem", "Operation", "Outcome"]

_MAX_WARNED_IDS = 10_000


@dataclass(frozen=True)
class CreateItem:
    """Send ``conversation.item.create`` of ``item`` after ``previous_item_id`` (``"root"``)."""

    event_id: str
    item: llm.ChatItem
    previous_item_id: str


@dataclass(frozen=True)
class DeleteItem:
    """Send ``conversation.item.delete`` of ``item_id``."""

    event_id: str
    item_id: str


Operation = CreateItem | DeleteItem

OutcomeKind = Literal["skipped", "lost", "not_replayed", "unexpected"]


@dataclass(frozen=True)
class Outcome:
    """Something the caller should know about (and log): the state has already dealt with it.

    Attributes:
        kind: ``"skipped"`` (a local item the protocol cannot carry, or part of it),
            ``"lost"`` (items a new connection cannot get back: content unknown),
            ``"not_replayed"`` (items with nothing to send, e.g. a voice turn transcribed as
            ""), ``"unexpected"`` (a server event that does not fit the conversation).
        message: One line saying what and why.
        item_ids: The items concerned.
    """

    kind: OutcomeKind
    message: str
    item_ids: tuple[str, ...] = ()


class ConversationState:
    """The client's whole knowledge of one realtime conversation, across its connections.

    Args:
        protocol: Names the protocol in outcome messages.
        images: Whether the protocol carries images in user messages.
        warned: Item ids already reported as skipped, shared by the sessions of a model.
        new_event_id: Makes a client event id from a prefix.
    """

    def __init__(
        self,
        *,
        protocol: str,
        images: bool = False,
        warned: set[str] | None = None,
        new_event_id: Callable[[str], str] = utils.shortuuid,
    ) -> None:
        self.protocol = protocol
        self.images = images
        self.remote = RemoteConversation()
        self.events = PendingItemEvents()
        self.outcomes: list[Outcome] = []
        self.connection = 0
        """counts connections: bumped when one is lost"""
        self.replay: Batch | None = None
        """the replay on the current connection, until the service has answered it"""
        self._warned = warned if warned is not None else set()
        self._new_event_id = new_event_id
        self._heard: dict[str, str] = {}  # truncate()'s transcripts, until the service confirms
        self._text_truncates: dict[str, str] = {}  # text-only truncates of replies not done yet
        # replies and calls the service ended before it reported the item (GA may do so)
        self._ended_early: dict[str, tuple[llm.ChatItem, bool]] = {}
        self._unconfirmed: set[str] = set()  # ids a replay re-creates, until held again
        # local copies of held items a sync planned and has not completed yet
        self._completions: deque[llm.ChatItem] = deque()
        # while a replay's operations are still being built: its creates are not all tracked
        self._replay_building = False

    # ------------------------------------------------------------------------------ syncs

    def protocol_items_steps(self, chat_ctx: llm.ChatContext) -> Steps[list[llm.ChatItem]]:
        """The items of ``chat_ctx`` the service should hold (see ``chat_sync``), in steps.

        Raises:
            ChatContextSyncError: Two items map to the same id; nothing is to be sent.
        """
        items, warnings = yield from protocol_items_steps(
            chat_ctx, self.remote, warned=self._warned, protocol=self.protocol, images=self.images
        )
        self._skipped(warnings)
        return items

    def _skipped(self, warnings: list[tuple[str, str]]) -> None:
        for item_id, message in warnings:
            self.outcomes.append(Outcome("skipped", message, (item_id,)))
        if len(self._warned) > _MAX_WARNED_IDS:
            self._warned.clear()

    def sync_steps(self, chat_ctx: llm.ChatContext, *, since: int) -> Steps[SyncPlan]:
        """Plan the sync of ``chat_ctx``: :meth:`protocol_items_steps` then :meth:`plan_steps`,
        in steps. A context that holds the settled view as it is and new items after it (the
        common sync: a message added) is planned from its new items alone, to the same plan
        (see ``chat_sync.appended_sync_steps``).

        Raises:
            ChatContextSyncError: Two items map to the same id; nothing is to be sent.
        """
        fast = yield from appended_sync_steps(
            self.remote,
            chat_ctx,
            since=since,
            warned=self._warned,
            protocol=self.protocol,
            images=self.images,
        )
        if fast is None:
            items = yield from self.protocol_items_steps(chat_ctx)
            return (yield from self.plan_steps(items, since=since))
        _, warnings, plan = fast
        self._skipped(warnings)
        # every item of the view is held: no replayed item is left unconfirmed (unless a
        # replay began meanwhile)
        if not self._replay_building:
            self._unconfirmed.clear()
        return plan

    def plan_steps(self, items: list[llm.ChatItem], *, since: int) -> Steps[SyncPlan]:
        """Plan the sync of ``items`` (see ``chat_sync.plan_sync_steps``), in steps.

        The local copies of items the sync keeps become their known content.
        """
        # a sync given up mid-way left completions (the caller completes them before it takes
        # ``since``, see ``ChatSyncIO.update_chat_ctx``; those left since come from a sync that
        # ran after it began, as in an unsliced order)
        yield from self.complete_steps()
        plan = yield from plan_sync_steps(self.remote, items, since=since)
        self._completions.extend(plan.held)
        yield from self.complete_steps()
        # replayed items the service never confirmed and the context no longer holds: gone
        if self._unconfirmed:
            wanted: set[str] = set()
            for n, item in enumerate(items, 1):
                if n % STEP_ITEMS == 0:
                    yield
                wanted.add(item.id)
            for n, item_id in enumerate(list(self._unconfirmed), 1):
                if n % STEP_ITEMS == 0:
                    yield
                r = self.remote.get(item_id)
                if r is None or r.held:
                    self._unconfirmed.discard(item_id)
                elif (
                    item_id not in wanted
                    and not self._replay_building  # its create may be still to come
                    and not self.events.live("create", item_id)
                ):
                    self.remote.remove(item_id)
                    self._unconfirmed.discard(item_id)
        return plan

    def complete_steps(self) -> Steps[None]:
        """Complete the held items a sync planned, in steps (each completion is one item's own).

        An item whose content became known meanwhile (its transcript or its reply's end came
        between two steps) keeps what the service said, as it would had the sync run before
        that event; a replay that begins between two steps completes the rest first (see
        :meth:`replay_steps`), as it would had the sync run unsliced before it, and so does the
        next sync when this one was given up (its plan was made, only its events were not sent),
        before it takes the revision it plans from.
        """
        pending = self._completions
        done = 0
        while pending:
            held = pending.popleft()
            r = self.remote.get(held.id)
            if r is not None and r.known_at is None:
                self.remote.complete(held.id, held)
            done += 1
            if done % STEP_ITEMS == 0 and pending:
                yield

    def operations(self, plan: SyncPlan, batch: Batch) -> Iterator[Operation]:
        """The operations of ``plan``, each tracked in ``batch``: deletes, then each run last
        item first (each create goes right after the insertion's anchor).

        Made as the caller iterates, so that each reflects the state at that moment: an item
        the service got meanwhile (a late answer to an earlier create) is deleted just before
        its create.
        """
        return self._operations(plan, batch, replay=False)

    def _operations(self, plan: SyncPlan, batch: Batch, *, replay: bool) -> Iterator[Operation]:
        for item_id in plan.deletes:
            delete = DeleteItem(self._new_event_id("chat_ctx_delete_"), item_id)
            self.events.track(ItemEvent("delete", item_id, delete.event_id, batch=batch))
            yield delete
        for insertion in plan.insertions:
            anchor = "root" if insertion.anchor is None else insertion.anchor
            for item in reversed(insertion.items):
                if not replay and self._taken_meanwhile(item.id):
                    # a late answer to a create that timed out put it there since the plan was
                    # made: moved where this sync wants it, not refused as a duplicate id
                    delete = DeleteItem(self._new_event_id("chat_ctx_delete_"), item.id)
                    self.events.track(ItemEvent("delete", item.id, delete.event_id, batch=batch))
                    yield delete
                create = CreateItem(self._new_event_id("chat_ctx_create_"), item, anchor)
                origin: Literal["client", "server"] = (
                    "server" if item.id in plan.replaced else "client"
                )
                self.events.track(
                    ItemEvent(
                        "create",
                        item.id,
                        create.event_id,
                        item=item,
                        origin=origin,
                        batch=batch,
                        replay=replay,
                    )
                )
                yield create

    def _taken_meanwhile(self, item_id: str) -> bool:
        """Whether the service holds an item a plan creates, and no delete of it is pending."""
        remote = self.remote.get(item_id)
        return remote is not None and remote.held and not self.events.live("delete", item_id)

    def text_truncation_steps(self, message_id: str, text: str) -> Steps[list[llm.ChatItem] | None]:
        """The user heard only ``text`` of the reply ``message_id`` and no audio is cut: the
        items to sync so that the service holds that text, or None (nothing to do, or to be
        done once the reply is done, see :meth:`reply_done`), in steps."""
        remote = self.remote.get(message_id)
        if remote is None or not text or remote.item.type != "message":
            return None
        if remote.known_at is None:
            self._text_truncates[message_id] = text  # the reply still streams: once it is done
            return None
        local: list[llm.ChatItem] = []
        for n, r in enumerate(self.remote, 1):
            if n % STEP_ITEMS == 0:
                yield
            item = r.item
            if item.id == message_id:
                item = item.model_copy(update={"content": [text]})
            local.append(item)
        return local

    def truncate(self, message_id: str, heard: str) -> None:
        """The audio of reply ``message_id`` is cut where the user stopped hearing ``heard``;
        the service confirms with :meth:`truncated`."""
        self._heard[message_id] = heard

    # ------------------------------------------------------------------------- connection

    def replay_steps(self, batch: Batch) -> Generator[Operation | None, None, None]:
        """A new connection starts with an empty conversation: the operations that re-create
        the view on it, to send before any other event, each tracked in ``batch``.

        Yields None where the caller may pause and each operation as soon as it is made, so
        that the caller sends the replay as it is built. Items that cannot be re-created leave
        the view (see ``outcomes``); the others stay in it, not held by the service until
        their create is confirmed.
        """
        self.replay = batch
        self._replay_building = True
        try:
            # a sync's completions still to do come first, as if it had run unsliced
            yield from self.complete_steps()
            yield from self._replay_operations(batch)
        finally:
            self._replay_building = False

    def _replay_operations(self, batch: Batch) -> Generator[Operation | None, None, None]:
        insertions, lost, empty = yield from plan_replay_steps(self.remote)
        if lost:
            listed = yield from _quoted_steps(lost)
            self.outcomes.append(
                Outcome(
                    "lost",
                    "cannot replay items on the new connection: the service held audio for "
                    f"them and no transcript of it arrived: {listed}",
                    tuple(lost),
                )
            )
        if empty:
            listed = yield from _quoted_steps(empty)
            self.outcomes.append(
                Outcome(
                    "not_replayed",
                    "not replaying items that hold nothing to send (the service rejects empty "
                    f"messages): {listed}",
                    tuple(empty),
                )
            )
        # the items that leave the view, a step at a time (each removal bumps ``changes``)
        for n, item_id in enumerate(itertools.chain(lost, empty), 1):
            if n % STEP_ITEMS == 0:
                yield None
            if item_id in self.remote:  # a delete the service reported between two steps
                self.remote.remove(item_id)
        unconfirmed: set[str] = set()
        self.remote.changes += 1  # the items are not held from now on, one step at a time
        for n, r in enumerate(self.remote, 1):
            if n % STEP_ITEMS == 0:
                self.remote.changes += 1
                yield None
            r.held = False
            unconfirmed.add(r.item.id)
        self.remote.changes += 1
        self._unconfirmed = unconfirmed
        yield from self._operations(SyncPlan(insertions=insertions), batch, replay=True)

    def replay_not_sent(self, batch: Batch) -> None:
        """Sending the replay failed: the next connection replays the view again."""
        self.events.fail(ChatContextSyncError("replay not sent"), batch=batch)
        if self.replay is batch:
            self.replay = None

    def replay_answered(self, batch: Batch) -> None:
        """The service answered every create of the replay (or the wait for it ended)."""
        if self.replay is batch:
            self.replay = None

    def connection_lost(self) -> None:
        """The connection dropped: what the client knew of replies in flight on it is void."""
        self.connection += 1
        self._ended_early.clear()

    def connection_closed(self) -> None:
        """The connection is gone: what was meant for it and not answered never will be."""
        for _ in self.connection_closed_steps():
            pass

    def connection_closed_steps(self) -> Generator[None, None, None]:
        """:meth:`connection_closed`: its operations leave the books before the first step,
        and their callers get the failure in steps (see ``PendingItemEvents.fail_steps``)."""
        yield from self.events.fail_steps(
            ChatContextSyncError("the connection to the realtime service closed before it answered")
        )

    def close(self) -> None:
        """The session closes: every pending and later operation fails at once."""
        for _ in self.close_steps():
            pass

    def close_steps(self) -> Generator[None, None, None]:
        """:meth:`close`, its pending operations failed in steps (later ones fail at once)."""
        yield from self.events.close_steps(
            ChatContextSyncError("the realtime session closed before the service answered")
        )

    def sent(self, event_id: str | None) -> None:
        """An event went out on the connection."""
        if event_id and (item_ev := self.events.get(event_id)):
            item_ev.sent = True

    def cancelled(self, event_id: str | None) -> bool:
        """Whether an event about to be sent failed before it went out: then it is not sent."""
        return bool(event_id) and self.events.cancelled(event_id or "")

    # ---------------------------------------------------------------- the service's events

    def item_added(
        self, item_id: str, previous_item_id: str | None, server_item: Callable[[], llm.ChatItem]
    ) -> None:
        """The service holds a new item: ours is recorded as it was sent (a replayed one takes
        its place in the view again, as a plain text item); what the service made itself has no
        content the client knows until its transcript or end."""
        sent = self.events.confirmed("create", item_id)
        existing = self.remote.get(item_id)
        if sent is not None and sent.item is not None and existing is not None and sent.replay:
            existing.origin, existing.audio = "client", False
            self.remote.replaced(item_id, sent.item, held=True)
            return
        if existing is not None and not existing.held and self.replay is None:
            # a replayed item that got no answer, created again by a sync: it stands where the
            # service put it now
            self.remote.remove(item_id)
        if item_id in self.remote:
            self.outcomes.append(
                Outcome("unexpected", f"the service reported item `{item_id}` twice", (item_id,))
            )
            return
        if previous_item_id is not None and previous_item_id not in self.remote:
            # after an item whose confirmation was lost: the view keeps it, at the end
            self.outcomes.append(
                Outcome(
                    "unexpected",
                    f"item `{item_id}` follows `{previous_item_id}`, which the client does not "
                    "know: it is placed last",
                    (item_id,),
                )
            )
            last = self.remote.last()
            previous_item_id = last.item.id if last is not None else None
        if sent is not None and sent.item is not None:
            self.remote.add(sent.item, previous_item_id, origin=sent.origin)
        elif (ended := self._ended_early.pop(item_id, None)) is not None:
            item, audio = ended
            self.remote.add(item, previous_item_id, origin="server", audio=audio)
        else:
            self.remote.add(server_item(), previous_item_id, origin="server", known=False)

    def item_deleted(self, item_id: str) -> None:
        """The service deleted an item."""
        self.events.confirmed("delete", item_id)
        try:
            self.remote.remove(item_id)
        except (ValueError, KeyError) as e:
            self.outcomes.append(
                Outcome("unexpected", f"failed to delete item `{item_id}`: {e}", (item_id,))
            )

    def item_rejected(
        self, event_id: str | None, code: str | None, message: str, param: str | None
    ) -> bool | None:
        """An ``error`` event: None when it is about no item event, else whether a caller waits
        for it (then it gets the error; else the session reports it as any other error)."""
        if event_id and self.events.taken_over(event_id) is not None:
            return True  # the service held the item already: the sync got what it asked for
        if not event_id or (item_ev := self.events.get(event_id)) is None:
            return None
        awaited = item_ev.awaited
        remote = self.remote.get(item_ev.item_id)
        # a refused delete of an item the service lacks, or a refused replay create
        drop = (item_ev.kind == "delete" and code == "item_delete_invalid_item_id") or (
            item_ev.replay and remote is not None and not remote.held
        )
        if drop and remote is not None:
            # the service does not hold the item: neither does the view
            self.remote.remove(item_ev.item_id)
        error = ChatContextSyncError(
            f"{message} (code `{code}`, item `{item_ev.item_id}`, event `{event_id}`)",
            code=code,
            param=param,
            event_id=event_id,
            item_id=item_ev.item_id,
        )
        self.events.rejected(event_id, error)
        return awaited

    def transcript(self, item_id: str, transcript: str, confidence: float | None) -> None:
        """A user turn's transcript arrived (possibly ""): its content is known."""
        if (remote := self.remote.get(item_id)) and remote.item.type == "message":
            self.remote.complete(
                item_id,
                remote.item.model_copy(
                    update={"content": [transcript], "transcript_confidence": confidence}
                ),
            )

    def truncated(self, item_id: str) -> None:
        """``conversation.item.truncated``: the reply holds what the user heard."""
        if (heard := self._heard.pop(item_id, None)) is not None:
            self.remote.truncate(item_id, heard)

    def reply_done(self, item_id: str, text: str, *, audio: bool) -> str | None:
        """A reply message ended with ``text`` (its transcript, or what was streamed).

        Returns:
            The text the user heard of it, when a text-only truncation waited for its end: the
            caller syncs it now (see :meth:`text_truncation_steps`).
        """
        content: list[llm.ChatContent] = [text] if text else []
        if (remote := self.remote.get(item_id)) is None:
            item = llm.ChatMessage(id=item_id, role="assistant", content=content)
            self._ended_early[item_id] = (item, audio)
            return None
        if remote.item.type != "message":
            return None
        remote.audio = audio and remote.origin == "server"
        self.remote.complete(item_id, remote.item.model_copy(update={"content": content}))
        return self._text_truncates.pop(item_id, None)

    def reply_pending(self, item_id: str) -> bool:
        """Whether a reply's content is still unknown (its end has not arrived)."""
        remote = self.remote.get(item_id)
        return remote is not None and remote.known_at is None

    def function_call_done(self, call: llm.FunctionCall) -> None:
        """A function call the service made is complete: the view had no arguments yet."""
        if call.id in self.remote:
            self.remote.complete(call.id, call)
        else:
            self._ended_early[call.id] = (call, False)


def _quoted_steps(item_ids: list[str]) -> Steps[str]:
    """``item_ids`` as an outcome lists them (`` `a`, `b` ``), in steps."""
    parts: list[str] = []
    for start in range(0, len(item_ids), STEP_ITEMS):
        if start:
            yield
        parts.extend([f"`{i}`" for i in item_ids[start : start + STEP_ITEMS]])
    return ", ".join(parts)
