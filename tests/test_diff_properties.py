"""Property tests of the planner's ``compute_chat_ctx_diff`` against upstream's.

``chat_sync.compute_chat_ctx_diff`` computes the diff through a longest increasing subsequence
(O(n log n)) instead of the O(n * m) table of ``livekit.agents.llm.utils.compute_chat_ctx_diff``.
It must return exactly upstream's operations: the same kept subsequence among several of the same
length, the same creations and updates with the same predecessors.

On pristine upstream the module does not exist: the test module is skipped there, and only for
that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from livekit.agents import llm
from livekit.agents.llm.utils import (
    DiffOps,
    compute_chat_ctx_diff as upstream_diff,
)

chat_sync = pytest.importorskip(
    "livekit.plugins.openai.realtime.chat_sync",
    reason="the planner is not in this build (pristine upstream); patch 0004 adds it",
)

DiffFn = Callable[[llm.ChatContext, llm.ChatContext], DiffOps]


def fork_diff(old: llm.ChatContext, new: llm.ChatContext) -> DiffOps:
    result: DiffOps = chat_sync.compute_chat_ctx_diff(old, new)
    return result


# --- building contexts ----------------------------------------------------------------------

# Item spec: (id, kind, payload). kind "message": payload is the content list (strings only, some
# holding a newline so that different content lists can share one text_content); kind
# "function_call": payload is the arguments string.
ItemSpec = tuple[str, str, Any]

_TEXTS = st.lists(st.sampled_from(["a", "b", "a\nb", ""]), min_size=0, max_size=3)
_ROLES = ("system", "user", "assistant")


def _make_item(spec: ItemSpec) -> llm.ChatItem:
    item_id, kind, payload = spec
    if kind == "function_call":
        return llm.FunctionCall(id=item_id, call_id=f"call_{item_id}", name="f", arguments=payload)
    role = _ROLES[sum(map(ord, item_id)) % len(_ROLES)]
    return llm.ChatMessage(id=item_id, role=role, content=list(payload))


def _ctx(specs: Sequence[ItemSpec]) -> llm.ChatContext:
    return llm.ChatContext(items=[_make_item(s) for s in specs])


@st.composite
def _item_spec(draw: st.DrawFn, item_id: str) -> ItemSpec:
    if draw(st.integers(0, 5)) == 0:
        return (item_id, "function_call", draw(st.sampled_from(["{}", '{"x": 1}'])))
    return (item_id, "message", draw(_TEXTS))


@st.composite
def edited_pairs(draw: st.DrawFn) -> tuple[list[ItemSpec], list[ItemSpec]]:
    """An old context and a new one made from it by insertions, deletions, moves and edits."""
    n_old = draw(st.integers(0, 40))
    old = [draw(_item_spec(f"o{i}")) for i in range(n_old)]
    new = list(old)
    fresh = 0
    for _ in range(draw(st.integers(0, 12))):
        op = draw(st.sampled_from(["insert", "delete", "move", "edit"]))
        if op == "insert" and len(new) < 45:
            pos = draw(st.integers(0, len(new)))
            new.insert(pos, draw(_item_spec(f"n{fresh}")))
            fresh += 1
        elif op == "delete" and new:
            del new[draw(st.integers(0, len(new) - 1))]
        elif op == "move" and new:
            spec = new.pop(draw(st.integers(0, len(new) - 1)))
            new.insert(draw(st.integers(0, len(new))), spec)
        elif op == "edit" and new:
            pos = draw(st.integers(0, len(new) - 1))
            new[pos] = draw(_item_spec(new[pos][0]))
    return old, new


@st.composite
def shuffled_pairs(draw: st.DrawFn) -> tuple[list[ItemSpec], list[ItemSpec]]:
    """Two unrelated orders over partly shared ids (few long common runs)."""
    pool = [f"i{k}" for k in range(50)]
    old_ids = draw(st.lists(st.sampled_from(pool), unique=True, max_size=40))
    new_ids = draw(st.lists(st.sampled_from(pool), unique=True, max_size=40))
    old = [draw(_item_spec(i)) for i in old_ids]
    new = [draw(_item_spec(i)) for i in new_ids]
    return old, new


pairs = st.one_of(edited_pairs(), shuffled_pairs())


# --- checking a diff ------------------------------------------------------------------------


def _is_subsequence(sub: Sequence[str], seq: Sequence[str]) -> bool:
    it = iter(seq)
    return all(x in it for x in sub)


def _predecessors(ids: Sequence[str]) -> dict[str, str | None]:
    """Each id mapped to the id before it (``None`` for the first)."""
    return {item_id: ids[k - 1] if k else None for k, item_id in enumerate(ids)}


def _apply(old_ids: Sequence[str], ops: DiffOps) -> list[str]:
    """Apply removals, then each creation right after its predecessor (None: at the start)."""
    removed = set(ops.to_remove)
    ids = [i for i in old_ids if i not in removed]
    for prev_id, item_id in ops.to_create:
        assert item_id not in ids, f"{item_id} created while present"
        pos = 0 if prev_id is None else ids.index(prev_id) + 1
        ids.insert(pos, item_id)
    return ids


def _check_valid(old: llm.ChatContext, new: llm.ChatContext, ops: DiffOps) -> set[str]:
    """Assert that ``ops`` is a correct diff of ``old`` into ``new``; return the kept ids."""
    old_ids = [i.id for i in old.items]
    new_ids = [i.id for i in new.items]
    prev_of = _predecessors(new_ids)

    # removals: distinct old ids, in old order
    assert len(set(ops.to_remove)) == len(ops.to_remove)
    assert _is_subsequence(ops.to_remove, old_ids)

    kept = [i for i in old_ids if i not in set(ops.to_remove)]
    # what stays is a common subsequence, and everything else of new is created
    assert _is_subsequence(kept, new_ids)
    assert [i for _, i in ops.to_create] == [i for i in new_ids if i not in set(kept)]

    # every create / update names the item before it in the new context
    for prev_id, item_id in [*ops.to_create, *ops.to_update]:
        assert prev_id == prev_of[item_id], (prev_id, item_id)

    assert _apply(old_ids, ops) == new_ids

    # updates: exactly the kept messages whose text changed, in new order
    old_by_id = {i.id: i for i in old.items}
    expected_updates = [
        (prev_of[item.id], item.id)
        for item in new.items
        if item.id in set(kept)
        and item.type == "message"
        and (old_item := old_by_id[item.id]).type == "message"
        and item.text_content != old_item.text_content
    ]
    assert ops.to_update == expected_updates
    return set(kept)


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs)
def test_fork_diff_matches_upstream(pair: tuple[list[ItemSpec], list[ItemSpec]]) -> None:
    old, new = _ctx(pair[0]), _ctx(pair[1])
    fork_ops = fork_diff(old, new)
    upstream_ops = upstream_diff(old, new)

    fork_kept = _check_valid(old, new, fork_ops)
    upstream_kept = _check_valid(old, new, upstream_ops)  # the checker agrees with the reference

    # the same longest common subsequence, hence the same operations
    assert fork_kept == upstream_kept
    assert fork_ops == upstream_ops


@st.composite
def long_pairs(draw: st.DrawFn) -> tuple[list[ItemSpec], list[ItemSpec]]:
    """Longer contexts with a common prefix and many ties (the backtrack's choice matters)."""
    prefix = [(f"p{i}", "message", ["t"]) for i in range(draw(st.integers(0, 30)))]
    pool = [f"i{k}" for k in range(60)]
    old_ids = draw(st.lists(st.sampled_from(pool), unique=True, max_size=60))
    new_ids = draw(st.permutations(old_ids)) if draw(st.booleans()) else list(old_ids)
    new_ids = [i for i in new_ids if draw(st.integers(0, 4))] + [f"n{k}" for k in range(3)]
    old = prefix + [(i, "message", ["t"]) for i in old_ids]
    new = prefix + [(i, "message", ["t"]) for i in new_ids]
    return old, new


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_pairs())
def test_fork_diff_matches_upstream_on_long_contexts(
    pair: tuple[list[ItemSpec], list[ItemSpec]],
) -> None:
    old, new = _ctx(pair[0]), _ctx(pair[1])
    assert fork_diff(old, new) == upstream_diff(old, new)


