"""The books of item events answer as they did before failures and expiries became O(1).

``item_events_reference`` is ``item_events`` before ``fail(batch=...)`` and ``expire`` stopped
walking a batch's events (and ``fail_steps`` stopped copying the books in its first step). Random
programs of tracks, sends, answers, refusals, failures, expiries, closes and send checks, run on
both, must give the same answer to every call and leave every batch in the same state.

The programs track under ids used before (pending or not) and into batches failed or expired.
Where the reference was wrong, the right answer is asserted instead: a track into a batch
failed or expired, or under the id of an event still pending, is refused (the reference took
it); a refusal naming an id tracked again is the new event's (the reference handed back the
earlier event's ``taken_over`` one); and once the reference loses an event (its batch held an
earlier event of the id, whose settling popped the new one), the books go on alone, checked
for what they must hold on their own (no batch below zero; all done once everything failed).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

item_events = pytest.importorskip(
    "livekit.plugins.openai.realtime.item_events",
    reason="the fork's modules are not in this build (pristine upstream)",
)
chat_sync = pytest.importorskip("livekit.plugins.openai.realtime.chat_sync")

import item_events_reference as reference  # noqa: E402

pytestmark = pytest.mark.skipif(
    not hasattr(item_events.ItemEvent, "dead"),
    reason="a build whose books still walk a batch's events (the reference itself)",
)

ITEMS = ["a", "b", "c"]
KINDS = ["create", "delete"]

_ID = st.integers(0, 20)  # ``e<k>``: the ids tracked (a program tracks a few dozen at most)


def _weighted(*choices: tuple[int, st.SearchStrategy[tuple[Any, ...]]]) -> Any:
    """One of the strategies, each drawn as often as its weight says."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


_op = _weighted(
    # tracked under a new id (None) or under the id of an earlier event, pending or not (the
    # k-th new id, once tracked), into a batch open, failed or expired
    (
        10,
        st.tuples(
            st.just("track"),
            st.sampled_from(KINDS),
            st.sampled_from(ITEMS),
            st.integers(0, 5),
            st.none() | st.integers(1, 8),
        ),
    ),
    (3, st.tuples(st.just("sent"), _ID)),
    (4, st.tuples(st.just("confirmed"), st.sampled_from(KINDS), st.sampled_from(ITEMS))),
    (3, st.tuples(st.just("rejected"), _ID)),
    (2, st.tuples(st.just("taken_over"), _ID)),
    (3, st.tuples(st.just("cancelled"), _ID)),
    (2, st.tuples(st.just("live"), st.sampled_from(KINDS), st.sampled_from(ITEMS))),
    (3, st.tuples(st.just("fail_batch"), st.integers(0, 5))),
    (3, st.tuples(st.just("expire"), st.integers(0, 5))),
    (2, st.tuples(st.just("fail_steps"))),
    (3, st.tuples(st.just("step"))),
    (1, st.tuples(st.just("close_steps"))),  # the end of every later track: drawn seldom
)


class _Run:
    """One implementation driven by the program; ``do`` returns what a call answered."""

    def __init__(self, module: Any) -> None:
        self.m = module
        self.events = module.PendingItemEvents()
        self.batches = [module.Batch() for _ in range(6)]
        self.ended = [False] * 6  # failed or expired: the batch takes no more events
        self.steps: list[Generator[None, None, None]] = []

    def do(self, op: tuple[Any, ...]) -> Any:
        name, *args = op
        events = self.events
        error = chat_sync.ChatContextSyncError(name)
        if name == "track":
            kind, item, b, event_id = args
            ev = self.m.ItemEvent(kind, item, event_id, batch=self.batches[b])
            try:
                return events.track(ev).event_id
            except ValueError:
                return "refused"
        if name == "sent":
            ev = events.get(f"e{args[0]}")
            if ev is not None:
                ev.sent = True
            return ev is not None
        if name in ("confirmed", "live"):
            got = getattr(events, name)(*args)
            return got if name == "live" else (got and got.event_id)
        if name == "rejected":
            got = events.rejected(f"e{args[0]}", error)
            return got and got.event_id
        if name == "taken_over":
            got = events.taken_over(f"e{args[0]}")
            return got and got.event_id
        if name == "cancelled":
            return events.cancelled(f"e{args[0]}")
        if name == "fail_batch":
            self.ended[args[0]] = True
            events.fail(error, batch=self.batches[args[0]])
        elif name == "expire":
            self.ended[args[0]] = True
            events.expire(self.batches[args[0]], error)
        elif name in ("fail_steps", "close_steps"):
            self.steps.append(getattr(events, name)(error))
            next(self.steps[-1], None)
        elif name == "step":
            for steps in self.steps:
                next(steps, None)
        return None

    def state(self) -> Any:
        ev = self.events
        return (
            len(ev),
            [(b.remaining, b.size, b.done, [str(e) for e in b.errors]) for b in self.batches],
        )  # no look-ups here: they would take failed events out of the books at once


