"""Load test of the beta realtime chat context sync against the strict fake Azure server.

A 2 000-item context (user/assistant/system messages, function calls with their outputs) is
synced into a fresh session, then 50 small incremental syncs (add, edit, remove, move a few
items) and a few large reshuffles follow. After every settled call: no server error, the
server conversation equals the local view, the session mirror (``session.chat_ctx``) equals
the server conversation, and the pending-future maps are empty (nothing accumulates). With
``FORK_SOAK=1`` the context has 10 000 items and 200 incremental syncs follow.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer, make_model
from sync_helpers import stored_events

from livekit.agents import llm

UNDER_TEST = os.environ.get("FORK_UNDER_TEST", "fork")
SOAK = os.environ.get("FORK_SOAK") == "1"

pytestmark = pytest.mark.skipif(
    UNDER_TEST == "upstream", reason="load behaviour of the fork's sync (upstream: O(n*m) diff)"
)

Norm = tuple[Any, ...]


def norm_server(item: dict[str, Any]) -> Norm:
    if item["type"] == "message":
        texts = tuple(p.get("text") for p in item["content"])
        return (item["id"], "message", item["role"], texts)
    if item["type"] == "function_call":
        return (item["id"], "function_call", item["call_id"], item["name"], item["arguments"])
    return (item["id"], "function_call_output", item["call_id"], item["output"])


def norm_local(item: llm.ChatItem) -> Norm:
    if item.type == "message":
        return (item.id, "message", item.role, tuple(item.content))
    if item.type == "function_call":
        return (item.id, "function_call", item.call_id, item.name, item.arguments)
    assert item.type == "function_call_output"
    return (item.id, "function_call_output", item.call_id, item.output)


class Workload:
    """A seeded stream of chat items and edits."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def text(self) -> str:
        return " ".join(self.rng.choice(["hello", "ok", "why", "sure", "é", "中文"]) for _ in "abc")

    def block(self) -> list[llm.ChatItem]:
        """One or two consecutive items: a message, or a function call and its output."""
        kind = self.rng.random()
        if kind < 0.15:
            call_id = self._id("call")
            name = self.rng.choice(["lookup", "book"])
            return [
                llm.FunctionCall(
                    id=self._id("fc"),
                    call_id=call_id,
                    name=name,
                    arguments=json.dumps({"q": self.text()}),
                ),
                llm.FunctionCallOutput(
                    id=self._id("out"),
                    call_id=call_id,
                    name=name,
                    output=self.text(),
                    is_error=False,
                ),
            ]
        role = self.rng.choice(["user", "assistant", "user", "assistant", "system"])
        return [llm.ChatMessage(id=self._id("m"), role=role, content=[self.text()])]

    def context(self, size: int) -> list[llm.ChatItem]:
        items: list[llm.ChatItem] = []
        while len(items) < size:
            items.extend(self.block())
        return items  # `size` items, or one more to keep a call with its output

    def small_edit(self, items: list[llm.ChatItem]) -> None:
        """Add, edit, remove or move one to three messages."""
        for _ in range(self.rng.randint(1, 3)):
            op = self.rng.random()
            messages = [i for i, it in enumerate(items) if it.type == "message"]
            if op < 0.4 or not messages:
                pos = self.rng.randint(0, len(items))
                items[pos:pos] = self.block()
            elif op < 0.6:
                i = self.rng.choice(messages)
                items[i] = items[i].model_copy(update={"content": [self.text()]})
            elif op < 0.8:
                del items[self.rng.choice(messages)]
            else:
                item = items.pop(self.rng.choice(messages))
                items.insert(self.rng.randint(0, len(items)), item)

    def reshuffle(self, items: list[llm.ChatItem], share: float) -> None:
        """Move, drop and insert a ``share`` of the messages each."""
        count = max(1, int(len(items) * share))
        for _ in range(count):
            self.small_edit(items)
        popped = [items.pop(self.rng.randrange(len(items))) for _ in range(count)]
        # outputs whose call was popped go too (an output of an unknown call is not sent)
        calls = {i.call_id for i in items if i.type == "function_call"}
        items[:] = [i for i in items if i.type != "function_call_output" or i.call_id in calls]
        for item in popped:
            if item.type == "message" and self.rng.random() < 0.5:
                items.insert(self.rng.randint(0, len(items)), item)


async def test_large_context_and_rapid_syncs(fake_azure: FakeAzureRealtimeServer) -> None:
    size, incremental, bound = (10_000, 200, 120.0) if SOAK else (2_000, 50, 25.0)
    work = Workload(seed=20260316)
    model = make_model(fake_azure)
    session = model.session()
    started = time.monotonic()
    timings: list[float] = []

    async def sync_and_check(items: list[llm.ChatItem], timeout: float) -> None:
        t0 = time.monotonic()
        await asyncio.wait_for(session.update_chat_ctx(llm.ChatContext(items=list(items))), timeout)
        timings.append(time.monotonic() - t0)
        pending = stored_events(session._chat_sync.events)
        assert not pending, f"{pending} item events still pending after a settled call"
        assert not fake_azure.errors, [(e.code, e.message) for e in fake_azure.errors[:3]]
        assert fake_azure.typeless_creates == 0
        server = [norm_server(i) for i in fake_azure.conversation]
        assert server == [norm_local(i) for i in items], "server conversation != local view"
        # the mirror only learns the server's echo: compare it once the client read everything
        mirror = [norm_local(i) for i in session.chat_ctx.items]
        assert mirror == server, "session.chat_ctx != server conversation"

    try:
        items = work.context(size)
        await sync_and_check(items, bound)
        first = timings[0]
        for _ in range(incremental):
            work.small_edit(items)
            await sync_and_check(items, 5.0)
        for share in (0.02, 0.05, 0.1):
            work.reshuffle(items, share)
            await sync_and_check(items, bound)
    finally:
        await asyncio.wait_for(session.aclose(), 5.0)
        await model.aclose()
    total = time.monotonic() - started
    print(
        f"\nload: {size} items in {first:.2f}s, {incremental} incremental syncs "
        f"(max {max(timings[1 : incremental + 1]):.3f}s), 3 reshuffles "
        f"(max {max(timings[incremental + 1 :]):.2f}s), {len(fake_azure.received)} client "
        f"events, total {total:.1f}s"
    )
    assert total < bound * 2
