"""Helpers shared by the regression tests of the beta realtime chat context sync.

Everything here exists on pristine upstream too (fork-only names are looked up with ``getattr``
fallbacks), so the modules using it also run in ``nox -s tests_upstream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from fake_azure import (
    DEFAULT_API_VERSION,
    FakeAzureRealtimeServer,
    Reply,
    make_model,
    session_options,
)
from pydantic import BaseModel, Field

from livekit.agents import llm
from livekit.plugins.openai.realtime import realtime_model_beta as beta
from livekit.plugins.openai.realtime.realtime_model import RealtimeSession

ChatContextSyncError: type[Exception] = getattr(beta, "ChatContextSyncError", llm.RealtimeError)
INSTRUCTIONS_ID = "lk.agent_task.instructions"
UPSTREAM = os.environ.get("FORK_UNDER_TEST") == "upstream"

# what "settles at once" means for a sync of a few items against a local server
FAST_S = 1.0
# cap on calls that hang on upstream: long enough to be unambiguous, short enough for CI
CAP_S = 2.0

JsonDict = dict[str, Any]
Session = beta.RealtimeSessionBeta | RealtimeSession


@contextlib.asynccontextmanager
async def beta_session(
    server: FakeAzureRealtimeServer, **model_kwargs: Any
) -> AsyncIterator[tuple[Session, list[llm.RealtimeModelError]]]:
    """A connected beta session on ``server`` and the list of errors it emits.

    ``input_audio_transcription=None`` turns transcription off: ``RealtimeModel.with_azure``
    refuses ``None``, so a preview model is then built with ``RealtimeModelBeta.with_azure``.
    Works on both protocols (the GA session of the installed plugin on a GA server).
    """
    if (
        server.protocol == "preview"
        and "input_audio_transcription" in model_kwargs
        and not model_kwargs["input_audio_transcription"]
    ):
        model = beta.RealtimeModelBeta.with_azure(
            azure_deployment=server.deployment,
            azure_endpoint=server.endpoint,
            api_key=server.api_key,
            api_version=DEFAULT_API_VERSION,
            **model_kwargs,
        )
    else:
        model = make_model(server, **model_kwargs)
    sess = model.session()
    errors: list[llm.RealtimeModelError] = []
    sess.on("error", errors.append)
    try:
        await server.wait_connected()
        yield sess, errors
    finally:
        await sess.aclose()
        await model.aclose()


def azure_protocol_choice() -> Any:
    """``with_azure``'s protocol choice (``realtime_model._azure_protocol``); skips the test on a
    build without the GA route of ``with_azure()``."""
    from livekit.plugins.openai.realtime import realtime_model

    choice = getattr(realtime_model, "_azure_protocol", None)
    if choice is None:
        pytest.skip("this build has no GA route for with_azure()")
    return choice


def audio_session_kwargs(
    server: FakeAzureRealtimeServer, *, transcription: bool = True
) -> dict[str, Any]:
    """Model options of the user's report: server VAD, whisper transcription (or none), as the
    openai types of the server's protocol."""
    options = session_options(server.protocol, transcription=transcription)
    if not transcription:
        options["input_audio_transcription"] = None
    return options


async def sync(sess: Session, ctx: llm.ChatContext) -> float:
    """``update_chat_ctx`` capped at ``CAP_S``; returns the seconds it took."""
    started = time.perf_counter()
    await asyncio.wait_for(sess.update_chat_ctx(ctx), CAP_S)
    return time.perf_counter() - started


async def failing_sync(sess: Session, ctx: llm.ChatContext) -> tuple[BaseException, float]:
    """``update_chat_ctx`` that must raise a ``RealtimeError`` within ``CAP_S``."""
    started = time.perf_counter()
    with pytest.raises(llm.RealtimeError) as info:
        await asyncio.wait_for(sess.update_chat_ctx(ctx), CAP_S)
    return info.value, time.perf_counter() - started


