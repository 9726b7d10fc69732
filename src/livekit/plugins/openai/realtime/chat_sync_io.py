"""The asyncio side of the realtime conversation, shared by both realtime sessions.

:mod:`conversation` decides (what the service holds, what to send, what an answer means);
:class:`ChatSyncIO` runs it on a session: it serialises the syncs, waits for the connection
(and, after a reconnect, for the replay), queues the operations as the session's protocol
events, waits for their answers with the 5 s timeout, keeps later client requests
(``response.create``, ``session.update``) behind the syncs asked for before them, logs the
state's outcomes, and on close ends the session's main task within a bound. It opens no socket:
the session gives it how to queue an event and how to write an operation in its protocol, and
tells it what the service said.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from livekit.agents import llm, utils

from ..log import logger
from .chat_sync import ChatContextSyncError, RemoteConversation, SyncPlan
from .conversation import ConversationState, CreateItem, Operation
from .item_events import Batch, PendingItemEvents
from .loop_slicer import LoopSlicer, drain_sliced

__all__ = [
    "ACLOSE_LIMIT",
    "ACLOSE_TIMEOUT",
    "CHAT_CTX_SYNC_TIMEOUT",
    "ChatSyncIO",
    "ReplyRequests",
    "decode_server_event",
    "item_event_writer",
    "spoken",
]

# update_chat_ctx gives up when the service has answered none of its pending events for this long
CHAT_CTX_SYNC_TIMEOUT = 5.0
# client events that wait for the syncs asked for before them
_ORDERED_EVENTS = ("response.create", "session.update")
# connections a sync may be planned on before a drop fails it
_SYNC_ATTEMPTS = 3
_DROPPED_DURING_SYNC = "the connection to the realtime service closed during the sync"
# generate_reply gives up when the service has not created the response this long after the
# request went out (upstream's timeout, counted from when it leaves the queue of held requests)
GENERATE_REPLY_TIMEOUT = 5.0
# aclose() lets the session's main task end by itself (the send loop sends what is queued, then
# closes the socket) while it sends something every this many seconds, then cancels it, and waits
# as long again after each cancel: a service that stopped reading the socket would block the
# send loop's writes forever
ACLOSE_TIMEOUT = 3.0
# ...and cancels it after this long even on a link that still takes writes
ACLOSE_LIMIT = 30.0
# cancels aclose() tries before it leaves a main task that keeps ignoring them (logged)
_ACLOSE_CANCELS = 3


class ChatSyncIO:
    """Runs the conversation of one realtime session on its connection.

    Args:
        protocol: Names the protocol in warnings.
        images: Whether the protocol carries images in user messages.
        warned: Item ids already warned about, shared by the sessions of a model.
        queue_event: Queues a client event on the session's connection, at once.
        wire_event: Writes an operation as the protocol's client event.
        closed: Whether the session is closed, or its connection failed for good.
    """

    def __init__(
        self,
        *,
        protocol: str,
        images: bool,
        warned: set[str],
        queue_event: Callable[[Any], None],
        wire_event: Callable[[Operation], Any],
        closed: Callable[[], bool],
    ) -> None:
        self.state = ConversationState(protocol=protocol, images=images, warned=warned)
        self._queue_event = queue_event
        self._wire_event = wire_event
        self._closed = closed
        self._lock = asyncio.Lock()
        # set while syncs may use the connection: it is up and, after a reconnect, the replay of
        # the conversation is answered; cleared when the connection drops
        self.ready = asyncio.Event()
        # set once the session closes: a connection attempt or a retry's wait stops there
        self.closing = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # failures of many pending operations at once, settled in slices (see ``_settle``)
        self._settling: set[asyncio.Task[None]] = set()
        # syncs asked for and not yet queued, and the requests asked for after them
        self._open_syncs: deque[int] = deque()
        self._held_back: deque[tuple[int, Any]] = deque()
        self._sync_count = 0
        self._sent_count = 0  # events written: how stop() tells a slow link from a stalled one
        self.replies = ReplyRequests()
        # why the session's connection failed for good, once it did (see ``failed``)
        self.failure: str | None = None

    @classmethod
    def of_session(
        cls, session: Any, protocol: str, *, images: bool, wire: Callable[[Operation], Any]
    ) -> ChatSyncIO:
        """The runner of a realtime session of this plugin (either protocol): it queues on the
        session's channel, shares the model's warned ids, and the session is closed once its
        channel is or its main task ended."""
        return cls(
            protocol=protocol,
            images=images,
            warned=session._realtime_model._warned_item_ids,
            queue_event=session._queue_event,
            wire_event=wire,
            closed=lambda: session._msg_ch.closed or session._main_atask.done(),
        )

    @property
    def remote(self) -> RemoteConversation:
        """The view of the service's conversation (the session's ``chat_ctx``)."""
        return self.state.remote

    @property
    def events(self) -> PendingItemEvents:
        return self.state.events

    # ---------------------------------------------------------------------------------- syncs

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        """Bring the service's conversation in line with ``chat_ctx`` (see ``chat_sync``).

        A connection that drops before the service answered does not fail the sync: it is
        planned again against the conversation the next connection replays.

        Raises:
            ChatContextSyncError: Two items of ``chat_ctx`` share an id (nothing is sent), the
                service rejected part of the sync (what it accepted stays), it answered nothing
                for 5 seconds, the connection dropped on every attempt, or the session is closed.
        """
        ticket = self._open_sync()
        try:
            # a given-up sync's completions are older than ``chat_ctx``: done before ``since``
            await drain_sliced(self.state.complete_steps(), LoopSlicer())
            since = self.remote.revision  # what becomes known from now on, chat_ctx cannot hold
            async with self._lock:
                for attempt in range(1, _SYNC_ATTEMPTS + 1):
                    await self._wait_ready()
                    connection = self.state.connection
                    # one budget for the whole sync: each slice of it, planning or queueing,
                    # yields to the event loop once it has run MAX_SLICE
                    slicer = LoopSlicer()
                    plan = await drain_sliced(self.state.sync_steps(chat_ctx, since=since), slicer)
                    self._log_outcomes()
                    if self.state.connection != connection and not self._closed():
                        # the connection dropped while the plan was made: it was made for a
                        # conversation the replay changed (an item it lost is still in it)
                        if attempt == _SYNC_ATTEMPTS:
                            raise ChatContextSyncError(_DROPPED_DURING_SYNC)
                        continue
                    batch = await self._queue_plan(plan, slicer, connection) if plan else None
                    self._close_sync(ticket)
                    if batch is None:
                        return
                    try:
                        await self._wait(batch)
                        # the view as a list for ``chat_ctx`` and the next sync, made in slices
                        await drain_sliced(self.remote.snapshot_steps(), slicer)
                        return
                    except ChatContextSyncError:
                        dropped = self.state.connection != connection and not self._closed()
                        if not dropped or attempt == _SYNC_ATTEMPTS:
                            raise
                    # requests asked for from now on wait for the sync's next attempt too
                    ticket = self._open_sync()
        finally:
            self._close_sync(ticket)

    def send_ordered(self, event: Any) -> None:
        """Queue a client request after the operations of the syncs asked for before it."""
        if self._open_syncs:
            self._held_back.append((self._sync_count, event))
        else:
            self._release(event)

    def _release(self, event: Any) -> None:
        if self._closed():
            # held back while the session closed or its connection failed for good
            self.replies.fail_all("the realtime session closed before the reply was created")
            return
        self._queue_event(event)
        event_id = (
            event.get("event_id") if isinstance(event, dict) else getattr(event, "event_id", None)
        )
        if event_id:
            self.replies.start_timer(event_id)

    def queue(self, event: Any) -> None:
        """The session's ``send_event``: requests wait for earlier syncs, the rest goes at once."""
        kind = event.get("type") if isinstance(event, dict) else getattr(event, "type", None)
        if kind in _ORDERED_EVENTS:
            self.send_ordered(event)
        else:
            self._queue_event(event)

    def _open_sync(self) -> int:
        self._sync_count += 1
        self._open_syncs.append(self._sync_count)
        return self._sync_count

    def _close_sync(self, ticket: int) -> None:
        if ticket not in self._open_syncs:
            return
        self._open_syncs.remove(ticket)
        oldest = self._open_syncs[0] if self._open_syncs else None
        while self._held_back and (oldest is None or self._held_back[0][0] < oldest):
            self._release(self._held_back.popleft()[1])

    async def _wait_ready(self) -> None:
        """Wait until syncs may use the connection (see ``ready``).

        Raises:
            ChatContextSyncError: The session is closed, or its connection failed for good.
        """
        if not self._closed():
            await self.ready.wait()
        if self.failure is not None:
            raise ChatContextSyncError(f"update_chat_ctx: the realtime session {self.failure}")
        if self._closed():
            raise ChatContextSyncError("update_chat_ctx called on a closed realtime session")

    async def _queue_plan(self, plan: SyncPlan, slicer: LoopSlicer, connection: int) -> Batch:
        """Queue the events of a plan made on ``connection``; returns the batch that tracks
        their answers."""
        batch = Batch()
        for op in self.state.operations(plan, batch):
            if connection != self.state.connection:
                # the connection dropped while the plan was made or its events were built: the
                # rest was made for a conversation the next connection will not have
                self.events.fail(
                    ChatContextSyncError(_DROPPED_DURING_SYNC),
                    batch=batch,
                )
                # tracked, never queued: nothing will ask whether it may go out
                self.state.cancelled(op.event_id)
                break
            self._queue_event(self._wire_event(op))
            await slicer.tick()
        return batch

    async def _wait(self, batch: Batch) -> None:
        """Wait until the service has answered every event of ``batch``; raise its errors.

        Raises:
            ChatContextSyncError: The service rejected events, answered none of them for
                ``CHAT_CTX_SYNC_TIMEOUT`` seconds, or they failed (connection or session closed).
        """
        if not batch.done:
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            last_answer = loop.time()

            def _settled() -> None:
                nonlocal last_answer
                last_answer = loop.time()
                if batch.done and not done.done():
                    done.set_result(None)

            batch.on_settle = _settled
            while not batch.done:
                idle = loop.time() - last_answer
                if idle >= CHAT_CTX_SYNC_TIMEOUT:
                    self.events.expire(
                        batch,
                        ChatContextSyncError(
                            f"update_chat_ctx timed out: the realtime service answered none of "
                            f"{batch.remaining} pending events for {CHAT_CTX_SYNC_TIMEOUT:g}s"
                        ),
                    )
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), CHAT_CTX_SYNC_TIMEOUT - idle)
            batch.on_settle = None
        if (error := batch.error()) is not None:
            raise error

    def truncate(self, message_id: str, heard: str, *, audio: bool) -> None:
        """The user heard ``heard`` of the reply ``message_id`` (``audio``: the audio is cut).

        With audio, the service cuts its copy and ``conversation.item.truncated`` sets it in the
        view; without, the reply's text is replaced (once the reply is done).
        """
        if audio:
            self.state.truncate(message_id, heard)
        else:
            self._spawn(self._replace_text(message_id, heard))

    async def _replace_text(self, message_id: str, text: str) -> None:
        ticket = self._open_sync()
        try:
            async with self._lock:
                try:
                    await self._wait_ready()
                except ChatContextSyncError:
                    return
                connection = self.state.connection
                # taken before the build, whose steps a transcript may land between
                since = self.remote.revision
                slicer = LoopSlicer()
                steps = self.state.text_truncation_steps(message_id, text)
                local = await drain_sliced(steps, slicer)
                if local is None:
                    return
                plan = await drain_sliced(self.state.plan_steps(local, since=since), slicer)
                batch = await self._queue_plan(plan, slicer, connection)
                self._close_sync(ticket)
                try:
                    await self._wait(batch)
                except ChatContextSyncError as e:
                    logger.warning(f"failed to sync the truncated message `{message_id}`: {e}")
        finally:
            self._close_sync(ticket)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_outcomes(self) -> None:
        outcomes, self.state.outcomes = self.state.outcomes, []
        for outcome in outcomes:
            logger.warning(outcome.message)

    # --------------------------------------------------------------------------- connection

    def connected(self) -> None:
        """The first connection is up: syncs may use it."""
        self.ready.set()

    async def replay(self, send: Callable[[Any], Awaitable[None]]) -> None:
        """A new connection starts with an empty conversation: send the events that replay
        ours with ``send``, before any other, as they are built (sliced by the time budget).
        Once they are sent, syncs wait for the service's answers to them.

        Raises:
            Exception: What ``send`` raised; the next connection replays the view again.
        """
        replay = Batch()
        slicer = LoopSlicer()
        steps = self.state.replay_steps(replay)
        sent_all = False
        unsent: str | None = None  # an operation tracked and not sent (yet)
        try:
            # the session's own handshake events went out in this callback: the replay starts
            # in a slice of its own (nothing else is sent on the new connection meanwhile)
            await asyncio.sleep(0)
            for op in steps:
                unsent = op.event_id if op is not None else None
                if self._closed():
                    break  # the session closes: the rest of the replay would go nowhere
                if op is not None:
                    await send(self._wire_event(op))
                    unsent = None
                    self.state.sent(op.event_id)
                await slicer.tick()
            else:
                sent_all = True
        finally:
            if not sent_all:
                steps.close()
                self.state.replay_not_sent(replay)
                if unsent is not None:
                    # never sent, and nothing will ask whether it may go out
                    self.state.cancelled(unsent)
            self._log_outcomes()
        if sent_all:
            self._spawn(self._await_replay(replay, self.state.connection))

    async def _await_replay(self, replay: Batch, connection: int) -> None:
        """Open the connection to syncs once the service has answered the replay."""
        try:
            await self._wait(replay)
        except ChatContextSyncError as e:
            logger.warning(f"the conversation was not fully replayed on the new connection: {e}")
        self._log_outcomes()
        self.state.replay_answered(replay)
        if connection == self.state.connection:
            self.ready.set()

    def connection_lost(self) -> None:
        """The connection dropped: syncs wait for the next one."""
        self.ready.clear()
        self.state.connection_lost()

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

    def connection_closed(self, reply_error: str) -> None:
        """The connection is gone: what was meant for it and not answered never will be."""
        self._settle(self.state.connection_closed_steps())
        self.replies.fail_all(reply_error)

    def close(self) -> None:
        """The session closes: every pending and later sync and reply fails at once."""
        self._settle(self.state.close_steps())
        self.replies.fail_all("the realtime session closed before the reply was created")
        self.ready.set()  # wake the syncs waiting for a connection: they fail
        self.closing.set()

    def failed(self, error: Exception) -> None:
        """The connection failed for good (``error`` says why): syncs and replies waiting for
        it, and later ones, fail at once with that cause."""
        self.failure = f"failed: {error}"
        self.replies.failure = f"the realtime session {self.failure}"
        self.replies.fail_all(self.replies.failure)
        self.ready.set()

    def _settle(self, steps: Generator[None, None, None]) -> None:
        """Fail many pending operations: at once they leave the books (the first step), then
        their callers get the failure in slices, so that thousands of them do not hold the
        event loop; a cancelled slicing settles the rest at once."""
        try:
            next(steps)
        except StopIteration:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            for _ in steps:
                pass
            return

        async def _sliced() -> None:
            try:
                await drain_sliced(steps)
            finally:
                for _ in steps:
                    pass

        task = asyncio.create_task(_sliced())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def stop(self, main_task: asyncio.Task[None]) -> None:
        """After :meth:`close`: wait for the session's main task while it still sends, then
        cancel it (its connection closes, what waited for it fails).

        The task is cancelled once ``ACLOSE_TIMEOUT`` passes with no event written, or after
        ``ACLOSE_LIMIT`` in all.

        Raises:
            Exception: The main task's own error, when it ended by itself with one.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACLOSE_LIMIT
        written = -1
        # a link that still takes writes is slow, not stalled: it gets up to ACLOSE_LIMIT
        while written != self._sent_count and loop.time() < deadline:
            written = self._sent_count
            if await _wait_task(main_task, ACLOSE_TIMEOUT):
                break
        else:
            if written == self._sent_count:
                logger.warning(
                    f"the realtime session sent nothing for {ACLOSE_TIMEOUT:g}s while closing "
                    f"(the service stopped reading the connection?): cancelling it"
                )
            else:
                logger.warning(
                    f"the realtime session was still sending {ACLOSE_LIMIT:g}s after it was "
                    f"closed: cancelling it"
                )
            for _ in range(_ACLOSE_CANCELS):
                main_task.cancel()
                if await _wait_task(main_task, ACLOSE_TIMEOUT):
                    break
            else:
                logger.error("the realtime session's connection task ignores its cancellation")
                return
        if not main_task.cancelled():
            main_task.result()  # its error, as awaiting it would raise

    async def aclose(self) -> None:
        # every caller gets its failure before the session is closed
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._settling)
        await utils.aio.cancel_and_wait(*self._tasks)

    def should_send(self, msg: dict[str, Any]) -> bool:
        """Whether a queued event still goes out (it may have failed before it was sent)."""
        event_id = msg.get("event_id")
        return not self.state.cancelled(event_id) and self.replies.should_send(event_id)

    def sent(self, msg: dict[str, Any]) -> None:
        """A queued event went out on the connection."""
        self._sent_count += 1
        self.state.sent(msg.get("event_id"))
        self.replies.sent(msg)

    # -------------------------------------------------------------------- the service's events

    def item_created(
        self, item_id: str, previous_item_id: str | None, server_item: Callable[[], llm.ChatItem]
    ) -> None:
        """``conversation.item.created`` (or ``.added``)."""
        self.state.item_added(item_id, previous_item_id, server_item)
        self._log_outcomes()

    def item_deleted(self, item_id: str) -> None:
        self.state.item_deleted(item_id)
        self._log_outcomes()

    def handle_error(
        self, event_id: str | None, code: str | None, message: str, param: str | None
    ) -> bool:
        """An ``error`` event: whether it is fully handled (a caller of ``update_chat_ctx`` or
        ``generate_reply`` gets it); else the session reports it as usual."""
        awaited = self.state.item_rejected(event_id, code, message, param)
        if awaited is None and event_id:
            self.replies.rejected(event_id, message)
        return bool(awaited)

    def transcript(self, item_id: str, transcript: str, confidence: float | None) -> None:
        self.state.transcript(item_id, transcript, confidence)

    def truncated(self, item_id: str) -> None:
        self.state.truncated(item_id)

    def reply_done(self, item_id: str, text: str, *, audio: bool) -> None:
        """A reply message ended with ``text``; ``audio``: it was spoken."""
        if (heard := self.state.reply_done(item_id, text, audio=audio)) is not None:
            self._spawn(self._replace_text(item_id, heard))

    def reply_pending(self, item_id: str) -> bool:
        return self.state.reply_pending(item_id)

    def function_call_done(self, call: llm.FunctionCall) -> None:
        self.state.function_call_done(call)


async def _wait_task(task: asyncio.Task[None], timeout: float) -> bool:
    """Wait for ``task`` to end, ``timeout`` seconds at most; whether it ended. A cancel of the
    caller cancels ``task`` too, as awaiting it would."""
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    return bool(done)


class ReplyRequests:
    """The ``generate_reply`` calls of a session whose response the service has not created.

    ``futures`` is the session's map of them by ``response.create`` event id; a request that
    failed before it went out (timed out, connection or session closed) is never sent.
    """

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[llm.GenerationCreatedEvent]] = {}
        self._sent: set[str] = set()  # response.create events sent on this connection
        self._dropped: set[str] = set()  # ...and those never to be sent
        # why the session's connection failed for good, once it did (later requests fail so)
        self.failure: str | None = None

    def open(self, event_id: str, *, closed: bool) -> asyncio.Future[llm.GenerationCreatedEvent]:
        """A new request; failed at once when the session is closed or its connection failed."""
        fut = asyncio.Future[llm.GenerationCreatedEvent]()
        if self.failure is not None:
            fut.set_exception(llm.RealtimeError(f"generate_reply: {self.failure}"))
        elif closed:
            fut.set_exception(
                llm.RealtimeError("generate_reply called on a closed realtime session")
            )
        else:
            self.futures[event_id] = fut
        return fut

    def start_timer(self, event_id: str) -> None:
        """The request left the queue of held requests: its reply timeout runs from now."""
        fut = self.futures.get(event_id)
        if fut is None or fut.done():
            return

        def _on_timeout() -> None:
            if not fut.done():
                self._drop_unsent(event_id)
                fut.set_exception(llm.RealtimeError("generate_reply timed out."))

        handle = asyncio.get_running_loop().call_later(GENERATE_REPLY_TIMEOUT, _on_timeout)
        fut.add_done_callback(lambda _: handle.cancel())

    def rejected(self, event_id: str, message: str) -> None:
        if (fut := self.futures.pop(event_id, None)) and not fut.done():
            fut.set_exception(
                llm.RealtimeError(f"generate_reply rejected by the service: {message}")
            )

    def fail_all(self, message: str) -> None:
        futures = dict(self.futures)
        self.futures.clear()
        for event_id, fut in futures.items():
            self._drop_unsent(event_id)
            if not fut.done():
                fut.set_exception(llm.RealtimeError(message))
        self._sent.clear()

    def should_send(self, event_id: str | None) -> bool:
        if event_id in self._dropped:
            self._dropped.discard(event_id)
            return False
        return True

    def sent(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "response.create" and msg.get("event_id"):
            self._sent.add(msg["event_id"])

    def _drop_unsent(self, event_id: str) -> None:
        if event_id not in self._sent:
            self._dropped.add(event_id)


def decode_server_event(data: str) -> dict[str, Any] | None:
    """A server text frame as an event, or None (logged) when it is not a JSON event."""
    try:
        event = json.loads(data)
    except ValueError:
        logger.warning(
            "ignoring a message from the realtime service that is not JSON",
            extra={"data": str(data)[:200]},
        )
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        logger.warning(
            "ignoring an event without a type from the realtime service",
            extra={"event": str(event)[:200]},
        )
        return None
    return event


def item_event_writer(
    *,
    create: Callable[..., Any],
    delete: Callable[..., Any],
    to_item: Callable[[llm.ChatItem], Any],
) -> Callable[[Operation], Any]:
    """How a protocol writes the state's operations: its create and delete event types and its
    item conversion."""

    def _write(op: Operation) -> Any:
        if isinstance(op, CreateItem):
            return create(
                type="conversation.item.create",
                item=to_item(op.item),
                previous_item_id=op.previous_item_id,
                event_id=op.event_id,
            )
        return delete(type="conversation.item.delete", item_id=op.item_id, event_id=op.event_id)

    return _write


def spoken(modalities: asyncio.Future[list[Any]]) -> bool:
    """Whether a reply was spoken: its modalities, once known, include audio."""
    return modalities.done() and not modalities.cancelled() and "audio" in modalities.result()
