"""``realtime/connection.py`` on its own: credentials, endpoints, protocol choice, handshake errors.

The pure parts are called directly; ``Credentials.token`` with sync, async and failing
providers; ``open_websocket`` against a tiny aiohttp handler that answers with a status. The
sessions' use of it (both protocols, through ``with_azure``) is in ``test_azure_connection.py``.
On pristine upstream and earlier fork builds the module does not exist: skipped there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sync_helpers import azure_protocol_choice

connection = pytest.importorskip(
    "livekit.plugins.openai.realtime.connection",
    reason="the connection module is not in this build",
)


# ----------------------------------------------------------------------------- credentials


def test_a_provider_with_a_key_or_token_is_refused() -> None:
    for other in ({"api_key": "k"}, {"entra_token": "t"}):
        with pytest.raises(ValueError, match="either azure_ad_token_provider or"):
            connection.resolve_credentials(
                **{"api_key": None, "entra_token": None, **other},
                azure_ad_token_provider=lambda: "tok",
                env={},
            )


def test_a_provider_ignores_the_key_in_the_environment() -> None:
    def provider() -> str:
        return "tok"

    creds = connection.resolve_credentials(
        api_key=None,
        entra_token=None,
        azure_ad_token_provider=provider,
        env={"AZURE_OPENAI_API_KEY": "from-env"},
    )
    assert (creds.api_key, creds.entra_token, creds.token_provider) == (None, None, provider)


def test_a_provider_that_is_not_callable_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a callable .* not a str"):
        connection.resolve_credentials(
            api_key=None, entra_token=None, azure_ad_token_provider="tok", env={}
        )


def test_the_key_falls_back_to_the_environment_and_none_at_all_is_refused() -> None:
    creds = connection.resolve_credentials(
        api_key=None,
        entra_token=None,
        azure_ad_token_provider=None,
        env={"AZURE_OPENAI_API_KEY": "e"},
    )
    assert creds.api_key == "e"
    with pytest.raises(ValueError, match="Missing credentials.*azure_ad_token_provider"):
        connection.resolve_credentials(
            api_key=None, entra_token=None, azure_ad_token_provider=None, env={}
        )


def test_headers_per_credential() -> None:
    assert connection.Credentials(api_key="k").headers(None) == {"api-key": "k"}
    assert connection.Credentials(entra_token="t").headers("t") == {"Authorization": "Bearer t"}
    openai = connection.Credentials(api_key="sk", is_azure=False)
    assert openai.headers(None) == {"Authorization": "Bearer sk"}


async def test_a_sync_provider_runs_in_a_worker_thread() -> None:
    threads: list[int] = []

    def provider() -> str:
        threads.append(threading.get_ident())
        return "tok"

    assert await connection.Credentials(token_provider=provider).token() == "tok"
    assert threads and threads[0] != threading.get_ident()


async def test_an_async_provider_is_awaited_on_the_loop() -> None:
    threads: list[int] = []

    async def provider() -> str:
        threads.append(threading.get_ident())
        return "async-tok"

    class CallableProvider:
        async def __call__(self) -> str:
            return "obj-tok"

    assert await connection.Credentials(token_provider=provider).token() == "async-tok"
    assert threads == [threading.get_ident()]
    assert await connection.Credentials(token_provider=CallableProvider()).token() == "obj-tok"


async def test_a_sync_provider_returning_an_awaitable_is_awaited() -> None:
    async def fetch() -> str:
        return "late-tok"

    creds = connection.Credentials(token_provider=lambda: fetch())
    assert await creds.token() == "late-tok"


async def test_a_failing_provider_is_one_retryable_error_naming_it() -> None:
    def broken_provider() -> str:
        raise RuntimeError("no credential in the chain")

    with pytest.raises(connection.APIConnectionError) as info:
        await connection.Credentials(token_provider=broken_provider).token()
    message = str(info.value)
    assert "broken_provider" in message and "RuntimeError: no credential in the chain" in message
    assert info.value.retryable

    with pytest.raises(connection.APIConnectionError, match="returned None, not a token string"):
        await connection.Credentials(token_provider=lambda: None).token()
    with pytest.raises(connection.APIConnectionError, match="returned an int, not a token"):
        await connection.Credentials(token_provider=lambda: 42).token()


# ------------------------------------------------------------------------ endpoint, protocol


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://res.openai.azure.com",
        "https://res.openai.azure.com/",
        "https://res.openai.azure.com/openai",
        "https://res.openai.azure.com/openai/",
        "https://res.openai.azure.com/openai/v1",
        "https://res.openai.azure.com/openai/realtime",
        "https://res.openai.azure.com/openai/v1/realtime/",
        "wss://res.openai.azure.com/openai/v1/realtime",
    ],
)
def test_an_endpoint_with_its_api_path_means_the_resource(endpoint: str) -> None:
    assert connection.azure_base_url(endpoint) == "https://res.openai.azure.com/openai"


@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        ("https://res.cognitiveservices.azure.com", "https://res.cognitiveservices.azure.com"),
        ("https://res.services.ai.azure.com/", "https://res.services.ai.azure.com"),
        ("https://res.openai.azure.us", "https://res.openai.azure.us"),
        ("https://gw.example.com/azure/", "https://gw.example.com/azure"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_any_host_and_a_gateway_prefix_are_kept(endpoint: str, base: str) -> None:
    assert connection.azure_base_url(endpoint) == f"{base}/openai"


def test_an_endpoint_with_a_query_is_refused_showing_the_expected_form() -> None:
    pasted = (
        "wss://res.openai.azure.com/openai/realtime?api-version=2024-10-01-preview"
        "&deployment=gpt-4o-realtime-preview&api-key=SECRET"
    )
    with pytest.raises(ValueError) as info:
        connection.azure_base_url(pasted)
    message = str(info.value)
    assert "has a query" in message and "https://<resource>.openai.azure.com" in message
    assert "SECRET" not in message and "\n" not in message


def test_an_endpoint_that_is_no_url_is_refused() -> None:
    with pytest.raises(ValueError, match="is not an https URL"):
        connection.azure_base_url("res.openai.azure.com")


def test_the_protocol_says_where_its_choice_came_from() -> None:
    _azure_protocol = azure_protocol_choice()
    arg = _azure_protocol("2024-10-01-preview", {"OPENAI_API_VERSION": "x"})
    assert (arg.api_version, arg.from_env, arg.warning) == ("2024-10-01-preview", False, None)
    assert "api_version `2024-10-01-preview` was given" in arg.why

    env = _azure_protocol(None, {"OPENAI_API_VERSION": "2024-10-01-preview"})
    assert env.api_version == "2024-10-01-preview" and env.from_env
    assert "OPENAI_API_VERSION environment variable" in env.why
    assert env.warning is not None and "unset OPENAI_API_VERSION" in env.warning

    ga = _azure_protocol(None, {})
    assert ga.api_version is None and "GA realtime protocol" in ga.why


# ------------------------------------------------------------------------------- handshake


URL = "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime&key=SECRET"


@pytest.mark.parametrize(
    ("status", "check"),
    [
        (400, "api-version"),
        (401, "check the key or token"),
        (403, "may use this resource"),
        (404, "the deployment name"),
    ],
)
def test_a_refusal_is_fatal_and_says_what_to_check(status: int, check: str) -> None:
    error = connection.handshake_error(status, URL)
    assert not error.retryable and error.status_code == status
    message = str(error)
    assert message.startswith(f"realtime connection refused: HTTP {status} ")
    assert "res.openai.azure.com/openai/v1/realtime?model=gpt-realtime;" in message
    assert check in message and "SECRET" not in message and "\n" not in message


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_busy_or_failing_is_retryable_with_retry_after(status: int) -> None:
    error = connection.handshake_error(status, URL, {"Retry-After": "7"})
    assert error.retryable and error.retry_after == 7.0
    assert "(Retry-After 7 s)" in str(error)
    assert connection.retry_delay(error, 0.5) == 7.0
    assert connection.retry_delay(connection.handshake_error(status, URL), 0.5) == 0.5


def test_retry_after_forms() -> None:
    assert connection.parse_retry_after(None) is None
    assert connection.parse_retry_after("soon") is None
    assert connection.parse_retry_after("3600") == connection.MAX_RETRY_AFTER
    now = 1_700_000_000.0
    assert connection.parse_retry_after("Tue, 14 Nov 2023 22:13:25 GMT", now=now) == 5.0


@pytest.fixture
async def status_server() -> AsyncIterator[tuple[str, list[dict[str, str]], list[Any]]]:
    """An endpoint answering each handshake with the next status of ``statuses`` (101: accept;
    ``(status, retry_after)``: with a ``Retry-After`` header)."""
    seen: list[dict[str, str]] = []
    statuses: list[Any] = []

    async def _handler(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        answer = statuses.pop(0) if statuses else 101
        status, retry_after = answer if isinstance(answer, tuple) else (answer, None)
        if status != 101:
            headers = {"Retry-After": retry_after} if retry_after else None
            return web.json_response(
                {"error": {"code": str(status)}}, status=status, headers=headers
            )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/openai/v1/realtime", _handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"ws://127.0.0.1:{server.port}/openai/v1/realtime?model=m", seen, statuses
    finally:
        await server.close()


async def _open(url: str, creds: Any) -> Any:
    async with aiohttp.ClientSession() as http:
        ws = await connection.open_websocket(http, url, creds, headers={}, timeout=5)
        await ws.close()
        return ws


async def test_a_401_asks_the_provider_again_and_retries_once(status_server: Any) -> None:
    url, seen, statuses = status_server
    tokens = iter(["old", "new", "newer"])
    statuses.extend([401])
    await _open(url, connection.Credentials(token_provider=lambda: next(tokens)))
    assert [h["Authorization"] for h in seen] == ["Bearer old", "Bearer new"]


async def test_a_401_with_an_unchanged_token_is_not_retried(status_server: Any) -> None:
    url, seen, statuses = status_server
    statuses.extend([401, 401])
    with pytest.raises(connection.RealtimeHandshakeError) as info:
        await _open(url, connection.Credentials(token_provider=lambda: "same"))
    assert info.value.status_code == 401 and len(seen) == 1


async def test_a_401_with_a_key_is_not_retried(status_server: Any) -> None:
    url, seen, statuses = status_server
    statuses.extend([401, 401])
    with pytest.raises(connection.RealtimeHandshakeError, match="HTTP 401 Unauthorized"):
        await _open(url, connection.Credentials(api_key="wrong"))
    assert len(seen) == 1


async def test_a_503_carries_retry_after(status_server: Any) -> None:
    url, _, statuses = status_server
    statuses.append((503, "7"))
    with pytest.raises(connection.RealtimeHandshakeError) as info:
        await _open(url, connection.Credentials(api_key="k"))
    assert info.value.retryable and info.value.status_code == 503
    assert info.value.retry_after == 7.0
    assert "(Retry-After 7 s)" in str(info.value)


async def test_an_unexpected_handshake_error_is_fatal_with_its_cause(status_server: Any) -> None:
    url, seen, _ = status_server
    # past the checks of with_azure and the constructors: aiohttp refuses the header itself
    with pytest.raises(connection.APIConnectionError) as info:
        await _open(url, connection.Credentials(api_key="k\nX-Injected: 1"))
    assert not info.value.retryable and seen == []
    assert str(info.value).startswith("realtime connection failed: the handshake with 127.0.0.1:")
    assert "ValueError" in str(info.value)


async def test_an_unreachable_host_names_the_cause() -> None:
    # a port nothing listens on: bind one, close it, connect to it
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(connection.APIConnectionError) as info:
        await _open(
            f"ws://127.0.0.1:{port}/openai/v1/realtime", connection.Credentials(api_key="k")
        )
    assert info.value.retryable
    assert str(info.value) == (
        f"realtime connection failed: cannot reach 127.0.0.1:{port} (connection refused); "
        "check the endpoint and the network"
    )


# ------------------------------------------------------------------- review of issue 16 fixes


async def test_a_provider_that_never_returns_is_the_provider_error_at_the_timeout() -> None:
    async def stuck_provider() -> str:
        await asyncio.Event().wait()
        return "never"

    with pytest.raises(connection.APIConnectionError) as info:
        await connection.Credentials(token_provider=stuck_provider).token(timeout=0.05)
    assert info.value.retryable
    assert str(info.value) == (
        "realtime connection failed: azure_ad_token_provider 'stuck_provider' returned no token "
        "within 0.05 s (timeout)"
    )


async def test_a_coroutine_a_sync_provider_returns_too_late_is_closed_not_left_unawaited() -> None:
    release = threading.Event()
    made: list[Any] = []

    async def fetch() -> str:
        return "late"

    def slow_provider() -> Any:
        release.wait(10)
        made.append(fetch())
        return made[-1]

    with pytest.raises(connection.APIConnectionError, match="returned no token within"):
        await connection.Credentials(token_provider=slow_provider).token(timeout=0.05)
    release.set()
    for _ in range(500):  # generous guard: the thread hands its result back to the loop
        if made and made[0].cr_frame is None:
            break
        await asyncio.sleep(0.01)
    assert made and made[0].cr_frame is None  # closed: no "never awaited" warning


async def test_a_future_of_another_loop_is_the_provider_error() -> None:
    def provider_with_its_own_loop() -> Any:
        return asyncio.new_event_loop().create_future()

    with pytest.raises(connection.APIConnectionError) as info:
        await connection.Credentials(token_provider=provider_with_its_own_loop).token()
    assert "'provider_with_its_own_loop' returned a future of another event loop" in str(info.value)


async def test_a_provider_token_with_a_control_character_is_the_provider_error() -> None:
    with pytest.raises(connection.APIConnectionError) as info:
        await connection.Credentials(token_provider=lambda: "tok\r\nX-Injected: 1").token()
    assert info.value.retryable
    assert "returned a token with a control character" in str(info.value)
    assert "X-Injected" not in str(info.value)


@pytest.mark.parametrize("argument", ["api_key", "entra_token", "AZURE_OPENAI_API_KEY"])
def test_a_control_character_in_a_key_or_token_is_refused_naming_the_argument(
    argument: str,
) -> None:
    secret = "s3cret-value\n"
    given: dict[str, str | None] = {"api_key": None, "entra_token": None}
    env: dict[str, str] = {}
    if argument == "AZURE_OPENAI_API_KEY":
        env[argument] = secret
    else:
        given[argument] = secret
    with pytest.raises(ValueError) as info:
        connection.resolve_credentials(**given, azure_ad_token_provider=None, env=env)
    assert str(info.value).startswith(f"with_azure(): {argument} has a control character")
    assert "s3cret" not in str(info.value)


def test_the_direct_check_refuses_a_key_with_a_provider() -> None:
    with pytest.raises(ValueError, match=r"^RealtimeModel\(\): pass either azure_ad_token_"):
        connection.check_credentials("RealtimeModel()", "k", None, lambda: "t")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_a_retry_after_that_is_no_finite_number_is_unreadable(value: str) -> None:
    assert connection.parse_retry_after(value) is None
    error = connection.handshake_error(429, "wss://h/openai/v1/realtime", {"Retry-After": value})
    assert error.retry_after is None and "Retry-After" not in str(error)
    assert connection.retry_delay(error, 0.1) == 0.1


def test_a_negative_retry_after_is_no_wait() -> None:
    assert connection.parse_retry_after("-5") == 0.0


def test_the_retry_decision_gives_up_or_waits() -> None:
    from livekit.agents import APIConnectOptions

    options = APIConnectOptions(max_retry=2, retry_interval=0.5, timeout=5)
    refused = connection.handshake_error(401, "wss://h/openai/v1/realtime")
    assert connection.retry_decision(refused, 0, options).failure is refused
    busy = connection.handshake_error(503, "wss://h/openai/v1/realtime", {"Retry-After": "3"})
    retry = connection.retry_decision(busy, 1, options)
    assert retry.failure is None and retry.delay == 3.0
    assert retry.warning.startswith("OpenAI Realtime API connection failed, retrying in 3.0s: ")
    last = connection.retry_decision(busy, 2, options).failure
    assert last is not None and not last.retryable
    assert str(last).startswith("OpenAI Realtime API connection failed after 3 attempts: ")
    no_retries = APIConnectOptions(max_retry=0, retry_interval=0.5, timeout=5)
    assert connection.retry_decision(busy, 0, no_retries).failure is busy


def test_a_password_in_the_endpoint_is_never_shown() -> None:
    endpoint = "https://user:pa55word@gw.example.com:8443/openai/realtime?x=1"
    with pytest.raises(ValueError) as info:
        connection.azure_base_url(endpoint)
    assert "gw.example.com:8443/openai/realtime" in str(info.value)
    url = "wss://user:pa55word@gw.example.com:8443/openai/v1/realtime?model=m"
    shown = [
        str(info.value),
        str(connection.handshake_error(401, url)),
        str(connection.connection_error(asyncio.TimeoutError(), url, 5)),
    ]
    assert all("pa55word" not in text and "user:" not in text for text in shown)
    assert "gw.example.com:8443" in shown[2]


def test_a_deployment_path_is_refused_showing_the_expected_form() -> None:
    with pytest.raises(ValueError) as info:
        connection.azure_base_url("https://x.openai.azure.com/openai/deployments/d/realtime")
    assert "has a deployment path" in str(info.value)
    assert "https://<resource>.openai.azure.com" in str(info.value)


def test_a_fragment_gets_its_own_message() -> None:
    with pytest.raises(ValueError, match="has a #fragment: pass the resource endpoint"):
        connection.azure_base_url("https://x.openai.azure.com#frag")


@pytest.mark.parametrize(
    ("base_url", "warns"),
    [
        ("http://x.openai.azure.com/openai", True),
        ("http://127.0.0.1:8080/openai", False),
        ("http://localhost:8080/openai", False),
        ("http://[::1]:8080/openai", False),
        ("https://x.openai.azure.com/openai", False),
    ],
)
def test_an_http_endpoint_warns_of_cleartext_unless_loopback(base_url: str, warns: bool) -> None:
    warning = connection.cleartext_warning(base_url)
    assert (warning is not None) == warns
    if warning:
        assert "cleartext" in warning


def test_a_provider_result_kind_is_named_with_the_right_article() -> None:
    assert connection._kind(42) == "an int"
    assert connection._kind(b"x") == "a bytes"


def test_an_endpoint_carrying_a_user_or_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match="carries a user or password") as info:
        connection.azure_base_url("https://user:pa55word@gw.example.com/azure")
    assert "pa55word" not in str(info.value) and "user:" not in str(info.value)


async def test_a_stuck_sync_provider_is_called_once_and_leaves_the_default_executor_free() -> None:
    """Every retry against a sync provider that blocks waits for the call in flight instead of
    starting another thread, and none of them runs in the loop's default executor (which the
    sessions' DNS lookups need)."""
    release = threading.Event()
    calls: list[str] = []

    def stuck_provider() -> str:
        calls.append(threading.current_thread().name)
        release.wait(10)
        return "late"

    credentials = connection.Credentials(token_provider=stuck_provider)
    try:
        for _ in range(12):
            with pytest.raises(connection.APIConnectionError, match="returned no token within"):
                await credentials.token(timeout=0.02)
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "free"), 2) == "free"
        assert len(calls) == 1, calls
        assert calls[0].startswith("azure_ad_token_provider"), calls
    finally:
        release.set()
    # once the stuck call returns, the next one is made afresh
    for _ in range(100):
        with contextlib.suppress(connection.APIConnectionError):
            if await credentials.token(timeout=0.05) == "late":
                break
    assert len(calls) == 2, calls
