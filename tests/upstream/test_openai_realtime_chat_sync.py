"""Unit tests of livekit.plugins.openai.realtime.chat_sync (the sync planner, no I/O).

Each test pins one rule of the module's docstring."""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from typing import Any, TypeVar, cast

import pytest

from livekit.agents import llm
from livekit.agents.voice.generation import INSTRUCTIONS_MESSAGE_ID
from livekit.plugins.openai.realtime import chat_sync
from livekit.plugins.openai.realtime.chat_sync import Insertion, RemoteConversation, SyncPlan

T = TypeVar("T")


def _msg(item_id: str, text: str | None = None, role: llm.ChatRole = "user") -> llm.ChatMessage:
    content: list[llm.ChatContent] = [f"text of {item_id}" if text is None else text]
    return llm.ChatMessage(role=role, content=content, id=item_id)


def _ctx(*items: llm.ChatItem) -> llm.ChatContext:
    return llm.ChatContext(items=list(items))


def _remote(*items: llm.ChatItem) -> RemoteConversation:
    """A mirror holding ``items`` as the client created them, content known."""
    remote = RemoteConversation()
    for item in items:
        last = remote.last()
        remote.add(item, last.item.id if last else None, origin="client")
    return remote


def _add_server(remote: RemoteConversation, item: llm.ChatItem, *, known: bool) -> None:
    last = remote.last()
    remote.add(item, last.item.id if last else None, origin="server", known=known)


def _after(remote: RemoteConversation, plan: SyncPlan) -> list[str]:
    """The service's order once the plan's events are applied (each run last item first)."""
    order = [r.item.id for r in remote if r.held and r.item.id not in plan.deletes]
    for insertion in plan.insertions:
        assert insertion.anchor is None or insertion.anchor in order  # only held anchors
        at = 0 if insertion.anchor is None else order.index(insertion.anchor) + 1
        for item in reversed(insertion.items):
            order.insert(at, item.id)
    return order


def _drain(steps: Generator[None, None, T]) -> T:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def _protocol_items(
    ctx: llm.ChatContext, remote: RemoteConversation, **kwargs: Any
) -> tuple[list[llm.ChatItem], list[tuple[str, str]]]:
    return _drain(chat_sync.protocol_items_steps(ctx, remote, **kwargs))


def _plan_sync(
    remote: RemoteConversation, local: Sequence[llm.ChatItem], *, since: int
) -> SyncPlan:
    return _drain(chat_sync.plan_sync_steps(remote, local, since=since))


def _plan_replay(remote: RemoteConversation) -> tuple[list[Insertion], list[str], list[str]]:
    return _drain(chat_sync.plan_replay_steps(remote))


def _items(ctx: llm.ChatContext, remote: RemoteConversation | None = None) -> list[llm.ChatItem]:
    items, _ = _protocol_items(ctx, remote or RemoteConversation(), warned=set())
    return items


def test_framework_bookkeeping_and_instructions_are_not_sent() -> None:
    ctx = _ctx(
        llm.AgentHandoff(new_agent_id="agent", id="handoff"),
        _msg(INSTRUCTIONS_MESSAGE_ID, "be brief", role="system"),
        _msg("a"),
    )
    items, skipped = _protocol_items(ctx, RemoteConversation(), warned=set())
    assert [item.id for item in items] == ["a"]
    assert skipped == []


def test_an_empty_message_is_skipped_with_one_warning_per_id() -> None:
    warned: set[str] = set()
    ctx = _ctx(_msg("empty", ""), _msg("a"))
    items, skipped = _protocol_items(ctx, RemoteConversation(), warned=warned)
    assert [item.id for item in items] == ["a"]
    assert [item_id for item_id, _ in skipped] == ["empty"]
    items, skipped = _protocol_items(ctx, RemoteConversation(), warned=warned)
    assert [item.id for item in items] == ["a"] and skipped == []


def test_an_output_without_its_call_and_an_unknown_item_type_are_skipped() -> None:
    output = llm.FunctionCallOutput(call_id="nope", output="42", is_error=False, id="out")
    unknown = cast(llm.ChatItem, type("Other", (), {"id": "other", "type": "other"})())
    ctx = _ctx(output, unknown, _msg("a"))
    items, skipped = _protocol_items(ctx, RemoteConversation(), warned=set())
    assert [item.id for item in items] == ["a"]
    assert [item_id for item_id, _ in skipped] == ["out", "other"]
    assert "call_id `nope`" in skipped[0][1] and "`other`" in skipped[1][1]


