"""The conversation model of the fake Azure OpenAI Realtime server, shared by both protocols.

Items are stored in one protocol-neutral shape: the server shape of the preview protocol
(``object: "realtime.item"``, assistant content parts ``text`` / ``audio``). The protocol layers
map content part types on the way in and out (GA: ``output_text`` / ``output_audio``).
:func:`precheck_create` and :func:`check_create` hold Azure's rules for a created item
(``type`` required, ids of at most 32 characters, ``previous_item_id`` must exist, no empty
content, content per role, a function call before its output).

The store is a doubly linked list kept in two dicts (``id -> next id`` and ``id -> previous
id``) plus an ``id -> item`` dict, so inserting after any item, appending, deleting and looking up
an item are all O(1). Only materialising the whole ordered list (for inspection) walks it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import protocol as p

JsonDict = dict[str, Any]

NEUTRAL_PART_TYPES = ("input_text", "input_audio", "text", "audio")
"""Content part types as stored: system/user ``input_text``, user ``input_audio``, assistant
``text`` (and ``audio`` for generated replies, which clients cannot create)."""


class Conversation:
    """Authoritative, ordered list of conversation items of one websocket connection.

    Items are stored in their server shape (``object: "realtime.item"``...). ``None`` is the
    sentinel standing for "the beginning" (as predecessor) and "the end" (as successor).
    """

    def __init__(self) -> None:
        self._items: dict[str, JsonDict] = {}
        self._next: dict[str | None, str | None] = {None: None}
        self._prev: dict[str | None, str | None] = {None: None}
        # call_id -> number of function_call items carrying it (for function_call_output checks)
        self._call_ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[JsonDict]:
        cur = self._next[None]
        while cur is not None:
            yield self._items[cur]
            cur = self._next[cur]

    def get(self, item_id: str) -> JsonDict | None:
        """Return the stored item with this id, or ``None``."""
        return self._items.get(item_id)

    @property
    def last_id(self) -> str | None:
        """Id of the last item, ``None`` when the conversation is empty."""
        return self._prev[None]

    def previous_id(self, item_id: str) -> str | None:
        """Id of the item preceding ``item_id`` (``None`` if it is the first one)."""
        return self._prev[item_id]

    def insert_after(self, previous_id: str | None, item: JsonDict) -> None:
        """Insert ``item`` right after ``previous_id`` (``None`` = at the beginning).

        Raises:
            KeyError: if ``previous_id`` is not in the conversation.
            ValueError: if the item id is already present.
        """
        item_id = item["id"]
        if item_id in self._items:
            raise ValueError(f"duplicate item id {item_id!r}")
        if previous_id is not None and previous_id not in self._items:
            raise KeyError(previous_id)

        nxt = self._next[previous_id]
        self._next[previous_id] = item_id
        self._prev[item_id] = previous_id
        self._next[item_id] = nxt
        self._prev[nxt] = item_id
        self._items[item_id] = item
        if item.get("type") == "function_call" and isinstance(call_id := item.get("call_id"), str):
            self._call_ids[call_id] = self._call_ids.get(call_id, 0) + 1

    def append(self, item: JsonDict) -> str | None:
        """Append ``item`` at the end and return the id of the item it now follows."""
        previous_id = self.last_id
        self.insert_after(previous_id, item)
        return previous_id

    def delete(self, item_id: str) -> JsonDict:
        """Remove and return the item ``item_id``.

        Raises:
            KeyError: if the item does not exist.
        """
        item = self._items.pop(item_id)
        prev = self._prev.pop(item_id)
        nxt = self._next.pop(item_id)
        self._next[prev] = nxt
        self._prev[nxt] = prev
        if item.get("type") == "function_call" and isinstance(call_id := item.get("call_id"), str):
            left = self._call_ids.get(call_id, 0) - 1
            if left > 0:
                self._call_ids[call_id] = left
            else:
                self._call_ids.pop(call_id, None)
        return item

    def has_function_call(self, call_id: str) -> bool:
        """Whether a ``function_call`` item with this ``call_id`` is in the conversation."""
        return call_id in self._call_ids

    def items(self) -> list[JsonDict]:
        """All items, in conversation order (O(n))."""
        return list(self)

    def ids(self) -> list[str]:
        """All item ids, in conversation order (O(n))."""
        out: list[str] = []
        cur = self._next[None]
        while cur is not None:
            out.append(cur)
            cur = self._next[cur]
        return out


# --------------------------------------------------------------------------- Azure's item rules


def precheck_create(ev: JsonDict) -> p.ErrorSpec | None:
    """The checks Azure makes on ``conversation.item.create`` before any schema check.

    1. ``item.type`` missing: the error the user saw on Azure (real code, message and param).
    2. client-chosen ids of more than 32 characters (code inferred), or with characters other
       than ASCII letters, digits, ``_`` and ``-`` (OpenAI's error, livekit/agents#1717).
    """
    item = ev.get("item")
    if item is None:
        return p.missing_param("item")
    if not isinstance(item, dict):
        return p.invalid_type("item", "expected an object")  # guess
    if item.get("type") is None:
        return p.missing_param("item.type")
    item_id = item.get("id")
    if isinstance(item_id, str) and len(item_id) > p.MAX_ITEM_ID_LENGTH:
        return p.string_too_long("item.id", len(item_id), p.MAX_ITEM_ID_LENGTH)
    if isinstance(item_id, str) and not p.ITEM_ID_RE.fullmatch(item_id):
        return p.pattern_mismatch("item.id", p.ITEM_ID_RE.pattern)
    return None


def check_create(
    conv: Conversation,
    ev: JsonDict,
    *,
    allowed_content: Mapping[str, Sequence[str]],
    to_neutral: Mapping[str, str],
    enforce_function_call_output_call_id: bool,
) -> p.ErrorSpec | tuple[JsonDict, str | None]:
    """Azure's rules for a schema-valid ``conversation.item.create``.

    Args:
        conv: the connection's conversation.
        ev: the client event (already through :func:`precheck_create` and the schema check).
        allowed_content: per role, the content part types a client may send, in wire names.
        to_neutral: wire content part type -> stored (neutral) type.
        enforce_function_call_output_call_id: see ``FakeAzureRealtimeServer``.

    Returns:
        an error, or the item to store (neutral shape) and the ``previous_item_id`` asked for.
    """
    item = ev["item"]
    item_id = item.get("id")
    # 3. duplicate id: code and message are a guess modelled on the known
    #    `item_create_invalid_previous_item_id` one
    if item_id is not None and item_id in conv:
        return p.ErrorSpec(
            "item_create_duplicate_id",
            f"Error adding item: the item with id '{item_id}' already exists.",
            "item.id",
        )
    # 4. unknown previous item (real code and message; param is a guess)
    previous = ev.get("previous_item_id")
    if previous is not None and previous != "root" and previous not in conv:
        return p.ErrorSpec(
            "item_create_invalid_previous_item_id",
            f"Error adding item: the previous item with id '{previous}' does not exist.",
            "previous_item_id",
        )

    # Guess: every created item is echoed with status "completed" (also
    # function_call_output, for which OpenAI's examples are inconsistent).
    out: JsonDict = {
        "id": item_id if item_id is not None else p.new_item_id(),
        "object": "realtime.item",
        "type": item["type"],
        "status": "completed",
    }
    if item["type"] == "message":
        role = item.get("role")
        if role is None:
            return p.missing_param("item.role")  # guess
        # 5. empty or absent content (real code `empty_array`, param `item.content`)
        content = item.get("content")
        if not content:
            return p.empty_array("item.content")
        parts: list[JsonDict] = []
        allowed = list(allowed_content[role])
        for i, part in enumerate(content):
            ptype = part.get("type")
            if ptype is None:
                return p.missing_param(f"item.content[{i}].type")  # guess
            # 6. content type per role: `invalid_value` on item.content[i].type is inferred
            if ptype not in allowed:
                return p.invalid_value(f"item.content[{i}].type", ptype, allowed)
            neutral = to_neutral[ptype]
            if neutral in ("input_text", "text"):
                if part.get("text") is None:
                    return p.missing_param(f"item.content[{i}].text")  # guess
                parts.append({"type": neutral, "text": part["text"]})
            elif neutral == "input_image":  # GA only (see ga.py)
                image_url = part.get("image_url")
                if image_url is None:
                    return p.missing_param(f"item.content[{i}].image_url")  # guess
                # Guess: like OpenAI's schema says, only PNG and JPEG data URLs
                if not str(image_url).startswith(("data:image/png;", "data:image/jpeg;")):
                    return p.invalid_value(
                        f"item.content[{i}].image_url",
                        str(image_url)[:32],
                        ["data:image/png;base64,...", "data:image/jpeg;base64,..."],
                    )
                parts.append({"type": "input_image", "image_url": image_url})
            else:  # input_audio
                if part.get("audio") is None:
                    return p.missing_param(f"item.content[{i}].audio")  # guess
                # the base64 audio is deliberately not echoed back (guess: nor does Azure)
                parts.append({"type": "input_audio", "transcript": part.get("transcript")})
        out["role"] = role
        out["content"] = parts
    elif item["type"] == "function_call":
        # 7. required fields of a function call (missing_required_parameter; guess)
        for key in ("call_id", "name", "arguments"):
            if item.get(key) is None:
                return p.missing_param(f"item.{key}")
        out.update(call_id=item["call_id"], name=item["name"], arguments=item["arguments"])
    else:  # function_call_output (the schema check restricted the type literal)
        for key in ("call_id", "output"):
            if item.get(key) is None:
                return p.missing_param(f"item.{key}")
        # 8. OpenAI documents that the server checks the call_id exists; whether Azure does,
        #    and this code/message, are guesses (switchable).
        if enforce_function_call_output_call_id and not conv.has_function_call(item["call_id"]):
            return p.ErrorSpec(
                "invalid_function_call_output",
                "Error adding item: no function call with call_id "
                f"'{item['call_id']}' exists in the conversation.",
                "item.call_id",
            )
        out.update(call_id=item["call_id"], output=item["output"])
    return out, previous


def copy_item(item: JsonDict) -> JsonDict:
    """Snapshot of a stored item for an outgoing event (stored items mutate later)."""
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(c) for c in out["content"]]
    return out