def stored_events(books: Any) -> int:
    """The item events the books still hold in memory: ``stored()`` where the books have it
    (``len()`` leaves out the events of failed batches kept until the next ``fail_steps``);
    older builds, whose ``len()`` counts every stored event, answer ``len()``."""
    stored = getattr(books, "stored", None)
    return int(stored()) if stored is not None else len(books)


def sent_since(server: FakeAzureRealtimeServer, start: int) -> list[JsonDict]:
    """Client item events the server received from index ``start`` of ``server.received``."""
    return [
        r.event
        for r in server.received[start:]
        if r.event.get("type") in ("conversation.item.create", "conversation.item.delete")
    ]


def touched_ids(events: list[JsonDict]) -> set[str]:
    """Item ids created or deleted by ``events``."""
    return {e["item"].get("id") if "item" in e else e["item_id"] for e in events}


def ids(ctx_items: list[Any]) -> list[str]:
    return [i["id"] if isinstance(i, dict) else i.id for i in ctx_items]


def error_codes(server: FakeAzureRealtimeServer) -> list[str | None]:
    return [e.code for e in server.errors]


async def until_send_loop_blocked(queued: list[Any], timeout: float = 10.0) -> None:
    """Wait until the session's send loop stops taking events off its queue (``queued`` is
    filled by an ``openai_client_event_queued`` listener)."""

    async def _poll() -> None:
        seen = -1
        while seen != len(queued):
            seen = len(queued)
            await asyncio.sleep(0.3)

    await asyncio.wait_for(_poll(), timeout)


async def wait_until(predicate: Any, timeout: float = 3.0) -> None:
    """Poll client-side state (the fake cannot see it) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def text_ctx(*items: tuple[str, str, str]) -> llm.ChatContext:
    """A context of text messages given as (id, role, text)."""
    ctx = llm.ChatContext.empty()
    for item_id, role, text in items:
        ctx.add_message(role=role, content=text, id=item_id)  # type: ignore[arg-type]
    return ctx


class AgentNote(BaseModel):
    """A chat item of a type the beta protocol does not know (stands for a future one)."""

    id: str
    type: Literal["agent_note"] = "agent_note"
    created_at: float = Field(default_factory=time.time)


async def user_turn(
    server: FakeAzureRealtimeServer, sess: Session, transcript: str | None, **kwargs: Any
) -> str:
    """Play a whole user audio turn and wait until the client's mirror holds its item."""
    item_id = await server.user_audio_turn(transcript, **kwargs)
    await wait_until(lambda: sess.chat_ctx.get_by_id(item_id) is not None)
    return item_id


async def start_user_turn(
    server: FakeAzureRealtimeServer, sess: Session, transcript: str | None, **kwargs: Any
) -> tuple[str, asyncio.Task[str]]:
    """Start a user audio turn; return once the client's mirror holds its item.

    The rest of the turn (a delayed transcript, a response) goes on in the returned task.
    """
    before = {item.id for item in sess.chat_ctx.items}
    turn = asyncio.create_task(server.user_audio_turn(transcript, **kwargs))

    def new_ids() -> list[str]:
        return [item.id for item in sess.chat_ctx.items if item.id not in before]

    await wait_until(lambda: bool(new_ids()) or turn.done())
    return new_ids()[0], turn


async def wait_replayed(server: FakeAzureRealtimeServer, count: int) -> None:
    """Wait for a dropped connection to be replaced and ``count`` items replayed (or 2 s)."""
    await server.wait_connected(2)
    with contextlib.suppress(asyncio.TimeoutError):
        await server.wait_for(lambda: len(server.conversation) >= count, timeout=2.0)


def conversation_ctx(count: int) -> llm.ChatContext:
    """``count`` alternating user and assistant text messages ``item_0`` ... ``item_<count-1>``."""
    return text_ctx(
        *(
            (f"item_{n}", "user" if n % 2 == 0 else "assistant", f"message {n}")
            for n in range(count)
        )
    )


