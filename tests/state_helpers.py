"""The fork's conversation state and its asyncio layer, driven without a session or a service.

For tests of event orders around the state machine (``conversation.ConversationState``) and
``chat_sync_io.ChatSyncIO``; the fork's modules only, so a test imports this after it has
skipped pristine upstream (``pytest.importorskip`` of them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from livekit.agents import llm
from livekit.plugins.openai.realtime import (
    chat_sync_io,
    conversation,
    realtime_model,
    realtime_model_beta,
)

# the wire layer of each protocol's session: how it writes the state's operations
_WIRE = {"preview": realtime_model_beta, "ga": realtime_model}


def unknown_server_items(state: Any, n: int, role: str, *, audio: bool = False) -> None:
    """Add ``n`` messages the service made (``s0``, ``s1``, ...) of unknown content to the view
    of ``state``; ``audio``: the service holds audio for them (spoken, no transcript yet)."""
    prev = None
    for k in range(n):
        item_id = f"s{k}"
        state.item_added(
            item_id,
            prev,
            lambda item_id=item_id: llm.ChatMessage(id=item_id, role=role, content=[]),
        )
        prev = item_id
    if audio:
        for r in state.remote:
            r.audio = True


def text_ctx(role: str, text: str, ks: Iterable[int]) -> llm.ChatContext:
    """A caller's context holding ``"<text> <k>"`` for each item ``s<k>``."""
    items: list[llm.ChatItem] = [
        llm.ChatMessage(id=f"s{k}", role=role, content=[f"{text} {k}"]) for k in ks
    ]
    return llm.ChatContext(items=items)


def chat_sync_io_runner(protocol: str, queued: list[Any]) -> Any:
    """A ``ChatSyncIO`` of ``protocol`` queueing into ``queued``, with numbered event ids."""
    images = protocol == "ga"
    io = chat_sync_io.ChatSyncIO(
        protocol=protocol,
        images=images,
        warned=set(),
        queue_event=queued.append,
        wire_event=_WIRE[protocol]._wire_event,
        closed=lambda: False,
    )
    ids = itertools.count()
    io.state = conversation.ConversationState(
        protocol=protocol, images=images, new_event_id=lambda prefix: f"{prefix}{next(ids)}"
    )
    return io


def spoken_replies_io(protocol: str, queued: list[Any], n: int) -> Any:
    """A ChatSyncIO on a connected session of ``protocol`` whose view holds ``n`` spoken replies
    of the service whose end has not arrived; the events it queues go to ``queued``."""
    io = chat_sync_io_runner(protocol, queued)
    unknown_server_items(io.state, n, "assistant", audio=True)
    io.connected()
    return io


def answer(io: Any, events: list[Any]) -> None:
    """The service does what the creates and deletes of ``events`` ask (and ``events`` empties)."""
    for ev in events:
        if ev.type == "conversation.item.create":
            io.item_created(ev.item.id, ev.previous_item_id, lambda ev=ev: ev.item)
        elif ev.type == "conversation.item.delete":
            io.item_deleted(ev.item_id)
    events.clear()