def test_an_empty_message_the_service_holds_is_that_item() -> None:
    remote = RemoteConversation()
    held = _msg("turn", "")
    _add_server(remote, held, known=True)  # a voice turn transcribed as ""
    items, skipped = _protocol_items(_ctx(_msg("turn", "")), remote, warned=set())
    assert items == [held] and skipped == []


def test_assistant_audio_is_sent_as_its_transcript_and_url_images_are_dropped() -> None:
    spoken = llm.ChatMessage(
        role="assistant", content=[llm.AudioContent(frame=[], transcript="hi")], id="r"
    )
    picture = llm.ChatMessage(
        role="user",
        content=["look", llm.ImageContent(image="https://example.com/x.png")],
        id="u",
    )
    items, skipped = _protocol_items(
        _ctx(spoken, picture), RemoteConversation(), warned=set(), images=True
    )
    assert [item.content for item in items if item.type == "message"] == [["hi"], ["look"]]
    assert [item_id for item_id, _ in skipped] == ["u"]


def test_ids_the_service_refuses_map_to_a_stable_short_id() -> None:
    for bad in ("item_" + "x" * 60, "item_\ud800", "abc/fnc_0", "a.b", "résumé", "a b", ""):
        wire = chat_sync.wire_item_id(bad)
        assert wire != bad and wire == chat_sync.wire_item_id(bad)
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,32}", wire)
    assert chat_sync.wire_item_id("item_short-1") == "item_short-1"
    assert chat_sync.wire_item_id("x" * 32) == "x" * 32
    assert [item.id for item in _items(_ctx(_msg("x" * 40)))] == [chat_sync.wire_item_id("x" * 40)]


def test_two_items_with_one_id_raise_before_anything_is_planned() -> None:
    with pytest.raises(chat_sync.ChatContextSyncError) as raised:
        _items(_ctx(_msg("a"), _msg("b"), _msg("a", "again")))
    assert raised.value.item_id == "a" and raised.value.code is None


def test_a_server_item_of_unknown_content_is_kept_where_it_is() -> None:
    remote = _remote(_msg("a"), _msg("b"))
    _add_server(remote, _msg("speech", ""), known=False)  # transcript pending
    plan = _plan_sync(remote, [_msg("b"), _msg("a")], since=remote.revision)
    assert "speech" not in plan.deletes and plan.kept == ["speech"]
    assert all("speech" not in [i.id for i in ins.items] for ins in plan.insertions)
    assert _after(remote, plan) == ["b", "speech", "a"]  # what is re-created comes after it


def test_content_known_after_the_sync_began_counts_as_unknown() -> None:
    remote = _remote(_msg("a"))
    _add_server(remote, _msg("speech", ""), known=False)
    since = remote.revision
    remote.complete("speech", _msg("speech", "hello"))
    plan = _plan_sync(remote, [remote.items()[0].item], since=since)
    assert not plan and plan.kept == ["speech"]


def test_a_known_transcript_missing_locally_is_deleted() -> None:
    remote = _remote(_msg("a"))
    _add_server(remote, _msg("speech", "hello"), known=True)
    plan = _plan_sync(remote, [remote.items()[0].item], since=remote.revision)
    assert plan.deletes == ["speech"] and plan.insertions == []


def test_an_edited_transcript_is_replaced_at_its_position() -> None:
    a, b = _msg("a"), _msg("b")
    remote = _remote(a)
    _add_server(remote, _msg("speech", "hello"), known=True)
    remote.add(b, "speech", origin="client")
    edited = _msg("speech", "goodbye")
    # the local message of a voice turn is appended when its transcript arrives
    plan = _plan_sync(remote, [a, b, edited], since=remote.revision)
    assert plan.deletes == ["speech"] and plan.replaced == {"speech"}
    assert plan.insertions == [Insertion("a", (edited,))]
    assert _after(remote, plan) == ["a", "speech", "b"]


def test_a_voice_turn_held_as_its_own_text_stays() -> None:
    remote = RemoteConversation()
    _add_server(remote, _msg("speech", "hello  there"), known=True)
    assert not _plan_sync(remote, [_msg("speech", "hello there")], since=remote.revision)


def test_new_items_are_runs_anchored_on_held_items_only() -> None:
    a, b, c, d, e = (_msg(i) for i in "abcde")
    remote = _remote(a, b, d)
    remote.get("b").held = False  # type: ignore[union-attr]  # a replay create not confirmed
    plan = _plan_sync(remote, [a, b, c, d, e], since=remote.revision)
    assert plan.deletes == []
    assert plan.insertions == [Insertion("a", (b, c)), Insertion("d", (e,))]
    assert _after(remote, plan) == ["a", "b", "c", "d", "e"]