def _resolve(op: tuple[Any, ...], tracked: int) -> tuple[tuple[Any, ...], int]:
    """``op`` with the event id of a track chosen (a new one, or one tracked before), and the
    count of new ids so far."""
    if op[0] != "track":
        return op, tracked
    name, kind, item, b, again = op
    if again is None or again > tracked:
        tracked += 1
        again = tracked
    return (name, kind, item, b, f"e{again}"), tracked


def _the_reference_is_wrong(new: _Run, old: _Run, op: tuple[Any, ...]) -> bool:
    """Whether the reference accepts a track the books must refuse: into a batch failed or
    expired (it re-opened a batch whose caller had its answer), or under the id of an event
    still pending (it overwrote that event by id and lost it)."""
    if op[0] != "track":
        return False
    _, _, _, b, event_id = op
    return old.ended[b] or event_id in old.events._by_event


def _the_reference_loses_it(old: _Run, op: tuple[Any, ...]) -> bool:
    """Whether the reference will lose the event ``op`` tracks: its batch still holds (by id)
    an earlier event of that id, taken out by ``fail_steps`` and not settled yet, whose step
    pops the new one from the batch (``fail(batch=)`` never fails it then)."""
    if op[0] != "track":
        return False
    _, _, _, b, event_id = op
    return event_id in old.batches[b].events


def _check_alone(run: _Run) -> None:
    """What the books must answer on their own: no batch below zero, then, once every pending
    event failed, every batch done and nothing held."""
    assert all(b.remaining >= 0 for b in run.batches)
    for steps in run.steps:
        for _ in steps:
            pass
    for _ in run.events.fail_steps(chat_sync.ChatContextSyncError("the end")):
        assert all(b.remaining >= 0 for b in run.batches)
    assert all(b.done for b in run.batches) and run.events.stored() == len(run.events) == 0


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(_op, min_size=20, max_size=80))
def test_failing_and_expiring_in_o1_answers_as_walking_the_events_did(
    program: list[tuple[Any, ...]],
) -> None:
    new, old = _Run(item_events), _Run(reference)
    tracked = 0
    compared = True  # until the reference loses an event (then the books answer alone)
    for raw in program:
        op, tracked = _resolve(raw, tracked)
        if not compared:
            new.do(op)
            assert all(b.remaining >= 0 for b in new.batches), op
            continue
        if _the_reference_is_wrong(new, old, op):
            # the right answer, explicitly: refused, and nothing of the books changed
            before = (new.state(), new.events.stored())
            assert new.do(op) == "refused", op
            assert (new.state(), new.events.stored()) == before, op
            continue
        if _the_reference_loses_it(old, op):
            assert new.do(op) == op[-1], op  # tracked: an id may come again once not pending
            compared = False
            continue
        if op[0] == "track":
            # a refusal naming the id is the new event's own, not the earlier event's: the
            # reference kept it as the earlier one's (``taken_over`` handed that one back)
            old.events._ambiguous.pop(op[-1], None)
        assert new.do(op) == old.do(op), op
        assert new.state() == old.state(), op
        assert all(b.remaining >= 0 for b in new.batches), op
        assert new.events.stored() >= len(new.events), op
    if compared:
        for run in (new, old):
            for steps in run.steps:
                for _ in steps:
                    pass
        assert new.state() == old.state()
        ids = [f"e{k}" for k in range(max(tracked, 40) + 2)]
        assert [new.events.cancelled(i) for i in ids] == [old.events.cancelled(i) for i in ids]
        # each look-up let go the failed event stored under its id: nothing held but the pending
        assert new.events.stored() == len(new.events) == len(old.events)
    _check_alone(new)
