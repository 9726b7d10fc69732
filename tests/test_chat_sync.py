"""Property tests of the sync planner (``realtime/chat_sync.py``) on its own, without a server.

A random mirror (items made by the client or by the service, whose content is known from before
the sync, became known during it, or is not known) and a random local context derived from it
(drops, edits, moves, new items) are planned with ``plan_sync``; the plan is then applied to a
model of the service that follows its rules (deletes of present items, each create after an item
it holds). The properties are the module docstring's rule:

- the service ends up holding the local context plus the kept unknown items, all of which are
  still there, unchanged;
- every local item but voice turns (the service's user audio items) and items of unknown
  content is in local order; voice turns and unknown items do not move;
- an audio reply of the service is re-created only where keeping it cannot keep the order:
  as many audio replies stay as the longest run of them already in local order;
- every anchor is an item the service held before the sync, except after a function call output
  chained on its call; one rejected create fails no other create, but such outputs;
- planning again against the updated mirror sends nothing;
- ``plan_replay`` re-creates every known item in order.

On pristine upstream the module does not exist: the tests are skipped there, and only for that.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from livekit.agents import llm

chat_sync = pytest.importorskip(
    "livekit.plugins.openai.realtime.chat_sync",
    reason="the planner is not in this build (pristine upstream); patch 0004 adds it",
)

if TYPE_CHECKING:
    from livekit.plugins.openai.realtime.chat_sync import RemoteConversation, SyncPlan

T = TypeVar("T")


def drained(steps: Generator[None, None, T]) -> T:
    """Run a ``*_steps`` generator of the planner to its end, without pausing."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def protocol_items(ctx: llm.ChatContext, remote: RemoteConversation, **kwargs: Any) -> Any:
    return drained(chat_sync.protocol_items_steps(ctx, remote, **kwargs))


def plan_sync(remote: RemoteConversation, local: Sequence[llm.ChatItem], *, since: int) -> Any:
    return drained(chat_sync.plan_sync_steps(remote, local, since=since))


def plan_replay(remote: RemoteConversation) -> Any:
    return drained(chat_sync.plan_replay_steps(remote))


Known = Literal["before", "during", "never"]
Origin = Literal["client", "server"]
Kind = Literal["message", "call", "output", "reply"]


@dataclass
class Spec:
    item_id: str
    origin: Literal["client", "server"]
    known: Known
    text: str
    kind: Literal["message", "call", "output", "reply"] = "message"


def _item(spec: Spec, text: str | None = None) -> llm.ChatItem:
    text = spec.text if text is None else text
    if spec.kind == "call":
        return llm.FunctionCall(
            id=spec.item_id, call_id=f"c_{spec.item_id}", name="f", arguments=text
        )
    if spec.kind == "output":
        return llm.FunctionCallOutput(id=spec.item_id, call_id=text, output="ok", is_error=False)
    role = "user" if spec.origin == "server" else "system"
    if spec.kind == "reply":
        role = "assistant"
    return llm.ChatMessage(id=spec.item_id, role=role, content=[text] if text else [])