# --- deterministic cases --------------------------------------------------------------------


def _msgs(*ids: str, text: str = "t") -> llm.ChatContext:
    return _ctx([(i, "message", [text]) for i in ids])


@pytest.mark.parametrize("diff", [fork_diff, upstream_diff], ids=["fork", "upstream"])
def test_empty(diff: DiffFn) -> None:
    assert diff(_msgs(), _msgs()) == DiffOps(to_remove=[], to_create=[], to_update=[])
    assert diff(_msgs("a", "b"), _msgs()) == DiffOps(
        to_remove=["a", "b"], to_create=[], to_update=[]
    )


@pytest.mark.parametrize("diff", [fork_diff, upstream_diff], ids=["fork", "upstream"])
def test_identical(diff: DiffFn) -> None:
    ctx = _msgs("a", "b", "c")
    assert diff(ctx, ctx.copy()) == DiffOps(to_remove=[], to_create=[], to_update=[])


@pytest.mark.parametrize("diff", [fork_diff, upstream_diff], ids=["fork", "upstream"])
def test_all_new(diff: DiffFn) -> None:
    ops = diff(_msgs("a", "b"), _msgs("x", "y", "z"))
    assert ops == DiffOps(
        to_remove=["a", "b"],
        to_create=[(None, "x"), ("x", "y"), ("y", "z")],
        to_update=[],
    )