def test_a_function_output_is_created_after_its_new_call() -> None:
    a, x, y = _msg("a"), _msg("x"), _msg("y")
    call = llm.FunctionCall(call_id="c1", name="f", arguments="{}", id="call")
    output = llm.FunctionCallOutput(call_id="c1", output="42", is_error=False, id="out")
    remote = _remote(a)
    plan = _plan_sync(remote, [a, call, x, output, y], since=remote.revision)
    # the output and the items between it and its call fail with the call, and only they
    assert Insertion("call", (x, output)) in plan.insertions
    assert all(output not in ins.items for ins in plan.insertions if ins.anchor != "call")
    assert _after(remote, plan) == ["a", "call", "x", "out", "y"]


REORDERS = [
    ("abcd", "badce"),
    ("abcdef", "fedcba"),
    ("abc", "xaybzc"),
    ("abcde", "ace"),
    ("abcd", "cdab"),
]


@pytest.mark.parametrize(("old", "new"), REORDERS)
def test_the_diff_is_the_framework_diff(old: str, new: str) -> None:
    old_ctx, new_ctx = _ctx(*(_msg(i) for i in old)), _ctx(*(_msg(i) for i in new))
    new_ctx.items[-1] = _msg(new[-1], "edited")
    ours = chat_sync.compute_chat_ctx_diff(old_ctx, new_ctx)
    theirs = llm.utils.compute_chat_ctx_diff(old_ctx, new_ctx)
    assert (ours.to_remove, ours.to_create, ours.to_update) == (
        theirs.to_remove,
        theirs.to_create,
        theirs.to_update,
    )


@pytest.mark.parametrize(("old", "new"), REORDERS)
def test_without_a_spoken_reply_the_plan_keeps_what_the_framework_diff_keeps(
    old: str, new: str
) -> None:
    items = {i: _msg(i) for i in old + new}
    remote = _remote(*(items[i] for i in old))
    local = [items[i] for i in new]
    plan = _plan_sync(remote, local, since=remote.revision)
    diff = llm.utils.compute_chat_ctx_diff(remote.to_chat_ctx(), _ctx(*local))
    assert sorted(plan.deletes) == sorted(diff.to_remove)
    assert sorted(i.id for ins in plan.insertions for i in ins.items) == sorted(
        item_id for _, item_id in diff.to_create
    )
    assert _after(remote, plan) == list(new)


def test_a_spoken_reply_outweighs_the_other_items() -> None:
    u, v, reply = _msg("u"), _msg("v"), _msg("reply", "sure", role="assistant")
    remote = _remote(u, v)
    remote.add(reply, "v", origin="server", audio=True)
    plan = _plan_sync(remote, [reply, u, v], since=remote.revision)
    assert plan.deletes == ["u", "v"]  # two re-created rather than the audio reply
    assert _after(remote, plan) == ["reply", "u", "v"]


def test_a_replay_recreates_known_items_in_order_and_reports_the_others() -> None:
    a = _msg("a")
    remote = _remote(a)
    _add_server(remote, _msg("said", "hello"), known=True)
    _add_server(remote, _msg("silent", ""), known=True)  # transcribed as ""
    _add_server(remote, _msg("pending", ""), known=False)
    insertions, lost, empty = _plan_replay(remote)
    assert [(ins.anchor, [i.id for i in ins.items]) for ins in insertions] == [
        (None, ["a", "said"])
    ]
    assert lost == ["pending"] and empty == ["silent"]


def test_a_truncated_reply_replays_what_the_user_heard() -> None:
    remote = RemoteConversation()
    _add_server(remote, _msg("reply", "", role="assistant"), known=False)
    remote.truncate("reply", "Hel")
    remote.complete("reply", _msg("reply", "Hello there", role="assistant"))
    insertions, _, _ = _plan_replay(remote)
    assert [cast(Any, i).content for ins in insertions for i in ins.items] == [["Hel"]]


def test_an_appended_context_is_planned_from_its_new_items_to_the_same_plan() -> None:
    a, b = _msg("a"), _msg("b")
    remote = _remote(a, b)
    ctx = _ctx(a, b, _msg("c"), _msg("d"))
    fast = _drain(chat_sync.appended_sync_steps(remote, ctx, since=remote.revision, warned=set()))
    assert fast is not None
    items, warnings, plan = fast
    assert [i.id for i in items] == ["c", "d"] and warnings == []
    assert plan == _plan_sync(remote, _items(ctx, remote), since=remote.revision)
    moved = _ctx(b, a, _msg("c"))  # not the view as it is, item for item: the full plan decides
    assert _drain(chat_sync.appended_sync_steps(remote, moved, since=0, warned=set())) is None