def _mirror(specs: list[Spec]) -> tuple[RemoteConversation, int]:
    """The mirror of ``specs`` and the ``since`` of a sync begun before "during" items were known."""
    remote = chat_sync.RemoteConversation()
    prev: str | None = None
    for spec in specs:
        if spec.origin == "client":
            remote.add(_item(spec), prev, origin="client")
        else:
            empty = _item(spec, "") if spec.kind == "message" else _item(spec, "")
            remote.add(empty, prev, origin="server", known=False)
            remote.get(spec.item_id).audio = spec.kind == "reply"
            if spec.known == "before":
                remote.complete(spec.item_id, _item(spec))
        prev = spec.item_id
    since = remote.revision
    for spec in specs:
        if spec.origin == "server" and spec.known == "during":
            remote.complete(spec.item_id, _item(spec))
    return remote, since


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Spec], list[llm.ChatItem]]:
    n = draw(st.integers(0, 14))
    specs: list[Spec] = []
    for i in range(n):
        origin: Origin = draw(st.sampled_from(["client", "server"]))
        known: Known = (
            "before" if origin == "client" else draw(st.sampled_from(["before", "during", "never"]))
        )
        kind: Kind = "message"
        if origin == "server":
            kind = draw(st.sampled_from(["message", "message", "call", "reply", "reply"]))
        specs.append(Spec(f"r{i}", origin, known, draw(st.sampled_from(["a", "b", "c d"])), kind))
    # local: what the local side can hold (unknown items only by chance, with some text)
    local: list[llm.ChatItem] = []
    for spec in specs:
        action = draw(st.sampled_from(["keep", "keep", "drop", "edit", "respace"]))
        if action == "drop":
            continue
        if action == "edit" and spec.kind in ("message", "reply"):
            local.append(_item(spec, spec.text + "!"))
        elif action == "respace" and spec.kind in ("message", "reply"):
            local.append(_item(spec, "  " + spec.text.replace(" ", "   ") + " "))
        else:
            local.append(_item(spec))
    for _ in range(draw(st.integers(0, 4))):  # moves
        if local:
            moved = local.pop(draw(st.integers(0, len(local) - 1)))
            local.insert(draw(st.integers(0, len(local))), moved)
    calls = [s for s in specs if s.kind == "call"]
    for k in range(draw(st.integers(0, 5))):  # new items
        pos = draw(st.integers(0, len(local)))
        if draw(st.integers(0, 3)) == 0:
            call = llm.FunctionCall(id=f"nc{k}", call_id=f"c_nc{k}", name="f", arguments="{}")
            out = llm.FunctionCallOutput(
                id=f"no{k}", call_id=f"c_nc{k}", output="1", is_error=False
            )
            local[pos:pos] = [call, out]
        elif len(calls) > 0 and draw(st.booleans()):
            called: Spec = draw(st.sampled_from(calls))
            call_id = f"c_{called.item_id}"
            local.insert(
                pos, llm.FunctionCallOutput(id=f"n{k}", call_id=call_id, output="1", is_error=False)
            )
        else:
            local.insert(pos, llm.ChatMessage(id=f"n{k}", role="user", content=[f"new {k}"]))
    return specs, local


class ModelService:
    """The service's conversation under its rules: ids unique, anchors must exist."""

    def __init__(self, remote: RemoteConversation) -> None:
        self.items: list[llm.ChatItem] = [r.item for r in remote.items()]

    def ids(self) -> list[str]:
        return [i.id for i in self.items]

    def delete(self, item_id: str) -> None:
        assert item_id in self.ids(), f"delete of {item_id}, which the service does not hold"
        self.items = [i for i in self.items if i.id != item_id]

    def create(self, item: llm.ChatItem, anchor: str | None) -> bool:
        ids = self.ids()
        assert item.id not in ids, f"create of {item.id}, which the service holds"
        if anchor is not None and anchor not in ids:
            return False  # item_create_invalid_previous_item_id
        self.items.insert(0 if anchor is None else ids.index(anchor) + 1, item)
        return True

    def apply(self, plan: SyncPlan, reject: str | None = None) -> list[str]:
        """Apply ``plan``; returns the ids whose create failed (``reject`` is refused)."""
        for item_id in plan.deletes:
            self.delete(item_id)
        failed = []
        for insertion in plan.insertions:
            for item in reversed(insertion.items):
                if item.id == reject or not self.create(item, insertion.anchor):
                    failed.append(item.id)
        return failed


