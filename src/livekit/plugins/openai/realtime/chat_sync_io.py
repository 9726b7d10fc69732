"""The I/O side of chat context syncs, shared by the realtime sessions.

:mod:`chat_sync` decides what to send; :class:`ChatSyncIO` runs it on a session: it keeps the
mirror fed from the service's events, serialises the syncs, waits for the connection (and, after
a reconnect, for the replay), sends the events of a plan through the session and waits for their
answers. It opens no socket: the session gives it how to build and send a protocol's events, and
tells it what the service said and when the connection came and went.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from livekit.agents import llm, utils

from ..log import logger
from .chat_sync import (
    ChatContextSyncError,
    RemoteConversation,
    SyncPlan,
    plan_replay,
    plan_sync,
    plan_sync_steps,
    protocol_items_steps,
)
from .item_events import Batch, PendingItemEvents
from .loop_slicer import LoopSlicer, run_sliced

__all__ = ["CHAT_CTX_SYNC_TIMEOUT", "ChatSyncIO"]

# update_chat_ctx gives up when the service has answered none of its pending events for this long
CHAT_CTX_SYNC_TIMEOUT = 5.0
_MAX_WARNED_IDS = 10_000


class ChatSyncIO:
    """Runs the chat context syncs of one realtime session.

    Args:
        protocol: Names the protocol in warnings.
        warned: Item ids already warned about, shared by the sessions of a model.
        send_event: Queues a client event on the session's connection.
        delete_event: Builds a ``conversation.item.delete`` event for an item id.
        create_event: Builds a ``conversation.item.create`` event for an item, after an item id
            (``"root"``: at the start).
        closed: Whether the session is closed, or its connection failed for good.
    """

    def __init__(
        self,
        *,
        protocol: str,
        warned: set[str],
        send_event: Callable[[Any], None],
        delete_event: Callable[[str], Any],
        create_event: Callable[[llm.ChatItem, str], Any],
        closed: Callable[[], bool],
    ) -> None:
        self._protocol = protocol
        self._warned = warned
        self._send_event = send_event
        self._delete_event = delete_event
        self._create_event = create_event
        self._closed = closed
        self.remote = RemoteConversation()
        self.events = PendingItemEvents()
        self._lock = asyncio.Lock()
        # set while syncs may use the connection: it is up and, after a reconnect, the replay of
        # the conversation is answered (a sync made before then would plan against a half-built
        # mirror); cleared when the connection drops
        self.ready = asyncio.Event()
        self._connection_gen = 0
        self._replay_source: RemoteConversation | None = None  # a replay not answered yet
        self._heard: dict[str, str] = {}  # truncate()'s transcripts, until the service confirms
        self._text_truncates: dict[str, str] = {}  # text-only truncates of replies not done yet
        # when the content of the items a replay re-creates was known (it stays so)
        self._replayed_known: dict[str, int | None] = {}
        # replies and calls the service ended before it reported the item (GA may do so)
        self._ended_early: dict[str, llm.ChatItem] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------------------------- syncs

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        """Bring the service's conversation in line with ``chat_ctx`` (see ``chat_sync``).

        Raises:
            ChatContextSyncError: Two items of ``chat_ctx`` share an id (nothing is sent), the
                service rejected part of the sync (what it accepted stays), it answered nothing
                for 5 seconds, the connection closed first, or the session is closed.
        """
        since = self.remote.revision  # what becomes known from now on, chat_ctx cannot hold
        async with self._lock:
            await self._wait_ready()
            items, warnings = await run_sliced(
                protocol_items_steps(
                    chat_ctx, self.remote, warned=self._warned, protocol=self._protocol
                )
            )
            for warning in warnings:
                logger.warning(warning)
            if len(self._warned) > _MAX_WARNED_IDS:
                self._warned.clear()

            plan = await run_sliced(plan_sync_steps(self.remote, items, since=since))
            for held in plan.held:
                self.remote.complete(held.id, held)
            if plan:
                await self._send_plan(plan)

    async def _wait_ready(self) -> None:
        """Wait until syncs may use the connection (see ``ready``).

        Raises:
            ChatContextSyncError: The session is closed, or its connection failed for good.
        """
        if not self._closed():
            await self.ready.wait()
        if self._closed():
            raise ChatContextSyncError("update_chat_ctx called on a closed realtime session")

    async def _send_plan(self, plan: SyncPlan) -> None:
        """Send a sync plan and wait until the service has answered each of its events."""
        batch = Batch()
        slicer = LoopSlicer()
        connection_gen = self._connection_gen
        for ev in self.plan_events(plan, batch):
            if connection_gen != self._connection_gen:
                # the connection dropped while the events were built: the rest of the plan was
                # made for a conversation the next connection will not have
                self.events.fail(
                    ChatContextSyncError(
                        "the connection to the realtime service closed during the sync"
                    ),
                    batch=batch,
                )
                break
            self._send_event(ev)
            await slicer.tick()
        await self.events.wait(batch, idle_timeout=CHAT_CTX_SYNC_TIMEOUT)

    def plan_events(self, plan: SyncPlan, batch: Batch) -> Iterator[Any]:
        """The events of ``plan``, each tracked in ``batch``: deletes, then each run last first."""
        for item_id in plan.deletes:
            delete_ev = self._delete_event(item_id)
            self.events.track("delete", item_id, delete_ev.event_id, batch=batch)
            yield delete_ev
        for run in plan.runs:
            for item in reversed(run.items):
                create_ev = self._create_event(item, "root" if run.anchor is None else run.anchor)
                self.events.track(
                    "create",
                    item.id,
                    create_ev.event_id,
                    item=item,
                    origin="server" if item.id in plan.replaced else "client",
                    batch=batch,
                )
                yield create_ev

    def truncate(self, message_id: str, heard: str, *, audio: bool) -> None:
        """The user heard ``heard`` of the reply ``message_id`` (``audio``: the audio is cut).

        With audio, the service cuts its copy and ``conversation.item.truncated`` sets it in the
        mirror; without, the reply's text is replaced (once the reply is done).
        """
        if audio:
            self._heard[message_id] = heard
        else:
            self._spawn(self._replace_text(message_id, heard))

    async def _replace_text(self, message_id: str, text: str) -> None:
        async with self._lock:
            try:
                await self._wait_ready()
            except ChatContextSyncError:
                return
            remote = self.remote.get(message_id)
            if remote is None or not text or remote.item.type != "message":
                return
            if remote.known_at is None:
                # the reply is still streaming (its cancel is on its way): replace it once done
                self._text_truncates[message_id] = text
                return
            local = [r.item for r in self.remote.items()]
            idx = next(i for i, item in enumerate(local) if item.id == message_id)
            local[idx] = local[idx].model_copy(update={"content": [text]})
            try:
                await self._send_plan(plan_sync(self.remote, local, since=self.remote.revision))
            except ChatContextSyncError as e:
                logger.warning(f"failed to sync the truncated message `{message_id}`: {e}")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --------------------------------------------------------------------------- connection

    def connected(self) -> None:
        """The first connection is up: syncs may use it."""
        self.ready.set()

    def start_replay(self) -> tuple[list[Any], Callable[[bool], None]]:
        """A new connection starts with an empty conversation: the events that replay ours.

        Returns:
            The events to send on the new connection before any other, and a callback to call
            with whether sending them succeeded.
        """
        # a replay cut short by another drop is planned again from what it was replaying, not
        # from the part of it the dropped connection confirmed
        source = self._replay_source or self.remote
        runs, lost = plan_replay(source)
        if lost:
            logger.warning(
                "cannot replay items on the new connection: the service held audio for them "
                f"and no transcript of it arrived: {', '.join(f'`{i}`' for i in lost)}"
            )
        old_remote = self.remote
        self.remote = RemoteConversation(revision=old_remote.revision)
        self._replay_source = source
        self._replayed_known = {r.item.id: r.known_at for r in source.items()}
        replay = Batch()
        # what the service made stays server-made: replayed as text, it does not move
        server_made = {r.item.id for r in source.items() if r.origin == "server"}
        events = list(self.plan_events(SyncPlan(runs=runs, replaced=server_made), replay))

        def _sent(ok: bool) -> None:
            if not ok:
                self.remote = old_remote
                self.events.fail(ChatContextSyncError("replay not sent"), batch=replay)
                return
            for ev in events:
                self.sent(ev.event_id)
            self._spawn(self._await_replay(replay, self._connection_gen))

        return events, _sent

    async def _await_replay(self, replay: Batch, connection_gen: int) -> None:
        """Open the connection to syncs once the service has answered the replay."""
        try:
            await self.events.wait(replay, idle_timeout=CHAT_CTX_SYNC_TIMEOUT)
        except ChatContextSyncError as e:
            logger.warning(f"the conversation was not fully replayed on the new connection: {e}")
        if connection_gen == self._connection_gen:
            self._replay_source = None
            self._replayed_known.clear()
            self.ready.set()

    def connection_lost(self) -> None:
        """The connection dropped: syncs wait for the next one."""
        self.ready.clear()
        self._connection_gen += 1
        self._ended_early.clear()

    async def quiesce(self) -> None:
        """Before a planned reconnect: let a sync in flight finish (for at most
        ``CHAT_CTX_SYNC_TIMEOUT``), and make the next ones wait for the new connection."""
        try:
            await asyncio.wait_for(self._lock.acquire(), CHAT_CTX_SYNC_TIMEOUT)
        except asyncio.TimeoutError:
            return
        try:
            self.connection_lost()
        finally:
            self._lock.release()

    def connection_closed(self) -> None:
        """The connection is gone: what was meant for it and not answered never will be."""
        self.events.fail(
            ChatContextSyncError("the connection to the realtime service closed before it answered")
        )

    def cancelled(self, event_id: str | None) -> bool:
        """Whether an event about to be sent failed before it went out: then it is not sent."""
        return bool(event_id) and self.events.cancelled(event_id or "")

    def sent(self, event_id: str | None) -> None:
        """An event went out on the connection."""
        if event_id and (item_ev := self.events.get(event_id)):
            item_ev.sent = True

    def close(self) -> None:
        """The session closes: every pending and later sync fails at once."""
        self.events.close(
            ChatContextSyncError("the realtime session closed before the service answered")
        )
        self.ready.set()  # wake the syncs waiting for a connection: they fail

    async def aclose(self) -> None:
        await utils.aio.cancel_and_wait(*self._tasks)

    # -------------------------------------------------------------------- the service's events

    def item_created(
        self, item_id: str, previous_item_id: str | None, server_item: Callable[[], llm.ChatItem]
    ) -> None:
        """``conversation.item.created`` (or ``.added``): ours is recorded as it was sent; what
        the service made itself has no content the client knows until its transcript or end."""
        sent = self.events.confirmed("create", item_id)
        try:
            if sent is not None and sent.item is not None:
                self.remote.add(
                    sent.item,
                    previous_item_id,
                    origin=sent.origin,
                    known_at=self._replayed_known.pop(item_id, None),
                )
            elif (ended := self._ended_early.pop(item_id, None)) is not None:
                self.remote.add(ended, previous_item_id, origin="server")
            else:
                self.remote.add(server_item(), previous_item_id, origin="server", known=False)
        except ValueError as e:
            logger.warning(f"failed to insert item `{item_id}`: {e}")

    def item_deleted(self, item_id: str) -> None:
        try:
            self.remote.remove(item_id)
        except (ValueError, KeyError) as e:
            logger.warning(f"failed to delete item `{item_id}`: {e}")
        self.events.confirmed("delete", item_id)

    def item_rejected(
        self, event_id: str | None, code: str | None, message: str, param: str | None
    ) -> bool | None:
        """An ``error`` event: None when it is about no item event, else whether a sync waits
        for it (then the caller of ``update_chat_ctx`` gets it)."""
        if not event_id or (item_ev := self.events.get(event_id)) is None:
            return None
        awaited = item_ev.batch is not None
        if item_ev.kind == "delete" and code == "item_delete_invalid_item_id":
            # the service does not hold the item: neither should the mirror of it
            with contextlib.suppress(ValueError, KeyError):
                self.remote.remove(item_ev.item_id)
        self.events.rejected(
            event_id,
            ChatContextSyncError(
                f"{message} (code `{code}`, item `{item_ev.item_id}`, event `{event_id}`)",
                code=code,
                param=param,
                event_id=event_id,
                item_id=item_ev.item_id,
            ),
        )
        return awaited

    def transcript(self, item_id: str, transcript: str, confidence: float | None) -> None:
        """A user turn's transcript arrived: its content is known."""
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

    def reply_done(self, item_id: str, text: str) -> None:
        """A reply message ended with ``text`` (its transcript, or what was streamed)."""
        content: list[llm.ChatContent] = [text] if text else []
        if (remote := self.remote.get(item_id)) is None:
            self._ended_early[item_id] = llm.ChatMessage(
                id=item_id, role="assistant", content=content
            )
        elif remote.item.type == "message":
            self.remote.complete(item_id, remote.item.model_copy(update={"content": content}))
            if (heard := self._text_truncates.pop(item_id, None)) is not None:
                self._spawn(self._replace_text(item_id, heard))

    def reply_pending(self, item_id: str) -> bool:
        """Whether a reply's content is still unknown (its end has not arrived)."""
        remote = self.remote.get(item_id)
        return remote is not None and remote.known_at is None

    def function_call_done(self, call: llm.FunctionCall) -> None:
        """A function call the service made is complete: the mirror had no arguments yet."""
        if call.id in self.remote:
            self.remote.complete(call.id, call)
        else:
            self._ended_early[call.id] = call
