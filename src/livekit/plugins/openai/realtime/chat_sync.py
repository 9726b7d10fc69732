"""What a realtime session must send so that the service's conversation matches a chat context.

This module does no I/O. :class:`RemoteConversation` is the client's view of the service's
conversation, which ``conversation.ConversationState`` keeps; :func:`plan_sync_steps` turns it and a
local chat context into a :class:`SyncPlan` of deletes and creates; :func:`plan_replay_steps` gives
what a new connection must be sent again.

The rule:

- Only items the protocol can carry are sent (:func:`protocol_items_steps`). The framework's
  bookkeeping (agent handoffs, config updates) and the agent instructions (sent as session
  instructions) are left out. A message with nothing the protocol carries, an output for an
  unknown function call or an unknown item type is skipped, with one warning per item id; but
  an empty message whose id the service holds (a voice turn transcribed as "") is that item,
  left as it is. An id the service refuses (over 32 characters, or a character other than
  ASCII letters, digits, ``_`` and ``-``) is mapped to a stable short one.
- An item the service made itself (user speech, a reply) whose content the client cannot know
  yet (a transcript pending or never coming, a reply not done) is kept: never deleted or
  re-created because the local context lacks it or holds it elsewhere. An item whose content
  became known after the sync began counts as unknown for that sync: the caller's context
  could not hold it (also once a replay has re-created it as the client's text item).
- A user voice turn whose transcript is known keeps its place too (its local message is
  appended when the transcript arrives, so its local position says nothing): absent from the
  local context it is deleted; with its text changed it is replaced by a text item at the same
  position; held as its own transcript text it stays, audio and all.
- Every other item stands on the service in the local relative order after the sync. The
  items that stay are a common subsequence of the service's order and the local one: a spoken
  reply of the service weighs more than all other items together (re-created, it would lose its
  audio), then as few items as possible are re-created. Without a spoken reply to keep this is
  the subsequence ``llm.utils.compute_chat_ctx_diff`` keeps, with its operations (and an edited
  item is replaced, which upstream ignores), in O(n log n) time for unique ids.
- A replayed item the service never confirmed counts as absent: the sync creates it again.
- Creates are anchored only on items the service has confirmed. Consecutive new items form one
  run, all inserted after the insertion's anchor, last item first, so that a rejected create never
  makes another create of the same sync fail. The one exception is a function call output
  whose call is created by the same sync: the service wants the call first, so the output,
  and the new items between it and the last new call before it, are created after that call
  and fail with it.
- A truncated reply holds what the user heard (``RemoteConversation.truncate``), whatever the
  service streamed past it; a replay sends that.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from livekit.agents import llm
from livekit.agents.voice.generation import INSTRUCTIONS_MESSAGE_ID

__all__ = [
    "ChatContextSyncError",
    "RemoteConversation",
    "RemoteItem",
    "Insertion",
    "SyncPlan",
    "ViewSnapshot",
    "appended_sync_steps",
    "compute_chat_ctx_diff",
    "plan_replay_steps",
    "plan_sync_steps",
    "protocol_items_steps",
    "wire_item_id",
]

# the service rejects client-chosen item ids longer than this
MAX_ITEM_ID_LENGTH = 32
# ... and those with other characters ("string does not match pattern '^[a-zA-Z0-9_-]+$'")
_WIRE_ID_RE = re.compile(rf"[a-zA-Z0-9_-]{{1,{MAX_ITEM_ID_LENGTH}}}")

Origin = Literal["client", "server"]
# the ``*_steps`` generators yield after this many items (a few microseconds of work each), so
# that a caller can pause between them: the caller's time budget decides where it does
STEP_ITEMS = 32

# the ``*_steps`` generators do whole-list work (an index, a set) in chunks of this many items
CHUNK_ITEMS = STEP_ITEMS * 8

T = TypeVar("T")
S = TypeVar("S")
Steps = Generator[None, None, T]


class ChatContextSyncError(llm.RealtimeError):
    """``update_chat_ctx`` could not bring the realtime conversation in line with the context.

    Raised before anything is sent when the context cannot be synced at all (two items share an
    id), and once every event of the sync is settled when the service rejected some of them, did
    not answer in time, or the connection closed first. What the service accepted stays in the
    conversation and in the session's ``chat_ctx``.

    Attributes:
        code: The service's error code (e.g. ``"item_create_invalid_previous_item_id"``) of the
            first rejection, or ``None`` when the client raised the error itself.
        param: The request parameter the service named, if any.
        event_id: The id of the client event the service rejected, if any.
        item_id: The id of the chat item concerned, if any.
        errors: Every failure of the sync (a single failure lists itself).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        event_id: str | None = None,
        item_id: str | None = None,
        errors: list[ChatContextSyncError] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.event_id = event_id
        self.item_id = item_id
        self.errors: list[ChatContextSyncError] = errors if errors is not None else [self]


# ------------------------------------------------------------------------------ protocol items


def wire_item_id(item_id: str) -> str:
    """The id the service knows a local item by: ``item_id``, or a stable digest of it when the
    service would reject it (over 32 characters, or a character other than ASCII letters,
    digits, ``_`` and ``-``: a ``/``, a ``.``, a space, any other Unicode, a lone surrogate)."""
    if _WIRE_ID_RE.fullmatch(item_id):
        return item_id
    raw = item_id.encode("utf-8", "surrogatepass")
    return "lk_" + hashlib.blake2b(raw, digest_size=14).hexdigest()


