"""The conversation state machine (``realtime/conversation.py``) against an in-memory service.

Like h11's ``ConnectionPair``: no socket, no event loop. :class:`Service` applies the state's
operations in order under the service's rules (ids unique, anchors must exist) and answers each
with the neutral event the sessions would feed back (``item_added``, ``item_deleted``,
``item_rejected``), or loses the answer; it also makes items itself (voice turns, spoken
replies) and drops connections, at any point of a sync or of a replay. A hypothesis state
machine drives both; the properties, checked after every step:

- the view holds every item the service holds (but one whose confirmation was lost) and every
  item a replay is re-creating, across any number of drops;
- after a sync that the service answered in full, every local item but voice turns and items
  of unknown content stands on the service in local relative order;
- no pending operation outlives its connection; a retry is settled by its own confirmation,
  never by an expired operation's.

On pristine upstream the module does not exist: the test is skipped there, and only for that.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sync_helpers import stored_events

from livekit.agents import llm

conversation = pytest.importorskip(
    "livekit.plugins.openai.realtime.conversation",
    reason="the state machine is not in this build (pristine upstream)",
)
item_events = pytest.importorskip("livekit.plugins.openai.realtime.item_events")


def _run(steps: Any) -> Any:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class Service:
    """One connection's conversation under the service's rules."""

    def __init__(self) -> None:
        self.items: list[llm.ChatItem] = []

    def ids(self) -> list[str]:
        return [i.id for i in self.items]

    def apply(self, op: Any) -> tuple[str, Any]:
        """Apply an operation; returns ("added", prev) / ("deleted", None) / ("error", code)."""
        ids = self.ids()
        if isinstance(op, conversation.DeleteItem):
            if op.item_id not in ids:
                return "error", "item_delete_invalid_item_id"
            del self.items[ids.index(op.item_id)]
            return "deleted", None
        if op.item.id in ids:
            return "error", "item_create_duplicate_id"
        if op.previous_item_id == "root":
            self.items.insert(0, op.item)
            return "added", None
        if op.previous_item_id not in ids:
            return "error", "item_create_invalid_previous_item_id"
        at = ids.index(op.previous_item_id) + 1
        self.items.insert(at, op.item)
        return "added", op.previous_item_id


class StateAndService(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        ids = itertools.count()
        self.state = conversation.ConversationState(
            protocol="test", new_event_id=lambda prefix: f"{prefix}{next(ids)}"
        )
        self.service = Service()
        self.lost_answers: set[str] = set()  # items created whose confirmation never came
        self.spoken: set[str] = set()
        self.voice: set[str] = set()
        self.counter = itertools.count()
        self.in_flight: list[Any] = []  # operations sent, not yet applied (in order)
        self.replay: Any = None

    # ------------------------------------------------------------------ wire, in memory

    def deliver(self, count: int | None = None, lose: str | None = None) -> None:
        """Apply the first ``count`` operations in flight (all by default) and answer them."""
        todo = self.in_flight if count is None else self.in_flight[:count]
        self.in_flight = self.in_flight[len(todo) :]
        for op in todo:
            kind, detail = self.service.apply(op)
            if isinstance(op, conversation.CreateItem) and op.item.id == lose and kind == "added":
                self.lost_answers.add(op.item.id)
                continue
            if kind == "added":
                self.state.item_added(op.item.id, detail, lambda item=op.item: item)
            elif kind == "deleted":
                self.state.item_deleted(op.item_id)
            else:
                self.state.item_rejected(op.event_id, detail, "rejected", None)
        if self.replay is not None and self.replay.done:
            self.state.replay_answered(self.replay)
            self.replay = None

    def sync(
        self, local: list[llm.ChatItem], *, lose: str | None = None, since: int | None = None
    ) -> Any:
        since = self.state.remote.revision if since is None else since
        ctx = llm.ChatContext(items=local)
        items = _run(self.state.protocol_items_steps(ctx))
        plan = _run(self.state.plan_steps(items, since=since))
        batch = item_events.Batch()
        ops = list(self.state.operations(plan, batch))
        for op in ops:
            self.state.sent(op.event_id)
        self.in_flight.extend(ops)
        self.deliver(lose=lose)
        return batch

    def local_copy(self) -> list[llm.ChatItem]:
        return [r.item for r in self.state.remote.items()]

    # -------------------------------------------------------------------------- rules

    @precondition(lambda self: self.replay is None)
    @rule(data=st.data())
    def edit_and_sync(self, data: st.DataObject) -> None:
        """A local edit (drop, move, add, text change) of the view's copy, then a sync."""
        local = self.local_copy()
        for _ in range(data.draw(st.integers(0, 3))):
            action = data.draw(st.sampled_from(["add", "add", "drop", "move", "edit"]))
            if action == "add" or not local:
                n = next(self.counter)
                role = data.draw(st.sampled_from(["system", "user", "assistant"]))
                item = llm.ChatMessage(id=f"m{n}", role=role, content=[f"text {n}"])
                local.insert(data.draw(st.integers(0, len(local))), item)
            elif action == "drop":
                local.pop(data.draw(st.integers(0, len(local) - 1)))
            elif action == "move":
                moved = local.pop(data.draw(st.integers(0, len(local) - 1)))
                local.insert(data.draw(st.integers(0, len(local))), moved)
            else:
                k = data.draw(st.integers(0, len(local) - 1))
                if local[k].type == "message":
                    local[k] = local[k].model_copy(update={"content": [f"edited {k}"]})
        # what the sync must leave in place: voice turns and items unknown when it began
        exempt = self.voice | {r.item.id for r in self.state.remote.items() if r.known_at is None}
        batch = self.sync(local)
        assert batch.done
        if not batch.errors:
            self.check_local_order(local, exempt)

    def check_local_order(self, local: list[llm.ChatItem], exempt: set[str]) -> None:
        wanted = [i.id for i in local if i.id not in exempt and _has_text(i)]
        held = self.service.ids()
        assert [i for i in held if i in set(wanted)] == wanted

    @precondition(lambda self: self.replay is None)
    @rule(transcript=st.sampled_from(["hello", "", None]))
    def voice_turn(self, transcript: str | None) -> None:
        """The service makes a user audio item; its transcript comes now, never, or is ""."""
        item_id = f"v{next(self.counter)}"
        item = llm.ChatMessage(id=item_id, role="user", content=[])
        prev = self.service.ids()[-1] if self.service.items else None
        self.service.items.append(item)
        self.voice.add(item_id)
        self.state.item_added(item_id, prev, lambda: item)
        if transcript is not None:
            self.state.transcript(item_id, transcript, None)

    @precondition(lambda self: self.replay is None)
    @rule(done=st.booleans())
    def spoken_reply(self, done: bool) -> None:
        """The service makes a spoken reply; its end arrives now or not yet."""
        item_id = f"r{next(self.counter)}"
        item = llm.ChatMessage(id=item_id, role="assistant", content=[])
        prev = self.service.ids()[-1] if self.service.items else None
        self.service.items.append(item)
        self.state.item_added(item_id, prev, lambda: item)
        self.spoken.add(item_id)
        if done:
            self.state.reply_done(item_id, f"reply {item_id}", audio=True)

    @precondition(lambda self: self.replay is None)
    @rule()
    def lost_answer_then_retry(self) -> None:
        """A create whose confirmation is lost; its caller gives up; the retry (as the service
        holds the item, a new id's create) is settled by its own answer."""
        local = self.local_copy()
        n = next(self.counter)
        local.append(llm.ChatMessage(id=f"m{n}", role="user", content=[f"lost {n}"]))
        batch = self.sync(local, lose=f"m{n}")
        assert not batch.done
        self.state.events.expire(batch, conversation.ChatContextSyncError("timed out"))
        assert batch.done and batch.errors
        # the service holds it; the client does not know: a retry under the same id is refused
        # by the service (duplicate), and that answer settles the retry, not the expired event
        retry = self.sync(local)
        assert retry.done

    @precondition(lambda self: self.replay is None)
    @rule(data=st.data())
    def late_answer_during_retry(self, data: st.DataObject) -> None:
        """A create the service applies late, after its caller gave up; the caller retries with
        more items, and the late answer reaches the client at any point while the retry's
        operations are made: the retry succeeds, and when the answer came before the item's own
        create was made, the service holds the context in order."""
        local = self.local_copy()
        slow = llm.ChatMessage(id=f"m{next(self.counter)}", role="user", content=["slow"])
        local.append(slow)
        since = self.state.remote.revision
        items = _run(self.state.protocol_items_steps(llm.ChatContext(items=local)))
        first = item_events.Batch()
        ops = list(self.state.operations(_run(self.state.plan_steps(items, since=since)), first))
        for op in ops:
            self.state.sent(op.event_id)
        held = next(op for op in ops if getattr(op, "item", None) is slow)
        self.in_flight.extend(op for op in ops if op is not held)
        self.deliver()
        self.state.events.expire(first, conversation.ChatContextSyncError("timed out"))
        local.extend(
            llm.ChatMessage(id=f"m{next(self.counter)}", role="user", content=["more"])
            for _ in range(data.draw(st.integers(0, 3)))
        )
        since = self.state.remote.revision
        items = _run(self.state.protocol_items_steps(llm.ChatContext(items=local)))
        retry = item_events.Batch()
        answer_at = data.draw(st.integers(0, len(local) + 2))
        # the service applied the late create before the retry's events (it keeps their order)
        kind, prev = self.service.apply(held)
        assert kind == "added"
        plan = _run(self.state.plan_steps(items, since=since))
        operations = self.state.operations(plan, retry)  # each made as it is taken
        retry_ops: list[Any] = []
        answered_first = False
        while True:
            if len(retry_ops) == answer_at:
                answered_first = all(getattr(o, "item", None) is not slow for o in retry_ops)
                self.state.item_added(slow.id, prev, lambda: slow)
            op = next(operations, None)
            if op is None:
                break
            retry_ops.append(op)
            self.state.sent(op.event_id)
        if answer_at > len(retry_ops):
            self.state.item_added(slow.id, prev, lambda: slow)
        self.in_flight.extend(retry_ops)
        self.deliver()
        assert retry.done and not retry.errors, retry.errors
        if answered_first:
            self.check_local_order(local, self.voice)

    @precondition(lambda self: self.replay is None)
    @rule()
    def transcript_mid_sync_then_drop(self) -> None:
        """A sync begins from a context without a pending voice turn; the turn's transcript
        arrives, the connection drops and the replay is answered: the sync planned again keeps
        the turn (its content became known after the sync began)."""
        local = self.local_copy()
        item_id = f"v{next(self.counter)}"
        turn = llm.ChatMessage(id=item_id, role="user", content=[])
        prev = self.service.ids()[-1] if self.service.items else None
        self.service.items.append(turn)
        self.state.item_added(item_id, prev, lambda: turn)
        since = self.state.remote.revision
        self.state.transcript(item_id, "said meanwhile", None)
        self.reconnect(None)
        self.sync(local, since=since)
        assert item_id in self.service.ids()

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        """The connection drops, with part of what was in flight applied; then a new one starts
        and the replay is answered in part, in full, or not before the next drop."""
        self.deliver(data.draw(st.integers(0, len(self.in_flight))))
        self.reconnect(data)

    def reconnect(self, data: st.DataObject | None) -> None:
        """A drop with nothing more of what was in flight applied, then a new connection whose
        replay is answered in part, as ``data`` draws (None: in full)."""
        self.in_flight.clear()
        self.state.connection_lost()
        self.state.connection_closed()
        assert stored_events(self.state.events) == 0, "an operation outlived its connection"
        self.service = Service()
        self.lost_answers.clear()
        self.voice.clear()  # replayed as text: ordinary items now
        self.replay = item_events.Batch()
        ops = [op for op in self.state.replay_steps(self.replay) if op is not None]
        for op in ops:
            self.state.sent(op.event_id)
        self.in_flight.extend(ops)
        self.deliver(None if data is None else data.draw(st.integers(0, len(ops))))

    @precondition(lambda self: self.replay is not None)
    @rule()
    def replay_answered(self) -> None:
        self.deliver()
        assert self.replay is None

    @invariant()
    def view_holds_what_the_service_holds(self) -> None:
        view = {r.item.id for r in self.state.remote.items()}
        held = set(self.service.ids()) - self.lost_answers
        assert held <= view, f"the view lacks {held - view}"
        replaying = {op.item.id for op in self.in_flight if isinstance(op, conversation.CreateItem)}
        assert (replaying if self.replay is not None else set()) <= view


def _has_text(item: llm.ChatItem) -> bool:
    return item.type != "message" or any(c for c in item.content if isinstance(c, str))


StateAndService.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_state_machine_against_an_in_memory_service = StateAndService.TestCase
