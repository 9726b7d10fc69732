"""Ordered conversation store of the fake Azure OpenAI Realtime server.

The store is a doubly linked list kept in two dicts (``id -> next id`` and ``id -> previous
id``) plus an ``id -> item`` dict, so inserting after any item, appending, deleting and looking up
an item are all O(1). Only materialising the whole ordered list (for inspection) walks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

JsonDict = dict[str, Any]


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