def protocol_items_steps(
    chat_ctx: llm.ChatContext,
    remote: RemoteConversation,
    *,
    warned: set[str],
    protocol: str = "realtime",
    images: bool = False,
    calls: set[str] | None = None,
) -> Steps[tuple[list[llm.ChatItem], list[tuple[str, str]]]]:
    """The items of ``chat_ctx`` the service should hold, in order, in the form it holds them.

    A generator that yields now and then (see :data:`STEP_ITEMS`) and returns the result; the
    context is read once, when it starts.

    Args:
        chat_ctx: The local context.
        remote: The mirror. A function call output is sent when its call is in the local context
            or is a server-made call the sync keeps whatever the context holds (its content is
            not known yet); an id the service chose itself is kept as it is.
        warned: Ids already warned about; updated with the ids of this call's warnings.
        protocol: Names the protocol in warnings.
        images: Whether the protocol carries image content in user messages.
        calls: When given, the call ids an output may answer besides those of ``chat_ctx``'s
            own calls, instead of those :func:`_call_ids_steps` finds in ``remote``.

    Returns:
        The items, under their wire ids, and the skipped ones as ``(item id, why)``: those
        not in ``warned`` yet, which gets their ids (the caller may clear it to bound it).

    Raises:
        ChatContextSyncError: Two items map to the same id; nothing is to be sent.
    """
    call_ids: set[str] | None = None
    items: list[llm.ChatItem] = []
    warnings: list[tuple[str, str]] = []
    seen: set[str] = set()

    def _skip(item_id: str, message: str) -> None:
        if item_id not in warned:
            warned.add(item_id)
            warnings.append((item_id, message))

    ctx_items = list(chat_ctx.items)
    for n, item in enumerate(ctx_items, 1):
        if n % STEP_ITEMS == 0:
            yield
        if item.type in ("agent_handoff", "agent_config_update"):
            continue  # the framework's bookkeeping, not conversation
        if item.id == INSTRUCTIONS_MESSAGE_ID:
            continue  # sent as the session's instructions
        item_id = item.id if item.id in remote else wire_item_id(item.id)
        out: llm.ChatItem | None
        if item.type == "message":
            out, dropped = _protocol_message(item, item_id, images=images)
            held = remote.get(item_id)
            if out is None and held is not None and held.item.type == "message":
                # the service's own item (a voice turn transcribed as ""): left as it is there
                out, dropped = held.item, []
            if out is None:
                _skip(
                    item.id,
                    f"not sending message `{item.id}`: it holds nothing the {protocol} protocol "
                    "can carry (the service rejects empty messages)",
                )
            elif dropped:
                _skip(
                    item.id,
                    f"sending message `{item.id}` without its {', '.join(dropped)}: the "
                    f"{protocol} protocol cannot carry it",
                )
        elif item.type == "function_call":
            out = _with_id(item, item_id)
        elif item.type == "function_call_output":
            if call_ids is None:
                call_ids = yield from _call_ids_steps(ctx_items, remote if calls is None else ())
                call_ids |= calls or set()
            out = _with_id(item, item_id) if item.call_id in call_ids else None
            if out is None:
                _skip(
                    item.id,
                    f"not sending function call output `{item.id}`: no function call with "
                    f"call_id `{item.call_id}` in the chat context",
                )
        else:
            out = None
            _skip(
                item.id,
                f"not sending chat item `{item.id}` of type `{item.type}`: the {protocol} "
                "protocol has no such item",
            )
        if out is None:
            continue
        if out.id in seen:
            raise ChatContextSyncError(
                f"the chat context holds more than one item with id `{item.id}`; nothing was sent",
                item_id=item.id,
            )
        seen.add(out.id)
        items.append(out)
    return items, warnings


def _call_ids_steps(items: list[llm.ChatItem], remote: Iterable[RemoteItem]) -> Steps[set[str]]:
    """The call ids an output may answer: the local calls, and the service's own calls whose
    arguments are not known yet."""
    call_ids: set[str] = set()
    for n, item in enumerate(items, 1):
        if n % STEP_ITEMS == 0:
            yield
        if item.type == "function_call":
            call_ids.add(item.call_id)
    for n, r in enumerate(remote, 1):
        if n % STEP_ITEMS == 0:
            yield
        if r.item.type == "function_call" and r.origin == "server" and r.known_at is None:
            call_ids.add(r.item.call_id)
    return call_ids


def _with_id(item: llm.ChatItem, item_id: str) -> llm.ChatItem:
    return item if item.id == item_id else item.model_copy(update={"id": item_id})


def _protocol_message(
    msg: llm.ChatMessage, item_id: str, *, images: bool = False
) -> tuple[llm.ChatMessage | None, list[str]]:
    """``msg`` as a realtime protocol carries it (or None) and the kinds of content dropped.

    Text is kept and empty strings dropped. Audio is kept in user messages; in other roles,
    which clients cannot create audio for, its transcript is kept as text. Inline images (data
    URLs, frames) are kept in user messages where the protocol carries them (``images``); other
    images are dropped.
    """
    if item_id == msg.id and msg.content and all(isinstance(c, str) and c for c in msg.content):
        return msg, []  # the common case: plain text
    content: list[llm.ChatContent] = []
    dropped: list[str] = []
    for c in msg.content:
        if isinstance(c, str):
            if c:
                content.append(c)
        elif isinstance(c, llm.AudioContent):
            if msg.role == "user":
                content.append(c)
            elif c.transcript:
                content.append(c.transcript)
            else:
                dropped.append("audio without transcript")
        elif isinstance(c, llm.ImageContent) and images and msg.role == "user":
            if isinstance(c.image, str) and not c.image.startswith("data:"):
                dropped.append("image given by URL (only inline images can be sent)")
            else:
                content.append(c)
        else:
            dropped.append(type(c).__name__)
    if not content:
        return None, dropped
    return msg.model_copy(update={"id": item_id, "content": content}), dropped


