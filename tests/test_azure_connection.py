"""Azure in production (issue 16), on both protocols: Entra token providers, handshake errors a
user can act on, a clean end after a fatal connection error, endpoint and protocol choice.

The fake server checks the bearer token of every handshake (``rotate_token``) and can refuse
handshakes with a status and ``Retry-After`` (``refuse_handshakes``). 1.4.6 and the fork as
landed (1.4.6.post3) take no ``azure_ad_token_provider`` (a TypeError), retry a refused
handshake as if it were transient, re-raise the error from ``aclose()`` and turn an endpoint
with its API path into a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer, make_model
from sync_helpers import FORK_BEFORE, LANDED, STATE_MACHINE, azure_protocol_choice

from livekit.agents import AgentSession, APIConnectOptions, llm

# none of them takes a token provider or says why a handshake failed
FORK_AND_UPSTREAM = ("1.4.6", FORK_BEFORE, LANDED, STATE_MACHINE)


@pytest.fixture(autouse=True)
def _no_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_VERSION", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def _message(text: str, role: str = "system") -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role=role, content=text)  # type: ignore[arg-type]
    return ctx


def _texts(server: FakeAzureRealtimeServer) -> list[str]:
    return [
        part.get("text") or ""
        for item in server.conversation
        if item.get("type") == "message"
        for part in item.get("content") or []
    ]


class Errors:
    """The ``error`` events of a realtime session."""

    def __init__(self, session: Any) -> None:
        self.events: list[llm.RealtimeModelError] = []
        session.on("error", self.events.append)

    @property
    def fatal(self) -> list[str]:
        return [str(e.error) for e in self.events if not e.recoverable]

    @property
    def recoverable(self) -> list[str]:
        return [str(e.error) for e in self.events if e.recoverable]


async def _until(predicate: Callable[[], bool], server: FakeAzureRealtimeServer) -> None:
    await server.wait_for(predicate, timeout=10.0)


FAST_RETRY = APIConnectOptions(max_retry=1, retry_interval=0.01, timeout=5.0)


# ------------------------------------------------------------------------- token provider


def _sync_provider(tokens: list[str]) -> Callable[[], str]:
    def provider() -> str:
        return tokens[0]

    return provider


def _async_provider(tokens: list[str]) -> Callable[[], Awaitable[str]]:
    async def provider() -> str:
        return tokens[0]

    return provider


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_token_provider_is_asked_for_every_websocket(
    fake_azure: FakeAzureRealtimeServer, kind: str
) -> None:
    tokens = ["entra-1"]
    fake_azure.rotate_token("entra-1")
    provider = (_sync_provider if kind == "sync" else _async_provider)(tokens)
    model = make_model(fake_azure, api_key=None, azure_ad_token_provider=provider)
    session = model.session()
    try:
        await session.update_chat_ctx(_message("before the rotation"))
        # the token expires: the service takes only the new one, then the network drops
        tokens[0] = "entra-2"
        fake_azure.rotate_token("entra-2")
        await fake_azure.drop_connections()
        await fake_azure.wait_connected(2)
        ctx = session.chat_ctx.copy()
        ctx.add_message(role="system", content="after the drop")
        await session.update_chat_ctx(ctx)
    finally:
        await session.aclose()
        await model.aclose()
    assert fake_azure.handshake_bearers == ["entra-1", "entra-2"]
    assert fake_azure.handshake_failures == []
    assert _texts(fake_azure) == ["before the rotation", "after the drop"]


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_a_provider_with_a_key_is_refused(fake_azure: FakeAzureRealtimeServer) -> None:
    with pytest.raises(ValueError, match="either azure_ad_token_provider or api_key"):
        make_model(fake_azure, api_key="k", azure_ad_token_provider=lambda: "t")


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_a_failing_provider_is_one_error_naming_it(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    def token_from_vault() -> str:
        raise RuntimeError("vault sealed")

    model = make_model(
        fake_azure, api_key=None, azure_ad_token_provider=token_from_vault, conn_options=FAST_RETRY
    )
    session = model.session()
    errors = Errors(session)
    try:
        await _until(lambda: bool(errors.fatal), fake_azure)
    finally:
        await session.aclose()
        await model.aclose()
    # retried like an unreachable host, then given up
    assert len(errors.recoverable) == 1
    assert (
        "azure_ad_token_provider 'token_from_vault' raised RuntimeError: vault sealed"
        in (errors.fatal[0])
    )
    assert fake_azure.connections == 0


# ------------------------------------------------------------------------ refused handshakes


async def _fatal_session(model: Any, server: FakeAzureRealtimeServer) -> tuple[Any, Errors]:
    session = model.session()
    errors = Errors(session)
    await _until(lambda: bool(errors.fatal), server)
    return session, errors


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
@pytest.mark.parametrize("case", ["wrong key", "wrong deployment"])
async def test_a_refused_handshake_is_one_fatal_error_not_retried(
    fake_azure: FakeAzureRealtimeServer, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    kwargs = {"api_key": "wrong"} if case == "wrong key" else {"azure_deployment": "missing"}
    status = 401 if case == "wrong key" else 404
    model = make_model(fake_azure, **kwargs)
    session, errors = await _fatal_session(model, fake_azure)
    try:
        with pytest.raises(llm.RealtimeError) as info:
            await session.update_chat_ctx(_message("after the refusal"))
        caplog.clear()
        await asyncio.wait_for(session.aclose(), 5.0)
    finally:
        await session.aclose()
        await model.aclose()
    assert fake_azure.handshake_failures == [status]
    assert errors.recoverable == []
    assert len(errors.fatal) == 1
    cause = errors.fatal[0]
    assert cause.startswith(f"realtime connection refused: HTTP {status} ")
    assert "/openai/" in cause and "\n" not in cause
    assert fake_azure.api_key not in cause
    # the sync says why, not only that the session is closed
    assert cause in str(info.value)
    # aclose() after the fatal error: nothing logged, nothing re-raised
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_an_agent_session_closes_after_a_fatal_connection_error(
    fake_azure: FakeAzureRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    from livekit.agents import Agent

    model = make_model(fake_azure, api_key="wrong")
    agent_session: AgentSession[None] = AgentSession(llm=model)
    closed = asyncio.Event()
    close_events: list[Any] = []

    def on_close(ev: Any) -> None:
        close_events.append(ev)
        closed.set()

    agent_session.on("close", on_close)
    unretrieved: list[Any] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        await agent_session.start(Agent(instructions="test"))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closed.wait(), 10.0)
        await agent_session.aclose()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
        await model.aclose()
    assert len(close_events) == 1
    assert "realtime connection refused: HTTP 401" in str(close_events[0].error.error)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    # what the framework logs: the unrecoverable error (one line, the cause) and the agent's
    # first sync failing with it; nothing from the shutdown (1.4.6: "Error in _aclose_impl")
    expected = (
        "closing due to unrecoverable error: realtime connection refused: HTTP 401",
        "failed to update the chat_ctx",
    )
    assert [m for m in errors if not any(e in m for e in expected)] == []
    assert unretrieved == []


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_a_busy_service_is_retried_after_retry_after(
    fake_azure: FakeAzureRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_azure.refuse_handshakes(503, retry_after="1")
    model = make_model(fake_azure, conn_options=FAST_RETRY)
    session = model.session()
    errors = Errors(session)
    caplog.set_level(logging.WARNING)
    try:
        await session.update_chat_ctx(_message("once the service is back"))
    finally:
        await session.aclose()
        await model.aclose()
    assert fake_azure.handshake_failures == [503]
    assert fake_azure.connections == 1
    assert errors.fatal == []
    assert len(errors.recoverable) == 1
    assert "HTTP 503 Service Unavailable" in errors.recoverable[0]
    retried = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retried) == 1 and retried[0].startswith(
        "OpenAI Realtime API connection failed, retrying in 1.0s: realtime connection failed: "
        "HTTP 503 Service Unavailable"
    )
    assert _texts(fake_azure) == ["once the service is back"]


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_an_unreachable_host_is_retried_with_its_cause(
    fake_azure_factory: Callable[..., Awaitable[FakeAzureRealtimeServer]],
) -> None:
    server = await fake_azure_factory()
    model = make_model(server, conn_options=FAST_RETRY)
    host = f"127.0.0.1:{server.port}"
    await server.aclose()  # nothing listens there any more
    session = model.session()
    errors = Errors(session)
    try:
        with pytest.raises(llm.RealtimeError) as info:
            await session.update_chat_ctx(_message("never sent"))
    finally:
        await session.aclose()
        await model.aclose()
    cause = f"realtime connection failed: cannot reach {host} (connection refused)"
    assert len(errors.recoverable) == 1 and errors.recoverable[0].startswith(cause)
    assert errors.fatal == [
        "OpenAI Realtime API connection failed after 2 attempts: "
        + cause
        + "; check the endpoint and the network"
    ]
    assert cause in str(info.value)


# ---------------------------------------------------------------------- endpoint, protocol


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
@pytest.mark.parametrize("suffix", ["/openai/realtime", "/openai/v1/realtime/"])
async def test_an_endpoint_given_with_its_api_path_connects(
    fake_azure: FakeAzureRealtimeServer, suffix: str
) -> None:
    from livekit.plugins import openai

    kwargs: dict[str, Any] = {}
    if fake_azure.protocol == "preview":
        from fake_azure import DEFAULT_API_VERSION

        kwargs["api_version"] = DEFAULT_API_VERSION
    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment=fake_azure.deployment,
        azure_endpoint=fake_azure.endpoint + suffix,
        api_key=fake_azure.api_key,
        **kwargs,
    )
    model._opts.conn_options = FAST_RETRY
    session = model.session()
    try:
        await session.update_chat_ctx(_message("right path"))
    finally:
        await session.aclose()
        await model.aclose()
    assert fake_azure.handshake_failures == []
    assert _texts(fake_azure) == ["right path"]


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
def test_an_endpoint_with_a_query_is_refused_at_construction(protocol: str) -> None:
    from livekit.plugins import openai

    pasted = "https://res.openai.azure.com/openai/realtime?api-version=2024-10-01-preview"
    kwargs: dict[str, Any] = {"api_version": "2024-10-01-preview"} if protocol == "preview" else {}
    with pytest.raises(ValueError, match=r"has a query: pass the resource endpoint, https://"):
        openai.realtime.RealtimeModel.with_azure(
            azure_deployment="d", azure_endpoint=pasted, api_key="k", **kwargs
        )


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
def test_openai_api_version_in_the_environment_is_named_and_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from openai.types.realtime import AudioTranscription

    from livekit.plugins import openai

    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-01-preview")
    with pytest.raises(ValueError) as info:
        openai.realtime.RealtimeModel.with_azure(
            azure_deployment="d",
            azure_endpoint="https://res.openai.azure.com",
            api_key="k",
            input_audio_transcription=AudioTranscription(model="whisper-1"),
        )
    assert "OPENAI_API_VERSION environment variable" in str(info.value)
    assert "was given" not in str(info.value)
    # once per process: forget the warnings an earlier test of this run had
    from livekit.plugins.openai.realtime import connection

    monkeypatch.setattr(connection, "_warned", set())
    caplog.set_level(logging.WARNING)
    caplog.clear()
    for _ in range(2):
        model = openai.realtime.RealtimeModel.with_azure(
            azure_deployment="d", azure_endpoint="https://res.openai.azure.com", api_key="k"
        )
        assert type(model).__name__ == "RealtimeModelBeta"
    warnings = [r.getMessage() for r in caplog.records if "OPENAI_API_VERSION" in r.getMessage()]
    assert len(warnings) == 1
    assert "selected Azure's deprecated preview realtime protocol" in warnings[0]


def test_the_warning_about_the_environment_says_how_to_get_ga() -> None:
    _azure_protocol = azure_protocol_choice()
    choice = _azure_protocol(None, {"OPENAI_API_VERSION": "2024-10-01-preview"})
    assert choice.warning == (
        "with_azure(): OPENAI_API_VERSION=2024-10-01-preview in the environment selected "
        "Azure's deprecated preview realtime protocol (RealtimeModelBeta); for the GA "
        "protocol (/openai/v1/realtime) unset OPENAI_API_VERSION and pass no api_version"
    )


# ----------------------------------------------------------------------------------- version


@pytest.mark.regression(fails_on=(STATE_MACHINE,), passes_on=("1.4.6",))
def test_the_module_version_is_the_distributions() -> None:
    from livekit.plugins import openai

    assert openai.__version__ == importlib.metadata.version("livekit-plugins-openai")


# ------------------------------------------------------------ review of the issue 16 fixes

GIVE_UP = APIConnectOptions(max_retry=0, retry_interval=0.01, timeout=0.2)


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_a_token_provider_that_never_returns_fails_the_connect_at_its_timeout(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    async def stuck_provider() -> str:
        await asyncio.Event().wait()
        return "never"

    model = make_model(
        fake_azure, api_key=None, azure_ad_token_provider=stuck_provider, conn_options=GIVE_UP
    )
    session = model.session()
    errors = Errors(session)
    try:
        with pytest.raises(llm.RealtimeError) as info:
            await asyncio.wait_for(session.update_chat_ctx(_message("never sent")), 10.0)
    finally:
        await asyncio.wait_for(session.aclose(), 5.0)
        await model.aclose()
    cause = (
        "realtime connection failed: azure_ad_token_provider 'stuck_provider' returned no token "
        "within 0.2 s (timeout)"
    )
    assert errors.fatal == [cause]
    assert cause in str(info.value)
    assert fake_azure.connections == 0


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_aclose_during_a_token_provider_call_returns_and_opens_no_websocket(
    fake_azure: FakeAzureRealtimeServer, kind: str
) -> None:
    fake_azure.rotate_token("tok")
    called = asyncio.Event()
    loop = asyncio.get_running_loop()
    release = threading.Event()

    def slow_sync() -> str:
        loop.call_soon_threadsafe(called.set)
        release.wait(10)
        return "tok"

    async def slow_async() -> str:
        called.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return "tok"

    provider = slow_sync if kind == "sync" else slow_async
    model = make_model(fake_azure, api_key=None, azure_ad_token_provider=provider)
    session = model.session()
    errors = Errors(session)
    try:
        await asyncio.wait_for(called.wait(), 10.0)
        await asyncio.wait_for(session.aclose(), 5.0)  # the provider is still blocked
    finally:
        release.set()
        await session.aclose()
        await model.aclose()
    await asyncio.sleep(0.2)  # the released provider's token arrives after the close
    assert fake_azure.connections == 0 and fake_azure.handshake_bearers == []
    assert errors.fatal == []


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
@pytest.mark.parametrize("argument", ["api_key", "entra_token"])
def test_a_newline_in_a_key_or_token_is_refused_at_construction(
    fake_azure: FakeAzureRealtimeServer, argument: str
) -> None:
    kwargs: dict[str, Any] = {"api_key": None, argument: "s3cret\n"}
    with pytest.raises(ValueError) as info:
        make_model(fake_azure, **kwargs)
    assert str(info.value).startswith(f"with_azure(): {argument} has a control character")
    assert "s3cret" not in str(info.value)


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_an_unexpected_handshake_failure_is_the_sessions_fatal_error(
    fake_azure: FakeAzureRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_model(fake_azure)
    # past the constructor's check (as a subclass or a later edit could): aiohttp refuses it
    model._opts.api_key = fake_azure.api_key + "\n"
    session, errors = await _fatal_session(model, fake_azure)
    try:
        with pytest.raises(llm.RealtimeError) as info:
            await session.update_chat_ctx(_message("never sent"))
        caplog.clear()
        await asyncio.wait_for(session.aclose(), 5.0)  # nothing re-raised
    finally:
        await session.aclose()
        await model.aclose()
    assert len(errors.fatal) == 1 and errors.recoverable == []
    assert errors.fatal[0].startswith("realtime connection failed: the handshake with 127.0.0.1:")
    assert "ValueError" in errors.fatal[0]
    assert errors.fatal[0] in str(info.value)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert fake_azure.connections == 0


async def test_aclose_during_a_retry_after_wait_returns_at_once(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    fake_azure.refuse_handshakes(503, count=5, retry_after="30")
    model = make_model(
        fake_azure, conn_options=APIConnectOptions(max_retry=3, retry_interval=0.01, timeout=5)
    )
    session = model.session()
    errors = Errors(session)
    try:
        await _until(lambda: bool(errors.recoverable), fake_azure)
        # generous guard: the wait is 30 s, a close must not sit it out
        await asyncio.wait_for(session.aclose(), 10.0)
    finally:
        await model.aclose()
    assert fake_azure.handshake_failures == [503] and fake_azure.connections == 0
    assert errors.fatal == []


async def test_a_retry_after_that_is_no_number_is_retried_after_the_backoff(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    fake_azure.refuse_handshakes(429, retry_after="nan")
    model = make_model(fake_azure, conn_options=FAST_RETRY)
    session = model.session()
    errors = Errors(session)
    try:
        await asyncio.wait_for(session.update_chat_ctx(_message("after the 429")), 10.0)
    finally:
        await session.aclose()
        await model.aclose()
    assert fake_azure.handshake_failures == [429] and fake_azure.connections == 1
    assert len(errors.recoverable) == 1 and "Retry-After" not in errors.recoverable[0]
    assert _texts(fake_azure) == ["after the 429"]


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
async def test_generate_reply_after_a_fatal_error_carries_its_cause(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    model = make_model(fake_azure, api_key="wrong")
    session, errors = await _fatal_session(model, fake_azure)
    try:
        with pytest.raises(llm.RealtimeError) as sync:
            await session.update_chat_ctx(_message("after the refusal"))
        with pytest.raises(llm.RealtimeError) as reply:
            await asyncio.wait_for(session.generate_reply(), 10.0)
    finally:
        await session.aclose()
        await model.aclose()
    cause = errors.fatal[0]
    assert str(reply.value) == f"generate_reply: the realtime session failed: {cause}"
    assert str(sync.value) == f"update_chat_ctx: the realtime session failed: {cause}"


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
def test_the_direct_constructor_refuses_a_key_with_a_provider(protocol: str) -> None:
    from livekit.plugins import openai

    cls = openai.realtime.RealtimeModel if protocol == "ga" else openai.realtime.RealtimeModelBeta
    with pytest.raises(ValueError, match=r"\(\): pass either azure_ad_token_provider or api_key"):
        cls(
            base_url="https://x.openai.azure.com/openai",
            azure_deployment="d",
            api_key="k",
            azure_ad_token_provider=lambda: "t",
            api_version="2024-10-01-preview",
        )


@pytest.mark.regression(fails_on=FORK_AND_UPSTREAM)
def test_an_http_endpoint_off_loopback_warns_once_of_cleartext(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    from livekit.plugins import openai

    kwargs: dict[str, Any] = {"api_version": "2024-10-01-preview"} if protocol == "preview" else {}
    endpoint = f"http://plain-{protocol}.example.com"
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            openai.realtime.RealtimeModel.with_azure(
                azure_endpoint=endpoint, azure_deployment="d", api_key="k", **kwargs
            )
    warned = [r.getMessage() for r in caplog.records if "cleartext" in r.getMessage()]
    assert warned == [
        f"azure_endpoint plain-{protocol}.example.com is http://: the key or token goes over "
        "the network in cleartext; use https://"
    ]