def creates_on(server: FakeAzureRealtimeServer, connection: int) -> int:
    """Number of ``conversation.item.create`` events received on connection ``connection``."""
    return server.received_types(connection).count("conversation.item.create")


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` unless it is done, and wait for it; its outcome is not of interest."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


# the fork as it was before the sync planner (main at 3c7303c): `nox -s tests_fork` labels its
# regression column with this version
FORK_BEFORE = "1.4.6.post1"
# the fork as landed before the conversation state machine (398142d, issue 14)
LANDED = "1.4.6.post2"
# the fork with the conversation state machine (7e98677): defects found after it name this version
STATE_MACHINE = "1.4.6.post3"


def fixed_in_later_version(version: str, reason: str | None = None) -> list[pytest.MarkDecorator]:
    """``pytestmark`` for tests of a defect ``version`` of the fork has: a strict xfail there.

    Applied only while the installed wheel is ``version``; nothing under a regression run
    (``FORK_REGRESSION_REPORT`` is set there), whose judge needs the plain outcome, nor on any
    other version: once the fix ships as a later post release the tests must pass. Mark the
    tests ``@pytest.mark.regression(fails_on=(..., version))`` too, so that
    ``nox -s tests_fork`` checks that they fail on that version.
    """
    if os.environ.get("FORK_REGRESSION_REPORT"):
        return []
    if importlib.metadata.version("livekit-plugins-openai") != version:
        return []
    why = reason or f"a defect of {version}, fixed in a later version"
    return [pytest.mark.xfail(strict=True, reason=why)]


def issue_9_xfail() -> list[pytest.MarkDecorator]:
    """``pytestmark`` for tests of issue 9: strict xfail while the installed wheel is the old fork.

    See :func:`fixed_in_later_version`.
    """
    return fixed_in_later_version(FORK_BEFORE, "issue 9: fixed by the planner series")


def agent_context(sess: Session, *items: tuple[str, str, str]) -> llm.ChatContext:
    """A local context that ``sess`` feeds the way AgentActivity does, without syncing.

    Starts with ``items`` (as for :func:`text_ctx`); every completed input transcript is
    appended as ``ChatMessage(role="user", id=item_id, content=[transcript])``.
    """
    ctx = text_ctx(*items)
    sess.on(
        "input_audio_transcription_completed",
        lambda ev: ctx.items.append(
            llm.ChatMessage(role="user", content=[ev.transcript], id=ev.item_id)
        ),
    )
    return ctx


async def voice_turn(
    server: FakeAzureRealtimeServer,
    sess: Session,
    local: llm.ChatContext,
    transcript: str,
    reply: Reply,
) -> tuple[str, str]:
    """A user audio turn answered by ``reply``; returns the ids of the turn and of the reply.

    ``local`` (an :func:`agent_context`) gets the transcript from the session's event and, once
    the response is done, the reply as the agent appends it: an assistant message with the
    reply's text (for a message reply) under the reply's id. A function call reply is left to
    the caller.
    """
    await server.wait_received("session.update")  # transcription is on
    server.script(reply)
    user_id = await server.user_audio_turn(transcript, respond=True)
    await server.wait_idle()
    reply_id = server.conversation_ids()[-1]
    await wait_until(lambda: local.get_by_id(user_id) is not None)
    await wait_until(lambda: sess.chat_ctx.get_by_id(reply_id) is not None)
    text = getattr(reply, "transcript", None) or getattr(reply, "text", None)
    if text is not None:
        await wait_until(lambda: text in str(sess.chat_ctx.get_by_id(reply_id)))
        local.items.append(llm.ChatMessage(role="assistant", content=[text], id=reply_id))
    return user_id, reply_id


def assistant_text_type(server: FakeAzureRealtimeServer) -> str:
    """The content type of assistant text on ``server``'s protocol."""
    return "output_text" if server.protocol == "ga" else "text"


def assert_summary_under_short_id(server: FakeAzureRealtimeServer) -> None:
    """The service holds ``sys_1``, the summary message under a short wire id, ``user_1``."""
    conv = server.conversation
    assert len(conv) == 3
    assert conv[0]["id"] == "sys_1" and conv[2]["id"] == "user_1"
    assert len(conv[1]["id"]) <= 32
    assert conv[1]["content"] == [{"type": "input_text", "text": "summary of the previous agent"}]