# ------------------------------------------------------------------------------------- mirror


@dataclass
class RemoteItem:
    """An item of the service's conversation as the client knows it."""

    item: llm.ChatItem
    origin: Origin
    """``"client"`` when created by ``conversation.item.create``, else ``"server"``"""
    known_at: int | None
    """the revision at which its content became known, None while it is not; 0 for the
    client's own items (any caller's context can hold them); a replay keeps it"""
    heard: str | None = None
    """for a truncated reply, the part the user heard"""
    audio: bool = False
    """the service holds audio for it (a spoken reply): the client can only re-create it as text"""
    held: bool = True
    """the service on the current connection holds it; False while a replay re-creates it"""
    _prev: RemoteItem | None = field(default=None, repr=False, compare=False)
    _next: RemoteItem | None = field(default=None, repr=False, compare=False)
    _index: int = field(default=-1, repr=False, compare=False)
    """its position in the view's snapshot, while that is current"""

    @property
    def settled(self) -> bool:
        """Held on the current connection, its content known."""
        return self.held and self.known_at is not None


@dataclass
class ViewSnapshot:
    """The view as a list, as it was at ``changes`` (see :meth:`RemoteConversation.snapshot`):
    what ``chat_ctx`` reads and what the appended sync compares a context with. Read only."""

    changes: int
    items: list[llm.ChatItem]
    unsettled: int
    """items not held on the current connection or whose content is not known"""
    calls: set[str]
    """the call ids of the view's function calls"""
    orphans: int
    """function call outputs the view holds before (or without) their call"""

    def _append(self, node: RemoteItem) -> None:
        """Count ``node`` in as the view's next item."""
        node._index = len(self.items)
        item = node.item
        self.items.append(item)
        self.unsettled += not node.settled
        if item.type == "function_call":
            self.calls.add(item.call_id)
        elif item.type == "function_call_output" and item.call_id not in self.calls:
            self.orphans += 1


