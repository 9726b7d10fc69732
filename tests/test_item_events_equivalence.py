"""The books of item events answer as they did before failures and expiries became O(1).

``item_events_reference`` is ``item_events`` before ``fail(batch=...)`` and ``expire`` stopped
walking a batch's events (and ``fail_steps`` stopped copying the books in its first step). Random
programs of tracks, sends, answers, refusals, failures, expiries, closes and send checks, run on
both, must give the same answer to every call and leave every batch in the same state.
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

_op = st.one_of(
    st.tuples(st.just("track"), st.sampled_from(KINDS), st.sampled_from(ITEMS), st.integers(0, 3)),
    st.tuples(st.just("sent"), st.integers(0, 40)),
    st.tuples(st.just("confirmed"), st.sampled_from(KINDS), st.sampled_from(ITEMS)),
    st.tuples(st.just("rejected"), st.integers(0, 40)),
    st.tuples(st.just("taken_over"), st.integers(0, 40)),
    st.tuples(st.just("cancelled"), st.integers(0, 40)),
    st.tuples(st.just("live"), st.sampled_from(KINDS), st.sampled_from(ITEMS)),
    st.tuples(st.just("fail_batch"), st.integers(0, 3)),
    st.tuples(st.just("expire"), st.integers(0, 3)),
    st.tuples(st.just("fail_steps")),
    st.tuples(st.just("step")),
    st.tuples(st.just("close_steps")),
)


class _Run:
    """One implementation driven by the program; ``do`` returns what a call answered."""

    def __init__(self, module: Any) -> None:
        self.m = module
        self.events = module.PendingItemEvents()
        self.batches = [module.Batch() for _ in range(4)]
        self.open = [True] * 4  # a batch takes no more events once failed or expired
        self.steps: list[Generator[None, None, None]] = []
        self.count = 0

    def do(self, op: tuple[Any, ...]) -> Any:
        name, *args = op
        events = self.events
        error = chat_sync.ChatContextSyncError(name)
        if name == "track":
            kind, item, b = args
            if not self.open[b]:
                return "closed batch"
            self.count += 1
            ev = self.m.ItemEvent(kind, item, f"e{self.count}", batch=self.batches[b])
            return events.track(ev).event_id
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
            self.open[args[0]] = False
            events.fail(error, batch=self.batches[args[0]])
        elif name == "expire":
            self.open[args[0]] = False
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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(_op, max_size=60))
def test_failing_and_expiring_in_o1_answers_as_walking_the_events_did(
    program: list[tuple[Any, ...]],
) -> None:
    new, old = _Run(item_events), _Run(reference)
    for op in program:
        assert new.do(op) == old.do(op), op
        assert new.state() == old.state(), op
    for run in (new, old):
        for steps in run.steps:
            for _ in steps:
                pass
    assert new.state() == old.state()
    assert [new.events.cancelled(f"e{k}") for k in range(45)] == [
        old.events.cancelled(f"e{k}") for k in range(45)
    ]