def _text(item: llm.ChatItem) -> str:
    if item.type == "message":
        return " ".join(" ".join(c for c in item.content if isinstance(c, str)).split())
    if item.type == "function_call":
        return f"call {item.call_id} {item.name} {item.arguments}"
    if item.type == "function_call_output":
        return f"output {item.call_id} {item.output}"
    return item.type


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plan_brings_the_service_in_line(scenario: tuple[list[Spec], list[llm.ChatItem]]) -> None:
    specs, local = scenario
    remote, since = _mirror(specs)
    by_id = {s.item_id: s for s in specs}
    unknown = {s.item_id for s in specs if s.origin == "server" and s.known in ("during", "never")}
    before = {r.item.id: r.item for r in remote.items()}
    plan = plan_sync(remote, local, since=since)
    assert set(plan.kept) == unknown

    service = ModelService(remote)
    assert service.apply(plan) == []
    final = {i.id: i for i in service.items}
    local_ids = [i.id for i in local]

    # the local context plus the kept unknown items, these unchanged
    assert set(final) == set(local_ids) | unknown
    for item_id in unknown:
        assert final[item_id] is before[item_id]
    for item in local:
        if item.id not in unknown:
            assert _text(final[item.id]) == _text(item), item.id

    # every local item but voice turns and unknown items in local order; those where they were
    pinned = unknown | {s.item_id for s in specs if s.origin == "server" and s.kind == "message"}
    order = service.ids()
    movable = [i for i in local_ids if i not in pinned]
    assert [i for i in order if i in set(movable)] == movable
    stayed = [i for i in before if i in pinned and i in final]
    assert [i for i in order if i in set(stayed)] == stayed

    # audio replies: as many stay as the longest run of them already in local order
    by_local = {i.id: i for i in local}
    audio = [
        i
        for i in before
        if by_id[i].kind == "reply"
        and i not in unknown
        and i in by_local
        and _text(by_local[i]) == _text(before[i])  # edited: replaced, whatever its place
    ]
    recreated = {item.id for insertion in plan.insertions for item in insertion.items}
    local_audio = [i for i in local_ids if i in set(audio)]
    assert len([i for i in audio if i not in recreated]) >= _longest_in_order(audio, local_audio)

    # anchors: held before the sync, but a call the sync creates, for the outputs of the calls
    # made with it and the items between them
    created = {item.id: item for insertion in plan.insertions for item in insertion.items}
    for insertion in plan.insertions:
        if insertion.anchor is not None and insertion.anchor in created:
            assert created[insertion.anchor].type == "function_call"

    # planning again against the mirror as the service confirms it: nothing to send
    mirror = chat_sync.RemoteConversation(revision=remote.revision)
    prev: str | None = None
    for item in service.items:
        state = remote.get(item.id)
        if state is not None and state.item is item:
            mirror.add(item, prev, origin=state.origin, known=state.known_at is not None)
        else:  # created by the plan: a server-made item replaced in place stays server-made
            mirror.add(item, prev, origin="server" if item.id in plan.replaced else "client")
        prev = item.id
    for held in plan.held:
        mirror.complete(held.id, held)
    # ...but for the items kept because their content became known during the first sync: the
    # next sync treats them as ordinary items, deleted if the local context lacks them and
    # replaced if it holds another text
    # (and, for the ones that are not voice turns, moved to their local place)
    again = plan_sync(mirror, local, since=mirror.revision)
    late = {s.item_id for s in specs if s.origin == "server" and s.known == "during"}
    # ...and the unknown items the sync took from the local context (known from then on)
    late_movable = {i for i in late | {h.id for h in plan.held} if by_id[i].kind != "message"}
    edited = {i for i in late if i in by_local and _text(by_local[i]) != _text(_item(by_id[i]))}
    again_created = {item.id for insertion in again.insertions for item in insertion.items}
    gone = (late - set(local_ids)) | edited
    assert edited <= again_created and gone <= set(again.deletes)
    if not late_movable:
        assert again_created == edited and set(again.deletes) == gone
    # ...and then the whole local order holds (these items may move now)
    assert service.apply(again) == []
    order = service.ids()
    pinned_now = {s.item_id for s in specs if s.origin == "server" and s.kind == "message"}
    movable = [i for i in local_ids if i not in (unknown - late - {h.id for h in plan.held})]
    movable = [i for i in movable if i not in pinned_now]
    assert [i for i in order if i in set(movable)] == movable