class RemoteConversation:
    """The client's mirror of the service's conversation, in the service's order.

    Client-made items are recorded as they were sent, so that a later sync compares like with
    like. ``revision`` grows whenever the content of an item becomes known.
    """

    def __init__(self, *, revision: int = 0) -> None:
        # the items by id, linked in the service's order
        self._state: dict[str, RemoteItem] = {}
        self._head: RemoteItem | None = None
        self._tail: RemoteItem | None = None
        self.revision = revision
        self.changes = 0
        """grows with every change of the view (an item added, removed or replaced); a change
        made from outside (a field of an item set) must bump it too"""
        # the view as a list, current while its ``changes`` is ours: built when read, kept
        # up to date by an item added last and by an item's content replaced in place
        self._snapshot: ViewSnapshot | None = None

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._state

    def __iter__(self) -> Iterator[RemoteItem]:
        """The items in the service's order, read as the iteration goes: an iteration that
        pauses sees an item removed meanwhile no more, and may miss one added meanwhile."""
        node = self._head
        while node is not None:
            if self._state.get(node.item.id) is node:
                yield node
            node = node._next

    def get(self, item_id: str) -> RemoteItem | None:
        return self._state.get(item_id)

    def items(self) -> list[RemoteItem]:
        """The items in the service's order."""
        return list(self)

    def last(self) -> RemoteItem | None:
        """The last item in the service's order."""
        return self._tail

    def to_chat_ctx(self) -> llm.ChatContext:
        """The view as a new context (its list is the caller's own; the items are shared)."""
        return llm.ChatContext(items=list(self.snapshot().items))

    def snapshot(self) -> ViewSnapshot:
        """The view as a list (see :meth:`snapshot_steps`), at once."""
        snapshot = _drain(self.snapshot_steps())
        assert snapshot is not None  # nothing changes the view while it is built at once
        return snapshot

    def snapshot_steps(self) -> Steps[ViewSnapshot | None]:
        """The view as a list: the current snapshot, else a new one built in steps (None when
        the view changed while it was built). One walk per change of the view at most: an item
        added last or one's content replaced keeps the snapshot current."""
        current = self._snapshot
        if current is not None and current.changes == self.changes:
            return current
        snapshot = ViewSnapshot(self.changes, [], 0, set(), 0)
        node = self._head
        while node is not None:
            if len(snapshot.items) % CHUNK_ITEMS == 0:
                yield
                if self.changes != snapshot.changes:
                    return None
            snapshot._append(node)
            node = node._next
        self._snapshot = snapshot
        return snapshot

    def _current_snapshot(self) -> ViewSnapshot | None:
        snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.changes == self.changes else None

    def replaced(self, item_id: str, item: llm.ChatItem, *, held: bool) -> None:
        """An item's content (and whether the current connection holds it) changed in place:
        a replayed item the service confirmed."""
        state = self._state.get(item_id)
        if state is None:
            return
        snapshot = self._current_snapshot()
        was_settled = state.settled
        state.item, state.held = item, held
        self.changes += 1
        self._replaced_in(snapshot, state, was_settled)

    def _replaced_in(
        self, snapshot: ViewSnapshot | None, state: RemoteItem, was_settled: bool
    ) -> None:
        """Keep ``snapshot`` (current before the change) current after ``state`` changed in
        place, where it can at no cost; else it is left stale."""
        if snapshot is None or not 0 <= state._index < len(snapshot.items):
            return
        old = snapshot.items[state._index]
        new = state.item
        if old.id != new.id or old.type != new.type:
            return
        # only calls and outputs have a call id (a getattr on a pydantic item without the field
        # raises inside: microseconds per completion)
        calls = (llm.FunctionCall, llm.FunctionCallOutput)
        if isinstance(old, calls) and isinstance(new, calls) and old.call_id != new.call_id:
            return
        snapshot.items[state._index] = new
        snapshot.unsettled += int(was_settled) - int(state.settled)
        snapshot.changes = self.changes

    def add(
        self,
        item: llm.ChatItem,
        previous_item_id: str | None,
        *,
        origin: Origin,
        known: bool = True,
        known_at: int | None = None,
        audio: bool = False,
    ) -> None:
        """Record an item the service created, after ``previous_item_id`` (None: first).

        ``known_at`` keeps the revision at which a known item's content was known (an item
        re-created by a replay); by default the client's own item is known from the start (0)
        and the service's from now on.

        Raises:
            ValueError: The id is there already, or ``previous_item_id`` is not.
        """
        if item.id in self._state:
            raise ValueError(f"Item with ID {item.id} already exists.")
        prev = None
        if previous_item_id is not None:
            prev = self._state.get(previous_item_id)
            if prev is None:
                raise ValueError(f"previous_item_id `{previous_item_id}` not found")
        if known and known_at is None and origin == "client":
            known_at = 0
        elif known and known_at is None:
            self.revision += 1
            known_at = self.revision
        snapshot = self._current_snapshot()
        node = RemoteItem(item, origin, known_at if known else None, audio=audio)
        node._prev, node._next = prev, (prev._next if prev is not None else self._head)
        if node._next is not None:
            node._next._prev = node
        else:
            self._tail = node
        if prev is not None:
            prev._next = node
        else:
            self._head = node
        self._state[item.id] = node
        self.changes += 1
        if snapshot is not None and node._next is None:
            # added last (the common case): the snapshot grows by it
            snapshot._append(node)
            snapshot.changes = self.changes

    def remove(self, item_id: str) -> None:
        """Forget a deleted item.

        Raises:
            ValueError: The item is not there.
        """
        node = self._state.pop(item_id, None)
        if node is None:
            raise ValueError(f"item_id `{item_id}` not found")
        self.changes += 1
        # the removed node keeps its own links: an iteration standing on it goes on from there
        if node._prev is not None:
            node._prev._next = node._next
        else:
            self._head = node._next
        if node._next is not None:
            node._next._prev = node._prev
        else:
            self._tail = node._prev

    def complete(self, item_id: str, item: llm.ChatItem | None = None) -> None:
        """Mark an item's content known, replacing it with ``item`` (same id) when given."""
        state = self._state.get(item_id)
        if state is None:
            return
        snapshot = self._current_snapshot()
        was_settled = state.settled
        if item is not None:
            if state.heard is not None and item.type == "message":
                item = item.model_copy(update={"content": [state.heard] if state.heard else []})
            state.item = item
        self.revision += 1
        self.changes += 1
        state.known_at = self.revision
        self._replaced_in(snapshot, state, was_settled)

    def truncate(self, item_id: str, heard: str) -> None:
        """The service cut a reply where the user stopped hearing it: it holds ``heard`` now."""
        state = self._state.get(item_id)
        if state is not None and state.item.type == "message":
            state.heard = heard
            self.complete(item_id, state.item)


# --------------------------------------------------------------------------------------- diff


def compute_chat_ctx_diff(old_ctx: llm.ChatContext, new_ctx: llm.ChatContext) -> llm.utils.DiffOps:
    """``llm.utils.compute_chat_ctx_diff``, in O(n log n) time and O(n) memory for unique ids.

    Same operations and same kept subsequence as upstream's O(n*m) table: removals in old
    order, creations and updates with the id of the item before them in ``new_ctx``; a kept
    message whose ``text_content`` changed is an update.
    """
    old_ids = [item.id for item in old_ctx.items]
    new_ids = [item.id for item in new_ctx.items]
    kept = set(_lcs(old_ids, new_ids))
    old_by_id = {item.id: item for item in old_ctx.items}
    ops = llm.utils.DiffOps(
        to_remove=[item_id for item_id in old_ids if item_id not in kept],
        to_create=[],
        to_update=[],
    )
    prev: str | None = None
    for item in new_ctx.items:
        if item.id not in kept:
            ops.to_create.append((prev, item.id))
        else:
            old = old_by_id[item.id]
            if (
                item is not old
                and item.type == "message"
                and old.type == "message"
                and item.text_content != old.text_content
            ):
                ops.to_update.append((prev, item.id))
        prev = item.id
    return ops


def _lcs(old_ids: list[str], new_ids: list[str]) -> list[str]:
    """:func:`_lcs_steps` at once."""
    return _drain(_lcs_steps(old_ids, new_ids))


