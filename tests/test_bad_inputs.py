"""Bad inputs to the beta realtime session, each with its expected outcome.

Every row syncs a chat context holding one bad input between good items (``good_before``,
``good_after``) into a fresh session on the strict fake Azure server and asserts the outcome:
a clear exception (type and message fragment, nothing sent), or a skip with a warning naming the
item and nothing else lost (every other item reaches the server, in order, with no server
error). Each call must settle within 3 s.

| case | input | outcome |
|---|---|---|
| agent_handoff | an ``AgentHandoff`` between two messages | dropped silently, both messages sent |
| agent_config_update | an ``AgentConfigUpdate`` between two messages | dropped silently, both messages sent |
| unknown_item_type | a pydantic item with ``type="custom"`` in ``ChatContext.items`` | skipped with a warning naming it, the rest sent |
| instructions_message | the agent instructions message (``lk.agent_task.instructions``) next to a user system message | instructions dropped (sent as session instructions), the user's system message kept |
| empty_message | a message with ``content=[]`` | skipped with a warning naming it, the rest sent |
| empty_string | a message with ``content=[""]`` | skipped with a warning naming it, the rest sent |
| empty_strings_around_text | ``["", "hello", ""]`` | sent as ["hello"] |
| image_only | a user message holding only an image | skipped with a warning naming it, the rest sent |
| text_and_image | a user message with text and an image | text sent, warning naming the message |
| assistant_audio_with_transcript | an assistant message holding ``AudioContent`` with a transcript | sent as assistant text (the transcript) |
| assistant_audio_without_transcript | an assistant message holding only ``AudioContent`` without transcript | skipped with a warning naming it, the rest sent |
| assistant_text_and_bare_audio | assistant text plus ``AudioContent`` without transcript | text sent, warning naming the message |
| long_id | a message id of 60 characters | synced as "lk_" + blake2b(id, 14); a second sync sends nothing |
| duplicate_ids | two messages with the same id | ChatContextSyncError ("more than one item with id"), nothing sent |
| huge_unicode_text | 200 kB of text with astral-plane characters | reaches the server intact |
| unknown_call_output | a function call output whose call is nowhere | skipped with a warning naming it, the rest sent |
| closed_session | ``update_chat_ctx`` after ``aclose()`` | ChatContextSyncError ("closed") at once (< 1 s) |
| server_unknown_event | server sends an event of an unknown type | ignored; a later sync works, no reconnect |
| server_event_missing_fields | server sends ``conversation.item.created`` without ``item`` | logged; a later sync works, no reconnect |
| server_non_json | server sends a text frame that is not JSON | logged; a later sync works, no reconnect |
| server_json_without_type | server sends a JSON object without ``type`` | logged; a later sync works, no reconnect |
| server_json_not_object | server sends a JSON array | logged; a later sync works, no reconnect |

Rows that reproduce an upstream bug carry ``@pytest.mark.regression(fails_on=...)`` (checked to
fail there by ``nox -s tests_upstream``); the others test behaviour upstream does not promise
(warnings, the error type) and skip on upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from fake_azure import FakeAzureRealtimeServer, make_model
from pydantic import BaseModel

from livekit import rtc
from livekit.agents import llm
from livekit.plugins.openai.realtime import realtime_model_beta as beta

ChatContextSyncError: type[Exception] = getattr(beta, "ChatContextSyncError", llm.RealtimeError)
UNDER_TEST = os.environ.get("FORK_UNDER_TEST", "fork")
INSTRUCTIONS_ID = "lk.agent_task.instructions"
BOUND = 3.0

JsonDict = dict[str, Any]
Norm = tuple[Any, ...]
Env = tuple[FakeAzureRealtimeServer, beta.RealtimeSessionBeta]


class CustomItem(BaseModel):
    """A chat item of a type the protocol does not know (e.g. from a newer livekit)."""

    id: str
    type: Literal["custom"] = "custom"
    created_at: float = 0.0


def norm_server(item: JsonDict) -> Norm:
    if item["type"] == "message":
        texts = tuple(
            p.get("text")
            if p["type"] in ("input_text", "text", "output_text")
            else p.get("transcript")
            for p in item.get("content") or []
        )
        return ("message", item["role"], texts)
    if item["type"] == "function_call":
        return ("function_call", item["call_id"], item["name"], item["arguments"])
    return ("function_call_output", item["call_id"], item["output"])


def audio(transcript: str | None) -> llm.AudioContent:
    frame = rtc.AudioFrame(
        data=b"\x00\x00" * 240, sample_rate=24000, num_channels=1, samples_per_channel=240
    )
    return llm.AudioContent(frame=[frame], transcript=transcript)


def msg(item_id: str, content: list[Any], role: str = "user") -> llm.ChatMessage:
    return llm.ChatMessage(id=item_id, role=role, content=content)


BEFORE = msg("good_before", ["before"])
AFTER = msg("good_after", ["after"], role="assistant")
SENT_BEFORE = ("good_before", ("message", "user", ("before",)))
SENT_AFTER = ("good_after", ("message", "assistant", ("after",)))
LONG_ID = "m_" + "0123456789" * 5 + "abcdefgh"
LONG_ALIAS = "lk_" + hashlib.blake2b(LONG_ID.encode(), digest_size=14).hexdigest()
HUGE_TEXT = ("a\U0001d11e\u00e9\u4e2d\U0001f600 " * 30_000)[:200_000]


@dataclass(frozen=True)
class Case:
    """One bad input and what must come of it."""

    id: str
    outcome: str
    items: Callable[[], list[Any]] = list
    """the chat context, bad item(s) between ``BEFORE`` and ``AFTER`` unless it says otherwise"""
    sent: list[tuple[str, Norm]] = field(default_factory=list)
    """the server conversation afterwards (id, role/texts or call fields), in order"""
    warns: tuple[str, ...] = ()
    """fragments (item ids) some warning of the plugin must name"""
    raises: str | None = None
    """message fragment of the ChatContextSyncError expected (nothing sent)"""
    special: Callable[[Env], Awaitable[None]] | None = None
    """a case that is not a single sync"""
    fails_on: tuple[str, ...] = ()
    passes_on: tuple[str, ...] = ()
    """``VERSION:PROTOCOL`` runs where the case cannot bite (see noxfile ``_judge_regressions``)"""


def around(*bad: Any) -> Callable[[], list[Any]]:
    return lambda: [BEFORE.model_copy(), *bad, AFTER.model_copy()]


async def sync(session: beta.RealtimeSessionBeta, items: list[Any]) -> None:
    await asyncio.wait_for(session.update_chat_ctx(llm.ChatContext(items=items)), BOUND)


async def long_id_case(env: Env) -> None:
    server, session = env
    items = around(msg(LONG_ID, ["long"]))
    await sync(session, items())
    assert server.conversation_ids() == ["good_before", LONG_ALIAS, "good_after"]
    received = len(server.received)
    await sync(session, items())
    assert len(server.received) == received, "a second sync of the same context sent events"


async def closed_session_case(env: Env) -> None:
    _, session = env
    await session.aclose()
    started = time.monotonic()
    with pytest.raises(ChatContextSyncError, match="closed"):
        await sync(session, around()())
    assert time.monotonic() - started < 1.0


def raw_server_frame(data: str) -> Callable[[Env], Awaitable[None]]:
    async def _case(env: Env) -> None:
        server, session = env
        await sync(session, [BEFORE.model_copy()])
        # the fake has no raw send: write on its live connection's websocket directly
        await server._current().ws.send_str(data)
        await sync(session, around()())
        assert server.conversation_ids() == ["good_before", "good_after"]
        await asyncio.sleep(0.2)  # a reconnect would have started by now
        assert server.connections == 1, "the session reconnected after a malformed event"
        assert session.chat_ctx.get_by_id("good_after") is not None

    return _case


CASES = [
    Case(
        "agent_handoff",
        "dropped silently, both messages sent",
        around(llm.AgentHandoff(id="handoff_1", old_agent_id="a", new_agent_id="b")),
        [SENT_BEFORE, SENT_AFTER],
        fails_on=("1.4.3",),
        passes_on=("1.4.3:ga",),  # 1.4.3's GA session filtered handoffs already
    ),
    Case(
        "agent_config_update",
        "dropped silently, both messages sent",
        around(llm.AgentConfigUpdate(id="config_1", instructions="be brief")),
        [SENT_BEFORE, SENT_AFTER],
        fails_on=("1.4.3",),
        passes_on=("1.4.3:ga",),  # likewise config updates
    ),
    Case(
        "unknown_item_type",
        "skipped with a warning naming it, the rest sent",
        around(CustomItem(id="custom_1")),
        [SENT_BEFORE, SENT_AFTER],
        warns=("custom_1",),
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "instructions_message",
        "instructions dropped (sent as session instructions), the user's system message kept",
        around(
            msg(INSTRUCTIONS_ID, ["You are an agent."], role="system"),
            msg("sys_1", ["TEST"], role="system"),
        ),
        [SENT_BEFORE, ("sys_1", ("message", "system", ("TEST",))), SENT_AFTER],
        fails_on=("1.4.3",),
    ),
    Case(
        "empty_message",
        "skipped with a warning naming it, the rest sent",
        around(msg("empty_1", [])),
        [SENT_BEFORE, SENT_AFTER],
        warns=("empty_1",),
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "empty_string",
        "skipped with a warning naming it, the rest sent",
        around(msg("empty_2", [""])),
        [SENT_BEFORE, SENT_AFTER],
        warns=("empty_2",),
    ),
    Case(
        "empty_strings_around_text",
        'sent as ["hello"]',
        around(msg("padded_1", ["", "hello", ""])),
        [SENT_BEFORE, ("padded_1", ("message", "user", ("hello",))), SENT_AFTER],
    ),
    Case(
        "image_only",
        "skipped with a warning naming it, the rest sent",
        around(msg("image_1", [llm.ImageContent(image="https://example.invalid/a.png")])),
        [SENT_BEFORE, SENT_AFTER],
        warns=("image_1",),
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "text_and_image",
        "text sent, warning naming the message",
        around(msg("image_2", ["look", llm.ImageContent(image="https://example.invalid/a.png")])),
        [SENT_BEFORE, ("image_2", ("message", "user", ("look",))), SENT_AFTER],
        warns=("image_2",),
    ),
    Case(
        "assistant_audio_with_transcript",
        "sent as assistant text (the transcript)",
        around(msg("audio_1", [audio("said aloud")], role="assistant")),
        [SENT_BEFORE, ("audio_1", ("message", "assistant", ("said aloud",))), SENT_AFTER],
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "assistant_audio_without_transcript",
        "skipped with a warning naming it, the rest sent",
        around(msg("audio_2", [audio(None)], role="assistant")),
        [SENT_BEFORE, SENT_AFTER],
        warns=("audio_2",),
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "assistant_text_and_bare_audio",
        "text sent, warning naming the message",
        around(msg("audio_3", ["spoken", audio(None)], role="assistant")),
        [SENT_BEFORE, ("audio_3", ("message", "assistant", ("spoken",))), SENT_AFTER],
        warns=("audio_3",),
    ),
    Case(
        "long_id",
        'synced as "lk_" + blake2b(id, 14); a second sync sends nothing',
        special=long_id_case,
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "duplicate_ids",
        'ChatContextSyncError ("more than one item with id"), nothing sent',
        around(msg("dup_1", ["one"]), msg("dup_1", ["two"])),
        raises="more than one item with id",
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "huge_unicode_text",
        "reaches the server intact",
        around(msg("huge_1", [HUGE_TEXT])),
        [SENT_BEFORE, ("huge_1", ("message", "user", (HUGE_TEXT,))), SENT_AFTER],
    ),
    Case(
        "unknown_call_output",
        "skipped with a warning naming it, the rest sent",
        around(
            llm.FunctionCallOutput(
                id="orphan_1", call_id="call_nowhere", name="f", output="x", is_error=False
            )
        ),
        [SENT_BEFORE, SENT_AFTER],
        warns=("orphan_1",),
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "closed_session",
        'ChatContextSyncError ("closed") at once (< 1 s)',
        special=closed_session_case,
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "server_unknown_event",
        "ignored; a later sync works, no reconnect",
        special=raw_server_frame(json.dumps({"type": "fake.unknown_event", "event_id": "e1"})),
    ),
    Case(
        "server_event_missing_fields",
        "logged; a later sync works, no reconnect",
        special=raw_server_frame(json.dumps({"type": "conversation.item.created"})),
    ),
    Case(
        "server_non_json",
        "logged; a later sync works, no reconnect",
        special=raw_server_frame("this is { not json"),
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "server_json_without_type",
        "logged; a later sync works, no reconnect",
        special=raw_server_frame(json.dumps({"event_id": "e2", "item": {}})),
        fails_on=("1.4.6", "1.4.3"),
    ),
    Case(
        "server_json_not_object",
        "logged; a later sync works, no reconnect",
        special=raw_server_frame(json.dumps(["not", "an", "object"])),
        fails_on=("1.4.6", "1.4.3"),
    ),
]


def _param(case: Case) -> Any:
    marks: list[Any] = []
    if case.fails_on:
        marks.append(pytest.mark.regression(fails_on=case.fails_on, passes_on=case.passes_on))
    else:
        marks.append(
            pytest.mark.skipif(
                UNDER_TEST == "upstream", reason="behaviour upstream does not promise"
            )
        )
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
async def test_bad_input(
    case: Case, fake_azure: FakeAzureRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="livekit.plugins.openai")
    model = make_model(fake_azure)
    session = model.session()
    try:
        await fake_azure.wait_received("session.update", timeout=BOUND)
        if case.special is not None:
            await case.special((fake_azure, session))
        elif case.raises is not None:
            with pytest.raises(ChatContextSyncError, match=case.raises):
                await sync(session, case.items())
            assert fake_azure.received_count("conversation.item.create") == 0, "something was sent"
        else:
            await sync(session, case.items())
            got = [(i["id"], norm_server(i)) for i in fake_azure.conversation]
            assert got == case.sent
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            for fragment in case.warns:
                assert any(fragment in w for w in warnings), (fragment, warnings)
        assert not fake_azure.errors, [(e.code, e.message) for e in fake_azure.errors]
        assert fake_azure.typeless_creates == 0
    finally:
        await asyncio.wait_for(session.aclose(), BOUND)
        await model.aclose()


def test_docstring_table_lists_every_case() -> None:
    doc = __doc__ or ""
    rows = {
        line.split("|")[1].strip(): line.split("|")[3].strip()
        for line in doc.splitlines()
        if line.startswith("| ") and not line.startswith("| case")
    }
    assert rows == {c.id: c.outcome for c in CASES}