def _longest_in_order(service_order: list[str], local_order: list[str]) -> int:
    """How many of the ids can stay: the longest common subsequence of two orders."""
    table = [[0] * (len(local_order) + 1) for _ in range(len(service_order) + 1)]
    for i, a in enumerate(service_order):
        for j, b in enumerate(local_order):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_one_rejection_fails_no_other_create(
    scenario: tuple[list[Spec], list[llm.ChatItem]], data: st.DataObject
) -> None:
    specs, local = scenario
    remote, since = _mirror(specs)
    plan = plan_sync(remote, local, since=since)
    creates = [item.id for insertion in plan.insertions for item in insertion.items]
    if not creates:
        return
    rejected = data.draw(st.sampled_from(creates))
    failed = ModelService(remote).apply(plan, reject=rejected)
    # besides the rejected item, only runs hung on it can fail (it is a call: the outputs of the
    # calls made with it, and the items between them)
    chained = {
        item.id
        for insertion in plan.insertions
        if insertion.anchor == rejected
        for item in insertion.items
    }
    assert set(failed) <= {rejected} | chained
    assert rejected in failed


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_replay_recreates_every_known_item_in_order(
    scenario: tuple[list[Spec], list[llm.ChatItem]],
) -> None:
    specs, _ = scenario
    remote, _ = _mirror(specs)
    insertions, lost, empty = plan_replay(remote)
    service = ModelService(chat_sync.RemoteConversation())
    assert service.apply(chat_sync.SyncPlan(insertions=insertions)) == []
    expected = [
        r.item.id
        for r in remote.items()
        if r.known_at is not None and (r.item.type != "message" or r.item.content)
    ]
    assert service.ids() == expected
    assert set(lost) == {r.item.id for r in remote.items() if r.known_at is None}
    assert set(empty) == {
        r.item.id
        for r in remote.items()
        if r.known_at is not None and r.item.type == "message" and not r.item.content
    }


def _msg(
    item_id: str, text: str, role: Literal["user", "assistant", "system"] = "user"
) -> llm.ChatMessage:
    return llm.ChatMessage(id=item_id, role=role, content=[text] if text else [])


def test_truncated_reply_keeps_what_was_heard() -> None:
    remote = chat_sync.RemoteConversation()
    remote.add(_msg("a1", "", "assistant"), None, origin="server", known=False)
    remote.truncate("a1", "First part.")
    # the reply's end arrives after the cut: the mirror keeps what the user heard
    remote.complete("a1", _msg("a1", "First part. Second part.", "assistant"))
    assert _text(remote.get("a1").item) == "First part."
    insertions, lost, empty = plan_replay(remote)
    assert [_text(i) for insertion in insertions for i in insertion.items] == ["First part."]
    assert not lost and not empty


def test_new_items_land_after_a_pending_user_turn() -> None:
    remote = chat_sync.RemoteConversation()
    remote.add(_msg("k1", "hi", "system"), None, origin="client")
    remote.add(_msg("u1", ""), "k1", origin="server", known=False)  # transcript pending
    plan = plan_sync(remote, [_msg("k1", "hi", "system"), _msg("n1", "x")], since=0)
    assert plan.deletes == [] and plan.kept == ["u1"]
    assert [(r.anchor, [i.id for i in r.items]) for r in plan.insertions] == [("u1", ["n1"])]