def _lcs_steps(old_ids: list[str], new_ids: list[str]) -> Steps[list[str]]:
    """The longest common subsequence upstream's table-based backtrack picks.

    With unique ids it is the longest increasing subsequence of the old positions of the new
    ids (patience sorting). Among equally long ones, the backtrack from the end (dropping a new
    id on ties) ends at the earliest new position where an LCS can end, the element before it
    at the earliest position where it can still precede that one, and so on. A common prefix is
    in every LCS, so it is taken as is. Repeated ids fall back to the table.
    """
    old_index = yield from _index_steps(old_ids)
    if len(old_index) != len(old_ids) or len((yield from _set_steps(new_ids))) != len(new_ids):
        return _lcs_table(old_ids, new_ids)
    prefix = 0
    while prefix < min(len(old_ids), len(new_ids)) and old_ids[prefix] == new_ids[prefix]:
        prefix += 1
        if prefix % (STEP_ITEMS * 8) == 0:
            yield
    seq: list[int] = []
    for chunk in _chunks(new_ids):
        yield
        seq.extend([old_index.get(item_id, -1) for item_id in chunk])
    # tails[k]: the smallest old position ending an increasing run of length k + 1 so far; along
    # a pile new positions grow and old positions shrink (stored negated for bisect)
    tails: list[int] = []
    piles_pos: list[list[int]] = []
    piles_neg_old: list[list[int]] = []
    for pos in range(prefix, len(seq)):
        if pos % STEP_ITEMS == 0:
            yield
        old_pos = seq[pos]
        if old_pos < 0:
            continue  # not in old
        k = bisect.bisect_left(tails, old_pos)
        if k == len(tails):
            tails.append(old_pos)
            piles_pos.append([])
            piles_neg_old.append([])
        else:
            tails[k] = old_pos
        piles_pos[k].append(pos)
        piles_neg_old[k].append(-old_pos)
    out: list[str] = []
    bound = len(old_ids)
    for k in range(len(tails) - 1, -1, -1):
        if k % STEP_ITEMS == 0:
            yield
        pos = piles_pos[k][bisect.bisect_right(piles_neg_old[k], -bound)]
        out.append(new_ids[pos])
        bound = seq[pos]
    out.reverse()
    return new_ids[:prefix] + out