@pytest.mark.parametrize("diff", [fork_diff, upstream_diff], ids=["fork", "upstream"])
def test_append_to_empty(diff: DiffFn) -> None:
    ops = diff(_msgs(), _msgs("a", "b"))
    assert ops == DiffOps(to_remove=[], to_create=[(None, "a"), ("a", "b")], to_update=[])


def test_reversed() -> None:
    ids = [f"m{i}" for i in range(10)]
    old, new = _msgs(*ids), _msgs(*reversed(ids))
    ops = fork_diff(old, new)
    # a reversed order shares one item at most
    assert len(ops.to_remove) == len(ids) - 1
    assert len(ops.to_create) == len(ids) - 1
    assert _check_valid(old, new, ops) == set(ids) - set(ops.to_remove)
    assert len(upstream_diff(old, new).to_remove) == len(ids) - 1


def test_text_edit_is_an_update_not_a_recreate() -> None:
    old = _msgs("a", "b", "c")
    new = _ctx([("a", "message", ["t"]), ("b", "message", ["changed"]), ("c", "message", ["t"])])
    assert fork_diff(old, new) == DiffOps(to_remove=[], to_create=[], to_update=[("a", "b")])


def test_same_text_other_content_split_is_not_an_update() -> None:
    old = _ctx([("a", "message", ["x\ny"])])
    new = _ctx([("a", "message", ["x", "y"])])
    assert fork_diff(old, new) == DiffOps(to_remove=[], to_create=[], to_update=[])


def test_move_keeps_the_longest_run() -> None:
    # moving one item to the front: only that item is removed and created again
    old = _msgs("a", "b", "c", "d")
    new = _msgs("d", "a", "b", "c")
    assert fork_diff(old, new) == DiffOps(to_remove=["d"], to_create=[(None, "d")], to_update=[])


def test_system_message_appended_to_history() -> None:
    # the agent-switch case of the issue: history plus one system message at the end
    ids = [f"h{i}" for i in range(200)]
    old = _msgs(*ids)
    new = _msgs(*ids, "sys")
    assert fork_diff(old, new) == DiffOps(to_remove=[], to_create=[("h199", "sys")], to_update=[])