def test_runs_sharing_an_anchor_are_one_run() -> None:
    # server [k1, k2, P], local [k1, N1, P, N2, k2]: N1 and N2 both go after k1, as one run
    remote = chat_sync.RemoteConversation()
    remote.add(_msg("k1", "a", "system"), None, origin="client")
    remote.add(_msg("k2", "b", "system"), "k1", origin="client")
    remote.add(_msg("P", ""), "k2", origin="server", known=False)
    local = [
        _msg("k1", "a", "system"),
        _msg("N1", "1"),
        _msg("P", "p"),
        _msg("N2", "2"),
        _msg("k2", "b", "system"),
    ]
    plan = plan_sync(remote, local, since=remote.revision)
    assert [(r.anchor, [i.id for i in r.items]) for r in plan.insertions] == [("k1", ["N1", "N2"])]


def test_skipped_items_are_warned_once() -> None:
    ctx = llm.ChatContext(items=[_msg("e", ""), _msg("ok", "fine")])
    warned: set[str] = set()
    remote = chat_sync.RemoteConversation()
    items, warnings = protocol_items(ctx, remote, warned=warned)
    assert [i.id for i in items] == ["ok"] and len(warnings) == 1 and warnings[0][0] == "e"
    assert "`e`" in warnings[0][1]
    assert protocol_items(ctx, remote, warned=warned)[1] == []


def test_an_empty_message_the_service_holds_is_left_as_it_is() -> None:
    """A voice turn transcribed as "": the local empty message is that item, not a skip."""
    remote = chat_sync.RemoteConversation()
    remote.add(_msg("u1", ""), None, origin="server", known=False)
    remote.complete("u1", _msg("u1", ""))
    ctx = llm.ChatContext(items=[_msg("u1", "")])
    items, warnings = protocol_items(ctx, remote, warned=set())
    assert [i.id for i in items] == ["u1"] and warnings == []
    plan = plan_sync(remote, items, since=remote.revision)
    assert not plan


def test_a_move_before_an_audio_reply_recreates_the_moved_item() -> None:
    """Service [k, R, c], R a spoken reply; local [k, c, R]: c is re-created before R."""
    remote = chat_sync.RemoteConversation()
    remote.add(_msg("k", "a", "system"), None, origin="client")
    remote.add(_msg("R", "", "assistant"), "k", origin="server", known=False)
    remote.get("R").audio = True
    remote.complete("R", _msg("R", "hello", "assistant"))
    remote.add(_msg("c", "b", "system"), "R", origin="client")
    local = [_msg("k", "a", "system"), _msg("c", "b", "system"), _msg("R", "hello", "assistant")]
    plan = plan_sync(remote, local, since=remote.revision)
    assert plan.deletes == ["c"]
    assert [(r.anchor, [i.id for i in r.items]) for r in plan.insertions] == [("k", ["c"])]
    service = ModelService(remote)
    assert service.apply(plan) == [] and service.ids() == ["k", "c", "R"]


def test_duplicate_ids_raise_before_anything_is_planned() -> None:
    ctx = llm.ChatContext(items=[_msg("x", "a"), _msg("x", "b")])
    with pytest.raises(chat_sync.ChatContextSyncError, match="more than one item"):
        protocol_items(ctx, chat_sync.RemoteConversation(), warned=set())


def test_many_new_calls_and_outputs_plan_in_one_pass() -> None:
    """Thousands of new calls with their outputs (a replay of a long call with tools): planned
    without recursion, in order, each output after its call."""
    local: list[llm.ChatItem] = []
    for k in range(3000):
        local.append(_msg(f"m{k}", "x"))
        local.append(llm.FunctionCall(id=f"c{k}", call_id=f"k{k}", name="f", arguments="{}"))
        local.append(
            llm.FunctionCallOutput(id=f"o{k}", call_id=f"k{k}", output="1", is_error=False)
        )
    plan = plan_sync(chat_sync.RemoteConversation(), local, since=0)
    service = ModelService(chat_sync.RemoteConversation())
    assert service.apply(plan) == []
    assert service.ids() == [i.id for i in local]
