"""Unit tests of livekit.plugins.openai.realtime.chat_sync (the sync planner, no I/O)."""

from __future__ import annotations

from livekit.agents import llm
from livekit.plugins.openai.realtime import chat_sync


def _ctx(*ids: str) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    for item_id in ids:
        ctx.add_message(role="user", content=f"text of {item_id}", id=item_id)
    return ctx


def test_long_item_ids_map_to_a_stable_short_id() -> None:
    long_id = "item_" + "x" * 60
    wire = chat_sync.wire_item_id(long_id)
    assert len(wire) <= chat_sync.MAX_ITEM_ID_LENGTH
    assert wire == chat_sync.wire_item_id(long_id)
    assert chat_sync.wire_item_id("item_short") == "item_short"


def test_diff_matches_the_framework_diff() -> None:
    old, new = _ctx("a", "b", "c", "d"), _ctx("b", "a", "d", "e")
    ours = chat_sync.compute_chat_ctx_diff(old, new)
    theirs = llm.utils.compute_chat_ctx_diff(old, new)
    assert sorted(ours.to_remove) == sorted(theirs.to_remove)
    assert sorted(ours.to_create, key=str) == sorted(theirs.to_create, key=str)


def test_an_empty_conversation_gets_every_item_in_order() -> None:
    remote = chat_sync.RemoteConversation()
    items, skipped = chat_sync.protocol_items(_ctx("a", "b"), remote, warned=set())
    assert skipped == []
    plan = chat_sync.plan_sync(remote, items, since=0)
    assert plan.deletes == []
    assert [i.id for ins in plan.insertions for i in ins.items] == ["a", "b"]