def _lcs_table(old_ids: list[str], new_ids: list[str]) -> list[str]:
    n, m = len(old_ids), len(new_ids)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n):
        for j in range(m):
            if old_ids[i] == new_ids[j]:
                table[i + 1][j + 1] = table[i][j] + 1
            else:
                table[i + 1][j + 1] = max(table[i][j + 1], table[i + 1][j])
    out: list[str] = []
    i, j = n, m
    while i and j:
        if old_ids[i - 1] == new_ids[j - 1]:
            out.append(old_ids[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    out.reverse()
    return out


# --------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Insertion:
    """Items to create one after the other right after ``anchor`` (None: at the start)."""

    anchor: str | None
    items: tuple[llm.ChatItem, ...]


@dataclass
class SyncPlan:
    """The events of a sync: the deletes first, then the insertions in order."""

    deletes: list[str] = field(default_factory=list)
    insertions: list[Insertion] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """server-made items of unknown content left as they are"""
    held: list[llm.ChatItem] = field(default_factory=list)
    """local copies of kept items: their content is known from now on"""
    replaced: set[str] = field(default_factory=set)
    """server-made items re-created in place: they stay server-made (they do not move)"""

    def __bool__(self) -> bool:
        return bool(self.deletes or self.insertions)

    @property
    def creates(self) -> int:
        return sum(len(insertion.items) for insertion in self.insertions)


def plan_sync_steps(
    remote: RemoteConversation, local: Sequence[llm.ChatItem], *, since: int
) -> Steps[SyncPlan]:
    """Plan what turns the service's conversation into ``local``, by the module's rule.

    A generator that yields now and then (see :data:`STEP_ITEMS`) and returns the plan. Items the
    mirror gains meanwhile are left to the next sync.

    Args:
        remote: The mirror.
        local: Protocol items (see :func:`protocol_items_steps`), unique ids.
        since: ``remote.revision`` when the sync began; content known later counts as unknown.
    """
    local_pos: dict[str, int] = {}
    for k, item in enumerate(local):
        if k % STEP_ITEMS == 0:
            yield
        local_pos[item.id] = k
    plan = SyncPlan()
    # items that keep their place (voice turns, unknown content): None, or the local item that
    # replaces a voice turn in place
    fixed: dict[str, llm.ChatItem | None] = {}
    ordered: list[RemoteItem] = []  # every other item: it follows the local order
    skeleton: list[str] = []  # the service's items that stay, in its order
    for n, r in enumerate(remote, 1):
        if n % STEP_ITEMS == 0:
            yield
        if not r.held:
            continue  # a replay create that got no answer: the service may lack it
        item_id = r.item.id
        j = local_pos.get(item_id)
        # what the service made (a replay re-creates it as the client's) and the client
        # learnt after the sync began
        if r.known_at is None or r.known_at > since:
            plan.kept.append(item_id)
            fixed[item_id] = None
            if j is not None and r.known_at is None and _has_content(local[j]):
                plan.held.append(local[j])
        elif j is None:
            plan.deletes.append(item_id)
            continue
        elif _is_voice_turn(r):
            fixed[item_id] = local[j] if _text_changed(local[j], r.item) else None
        else:
            ordered.append(r)
        skeleton.append(item_id)

    others: list[llm.ChatItem] = []
    for n, item in enumerate(local, 1):
        if n % STEP_ITEMS == 0:
            yield
        if item.id not in fixed:
            others.append(item)
    # a spoken reply weighs only while it stays as it is (an edited one is re-created anyway)
    spoken: set[str] = set()
    for n, r in enumerate(ordered, 1):
        if n % STEP_ITEMS == 0:
            yield
        if r.origin == "server" and r.audio and not _edited(local[local_pos[r.item.id]], r):
            spoken.add(r.item.id)
    kept = yield from _set_steps((yield from _kept_subsequence(ordered, others, spoken)))
    removed: set[str] = set()
    for n, r in enumerate(ordered, 1):
        if n % STEP_ITEMS == 0:
            yield
        if r.item.id not in kept:
            removed.add(r.item.id)
            plan.deletes.append(r.item.id)
    if removed:
        remaining: list[str] = []
        for skeleton_chunk in _chunks(skeleton):
            yield
            remaining.extend([item_id for item_id in skeleton_chunk if item_id not in removed])
        skeleton = remaining
    replaced: dict[str, llm.ChatItem] = {}
    for n, (item_id, new) in enumerate(fixed.items(), 1):
        if n % STEP_ITEMS == 0:
            yield
        if new is not None:
            replaced[item_id] = new
    plan.replaced = set(replaced)
    for n, r in enumerate(ordered, 1):
        if n % STEP_ITEMS == 0:
            yield
        if r.item.id in kept and _edited(local[local_pos[r.item.id]], r):
            replaced[r.item.id] = local[local_pos[r.item.id]]  # stays in place, new content
    plan.deletes.extend(item_id for item_id in replaced)
    creates: dict[str, llm.ChatItem] = {}
    for n, item in enumerate(others, 1):
        if n % STEP_ITEMS == 0:
            yield
        if item.id not in kept:
            creates[item.id] = item
    new_ids = yield from _set_steps(list(creates))
    order = yield from _target_order(skeleton, local, local_pos, fixed, new_ids)
    creates.update(replaced)
    plan.insertions = yield from _insertions_steps(order, creates)
    return plan


def appended_sync_steps(
    remote: RemoteConversation,
    chat_ctx: llm.ChatContext,
    *,
    since: int,
    warned: set[str],
    protocol: str = "realtime",
    images: bool = False,
) -> Steps[tuple[list[llm.ChatItem], list[tuple[str, str]], SyncPlan] | None]:
    """The common sync, planned from the new items only: ``chat_ctx`` holds the view as it is,
    item for item, and then items the service does not hold.

    The view must be settled: every item held, its content known before the sync began
    (``since`` is ``remote.revision``). Then :func:`protocol_items_steps` keeps each item of the
    view as it is and :func:`plan_sync_steps` keeps them all and creates the new items after the
    last: this returns the same ``(new protocol items, warnings, plan)`` without reading the
    whole history again but for one cheap pass comparing it by identity, or None when the
    context or the view is not of that shape (the full plan decides then). Raises what
    :func:`protocol_items_steps` raises.
    """
    if remote.revision != since or INSTRUCTIONS_MESSAGE_ID in remote:
        return None
    view = yield from remote.snapshot_steps()
    if view is None or view.unsettled or view.orphans:
        return None  # an output before its call, or without it: the full rule decides
    changes = view.changes
    ctx_items = chat_ctx.items
    count = len(view.items)
    if len(ctx_items) < count:
        return None
    # the context starts with the view, item for item: compared a slice at a time (by identity
    # first, which is what a context made from ``chat_ctx`` holds)
    for start in range(0, count, STEP_ITEMS):
        yield
        if remote.changes != changes:
            return None  # the view changed meanwhile
        end = min(start + STEP_ITEMS, count)
        if ctx_items[start:end] != view.items[start:end]:
            return None
    new = ctx_items[count:]
    for n, item in enumerate(new, 1):
        if n % STEP_ITEMS == 0:
            yield
            if remote.changes != changes:
                return None
        if item.id in remote or wire_item_id(item.id) in remote:
            return None  # an item of the view moved after the others
    yield
    if remote.changes != changes:
        return None
    last = view.items[-1].id if count else None
    items, warnings = yield from protocol_items_steps(
        llm.ChatContext(items=list(new)),
        remote,
        warned=warned,
        protocol=protocol,
        images=images,
        calls=set(view.calls),
    )
    insertions = (yield from _split(last, items)) if items else []
    if remote.changes != changes:
        # the view changed while the new items were read: the full plan decides, and warns
        warned.difference_update(item_id for item_id, _ in warnings)
        return None
    plan = SyncPlan(insertions=insertions)
    return items, warnings, plan


def plan_replay_steps(
    remote: RemoteConversation,
) -> Steps[tuple[list[Insertion], list[str], list[str]]]:
    """What a new connection, which starts with an empty conversation, must be sent again,
    in steps (see :data:`STEP_ITEMS`).

    Returns:
        The insertions that re-create, in order, every item whose content is known (a replayed
        conversation holds text where the old one held audio), the ids of the items that
        cannot be replayed because their content is unknown (audio whose transcript never
        arrived, a reply not done), and those that hold nothing to send (a voice turn
        transcribed as "", a reply that ended before it said anything).
    """
    order: list[str] = []
    creates: dict[str, llm.ChatItem] = {}
    lost: list[str] = []
    empty: list[str] = []
    for n, r in enumerate(remote, 1):
        if n % STEP_ITEMS == 0:
            yield
        if r.known_at is None:
            lost.append(r.item.id)
        elif not _has_content(r.item):
            empty.append(r.item.id)
        else:
            order.append(r.item.id)
            creates[r.item.id] = r.item
    insertions = yield from _insertions_steps(order, creates)
    return insertions, lost, empty


def _is_voice_turn(r: RemoteItem) -> bool:
    return r.origin == "server" and r.item.type == "message" and r.item.role == "user"


def _edited(new: llm.ChatItem, r: RemoteItem) -> bool:
    """Whether a kept item's content changed: as upstream's diff for the client's own items, by
    text (spaces folded, audio as its transcript) for the service's."""
    old = r.item
    if r.origin == "server":
        return _text_changed(new, old)
    return (
        new is not old
        and new.type == "message"
        and old.type == "message"
        and new.text_content != old.text_content
    )


def _kept_subsequence(
    ordered: list[RemoteItem], others: list[llm.ChatItem], spoken: set[str]
) -> Steps[list[str]]:
    """The items that stay where they are: a common subsequence of the service's order and the
    local one.

    The service's audio replies weigh more than everything else together, so that an audio
    reply is re-created (as text) only where re-creating other items cannot keep the order;
    then the fewest items are re-created. Without an audio reply among them this is the same
    subsequence as ``llm.utils.compute_chat_ctx_diff`` keeps.
    """
    old_ids: list[str] = []
    for chunk in _chunks(ordered):
        yield
        old_ids.extend([r.item.id for r in chunk])
    new_ids: list[str] = []
    for local_chunk in _chunks(others):
        yield
        new_ids.extend([item.id for item in local_chunk])
    if not spoken:
        return (yield from _lcs_steps(old_ids, new_ids))
    return (yield from _heaviest_common_subsequence(old_ids, new_ids, spoken))


def _heaviest_common_subsequence(
    old_ids: list[str], new_ids: list[str], heavy: set[str]
) -> Steps[list[str]]:
    """The common subsequence of maximum weight (unique ids; heavy ids outweigh all others).

    The heaviest increasing subsequence of the old positions taken in new order, in
    O(n log n) with a Fenwick tree of prefix maxima over old positions.
    """
    old_index = yield from _index_steps(old_ids)
    heavy_weight = len(new_ids) + 1
    size = len(old_ids)
    tree: list[tuple[int, int]] = [(0, -1)] * (size + 1)  # (weight, new position)
    best_at: list[int] = [0] * len(new_ids)
    prev: list[int] = [-1] * len(new_ids)
    top = (0, -1)
    for pos, item_id in enumerate(new_ids):
        if pos % STEP_ITEMS == 0:
            yield
        old_pos = old_index.get(item_id)
        if old_pos is None:
            continue
        found = (0, -1)
        i = old_pos  # prefix of old positions < old_pos (1-based: 1..old_pos)
        while i > 0:
            if tree[i] > found:
                found = tree[i]
            i -= i & -i
        weight = found[0] + (heavy_weight if item_id in heavy else 1)
        best_at[pos], prev[pos] = weight, found[1]
        entry = (weight, pos)
        top = max(top, entry)
        i = old_pos + 1
        while i <= size:
            if tree[i] < entry:
                tree[i] = entry
            i += i & -i
    out: list[str] = []
    pos = top[1]
    while pos >= 0:
        if len(out) % STEP_ITEMS == 0:
            yield
        out.append(new_ids[pos])
        pos = prev[pos]
    out.reverse()
    return out


def _has_content(item: llm.ChatItem) -> bool:
    """Whether a create of the item would hold anything (the service rejects empty messages)."""
    if item.type != "message":
        return True
    return any(not isinstance(c, str) or c for c in item.content)


def _text_changed(new: llm.ChatItem, old: llm.ChatItem) -> bool:
    if new is old or (
        new.type == "message" and old.type == "message" and new.content == old.content
    ):
        return False
    return _text_key(new) != _text_key(old)


def _text_key(item: llm.ChatItem) -> str | None:
    """What a server-made item holds as far as a sync can tell: its text, spaces folded.

    A message's audio counts as its transcript. Other items have no text that a sync could
    change (their content is the service's, as upstream's diff also treats them).
    """
    if item.type != "message":
        return None
    parts = [
        c if isinstance(c, str) else c.transcript or ""
        for c in item.content
        if isinstance(c, (str, llm.AudioContent))
    ]
    return " ".join(" ".join(parts).split())


def _target_order(
    skeleton: list[str],
    local: Sequence[llm.ChatItem],
    local_pos: dict[str, int],
    fixed: dict[str, llm.ChatItem | None],
    new_ids: set[str],
) -> Steps[list[str]]:
    """The service's order after the sync: ``skeleton`` with the new items placed in it.

    A new item goes between the diffed (client-made, kept) items around it in local order.
    Within that window it follows the last fixed item that precedes it locally, if any, and then
    the kept items the local context does not hold (user turns whose transcript is pending:
    what is new came after them), unless it is at the very start. New items keep their order.
    """
    pos = yield from _index_steps(skeleton)
    slots: dict[int, list[str]] = {}  # skeleton position -> new ids after it (-1: at the start)
    seen_fixed: list[int] = []  # sorted skeleton positions of fixed items met in local order
    group: list[tuple[bool, int | str]] = []  # since the last diffed item: (is_new, pos | id)
    low = -1

    def _place(high: int) -> Steps[None]:
        # a group may hold every new item (a first sync, a rebuild from a stale copy): placed
        # a step of items at a time; nothing it reads changes meanwhile (all the planner's own)
        if not group:
            return
        k = bisect.bisect_left(seen_fixed, high) - 1
        best = seen_fixed[k] if k >= 0 and seen_fixed[k] > low else low
        floor = low
        work = 0  # group entries and skeleton positions walked since the last pause
        for is_new, value in group:
            work += 1
            if work >= STEP_ITEMS:
                work = 0
                yield
            if not is_new:
                assert isinstance(value, int)
                if low < value < high:
                    best = max(best, value)
                bisect.insort(seen_fixed, value)
                continue
            assert isinstance(value, str)
            at = max(best, floor)
            if at >= 0:
                while (
                    at + 1 < high
                    and skeleton[at + 1] in fixed
                    and skeleton[at + 1] not in local_pos
                ):
                    at += 1
                    work += 1
                    if work >= STEP_ITEMS:
                        work = 0
                        yield
            floor = at
            slots.setdefault(at, []).append(value)
        group.clear()

    for n, item in enumerate(local, 1):
        if n % STEP_ITEMS == 0:
            yield
        if item.id in new_ids:
            group.append((True, item.id))
        elif item.id in fixed:
            group.append((False, pos[item.id]))
        elif item.id in pos:
            yield from _place(pos[item.id])
            low = pos[item.id]
    yield from _place(len(skeleton))

    out = list(slots.get(-1, ()))
    for k, item_id in enumerate(skeleton):
        if k % STEP_ITEMS == 0:
            yield
        out.append(item_id)
        out.extend(slots.get(k, ()))
    return out


def _insertions_steps(
    order: Iterable[str], creates: dict[str, llm.ChatItem]
) -> Steps[list[Insertion]]:
    """The insertions that create the ids of ``order`` found in ``creates``, each where it stands.

    Consecutive new items are created after the item before them, which the service holds,
    each insertion last item first, so no create depends on another. The service wants a function
    call before its output: see :func:`_split` for new items that hold both.
    """
    insertions: list[Insertion] = []
    anchor: str | None = None
    new: list[llm.ChatItem] = []
    for n, item_id in enumerate(order, 1):
        if n % STEP_ITEMS == 0:
            yield
        item = creates.get(item_id)
        if item is None:
            if new:
                insertions.extend((yield from _split(anchor, new)))
            new = []
            anchor = item_id
        else:
            new.append(item)
    if new:
        insertions.extend((yield from _split(anchor, new)))
    return insertions


def _split(anchor: str | None, items: list[llm.ChatItem]) -> Steps[list[Insertion]]:
    """Runs that insert ``items`` after ``anchor``, a function call before its outputs.

    The items after the last output of a new call go first, after ``anchor``; then the items up
    to the last call with an output among them (the same way, repeatedly); then the items
    between that call and that output, after the call: they fail with it, and only they.
    """
    # for each prefix length: the last output of a call earlier in it, and the latest such call
    call_at: dict[str, int] = {}
    last_output = [-1] * (len(items) + 1)
    last_call = [-1] * (len(items) + 1)
    for i, item in enumerate(items):
        if i % STEP_ITEMS == 0:
            yield
        last_output[i + 1], last_call[i + 1] = last_output[i], last_call[i]
        if item.type == "function_call":
            call_at[item.call_id] = i
        elif item.type == "function_call_output" and item.call_id in call_at:
            last_output[i + 1] = i
            last_call[i + 1] = max(last_call[i], call_at[item.call_id])
    first: list[Insertion] = []
    then: list[Insertion] = []
    end = len(items)
    runs = 0
    while end and last_output[end] >= 0:
        runs += 1
        if runs % STEP_ITEMS == 0:
            yield  # one run per new call answered: as many as the items, at worst
        out, call = last_output[end], last_call[end]
        if out + 1 < end:
            first.append(Insertion(anchor, tuple(items[out + 1 : end])))
        then.append(Insertion(items[call].id, tuple(items[call + 1 : out + 1])))
        end = call + 1
    if end:
        first.append(Insertion(anchor, tuple(items[:end])))
    return first + then[::-1]


def _chunks(seq: Sequence[S]) -> Iterator[Sequence[S]]:
    """``seq`` in slices of :data:`CHUNK_ITEMS`: a ``*_steps`` generator yields after each."""
    for start in range(0, len(seq), CHUNK_ITEMS):
        yield seq[start : start + CHUNK_ITEMS]


def _index_steps(ids: Sequence[str]) -> Steps[dict[str, int]]:
    """``{id: position}`` of ``ids``, in steps (a repeated id keeps its last position)."""
    index: dict[str, int] = {}
    for start in range(0, len(ids), CHUNK_ITEMS):
        yield
        chunk = ids[start : start + CHUNK_ITEMS]
        index.update(zip(chunk, range(start, start + len(chunk)), strict=True))
    return index


def _set_steps(values: Sequence[str]) -> Steps[set[str]]:
    """``set(values)``, in steps."""
    out: set[str] = set()
    for chunk in _chunks(values):
        yield
        out.update(chunk)
    return out


def _drain(steps: Steps[T]) -> T:
    """Drive a ``*_steps`` generator to its end, without pausing."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
