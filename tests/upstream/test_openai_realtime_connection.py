"""Unit tests of livekit.plugins.openai.realtime.connection (URLs, credentials, retries).

The handshake runs against a fake of the HTTP session's ``ws_connect``: no socket."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from livekit.agents import APIConnectionError, APIConnectOptions
from livekit.plugins.openai.realtime import connection
from livekit.plugins.openai.realtime.connection import Credentials, handshake_error

ENDPOINT = "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime&api-key=secret"


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://res.openai.azure.com",
        "https://res.openai.azure.com/",
        "wss://res.openai.azure.com/openai/v1/realtime",
        "https://res.openai.azure.com/openai/realtime",
        "https://res.openai.azure.com/openai/v1",
        " https://res.openai.azure.com/openai ",
    ],
)
def test_an_endpoint_with_its_api_path_is_the_resource_endpoint(endpoint: str) -> None:
    assert connection.azure_base_url(endpoint) == "https://res.openai.azure.com/openai"


def test_a_gateway_keeps_its_path_prefix() -> None:
    base = connection.azure_base_url("https://gw.example.com/team/openai/v1")
    assert base == "https://gw.example.com/team/openai"


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("wss://res.openai.azure.com/openai/realtime?deployment=x&api-key=secret", "query"),
        ("https://res.openai.azure.com/#x", "fragment"),
        ("https://user:pw@res.openai.azure.com", "user or password"),
        ("ftp://res.openai.azure.com", "not an https URL"),
        ("https://res.openai.azure.com/openai/deployments/gpt", "deployment path"),
    ],
)
def test_an_endpoint_no_handshake_could_use_is_refused_without_its_secrets(
    endpoint: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as raised:
        connection.azure_base_url(endpoint)
    assert "secret" not in str(raised.value) and "pw" not in str(raised.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_refusal_no_retry_fixes_gives_up_saying_what_to_check(status: int) -> None:
    error = handshake_error(status, ENDPOINT)
    decision = connection.retry_decision(error, 0, APIConnectOptions(max_retry=3))
    assert decision.failure is error and not error.retryable
    assert "check" in str(error) and "secret" not in str(error)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_or_failing_service_is_retried_after_its_retry_after(status: int) -> None:
    options = APIConnectOptions(max_retry=3, retry_interval=2.0)
    error = handshake_error(status, ENDPOINT, {"Retry-After": "7"})
    decision = connection.retry_decision(error, 1, options)
    assert decision.failure is None and decision.delay == 7.0
    short = handshake_error(status, ENDPOINT, {"Retry-After": "1"})
    assert connection.retry_decision(short, 1, options).delay == 2.0  # the backoff is longer


def test_retry_after_is_capped_and_junk_is_ignored() -> None:
    huge = handshake_error(429, ENDPOINT, {"Retry-After": "86400"})
    assert huge.retry_after == connection.MAX_RETRY_AFTER
    assert connection.parse_retry_after("-5") == 0.0
    for junk in (None, "", "nan", "inf", "soon"):
        assert connection.parse_retry_after(junk) is None
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert connection.parse_retry_after(date, now=1445412480.0) == 10.0


def test_used_up_retries_give_up_counting_the_attempts() -> None:
    error = handshake_error(503, ENDPOINT)
    decision = connection.retry_decision(error, 3, APIConnectOptions(max_retry=3))
    assert decision.failure is not None and not decision.failure.retryable
    assert "after 4 attempts" in str(decision.failure)
    assert connection.retry_decision(error, 0, APIConnectOptions(max_retry=0)).failure is error


def test_credentials_come_from_the_arguments_else_the_environment() -> None:
    env = {"AZURE_OPENAI_API_KEY": "env-key"}
    creds = connection.resolve_credentials(
        api_key=None, entra_token=None, azure_ad_token_provider=None, env=env
    )
    assert creds.api_key == "env-key" and creds.headers(None) == {"api-key": "env-key"}

    def provider() -> str:
        return "tok"

    creds = connection.resolve_credentials(
        api_key=None, entra_token=None, azure_ad_token_provider=provider, env=env
    )
    assert creds.api_key is None and creds.token_provider is provider
    for bad in (
        {"api_key": "k", "azure_ad_token_provider": provider},  # both
        {"api_key": "k\n"},  # a pasted newline
        {},  # nothing at all
    ):
        args: dict[str, Any] = {"api_key": None, "entra_token": None}
        args |= {"azure_ad_token_provider": None, **bad}
        with pytest.raises(ValueError):
            connection.resolve_credentials(**args, env={})


class _Http:
    """The HTTP session's ``ws_connect``: refuses the first ``refusals`` handshakes with 401."""

    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.headers: list[dict[str, str]] = []

    async def ws_connect(self, *, url: str, headers: dict[str, str]) -> str:
        self.headers.append(headers)
        if len(self.headers) <= self.refusals:
            info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()))
            raise aiohttp.WSServerHandshakeError(info, (), status=401)
        return "websocket"


async def _open(http: _Http, creds: Credentials) -> object:
    session = cast(aiohttp.ClientSession, http)
    return await connection.open_websocket(session, ENDPOINT, creds, headers={}, timeout=5.0)


async def test_the_token_provider_is_called_for_every_websocket() -> None:
    tokens = iter(["tok1", "tok2"])
    creds = Credentials(token_provider=lambda: next(tokens))
    http = _Http()
    assert await _open(http, creds) == "websocket"
    assert await _open(http, creds) == "websocket"
    assert [h["Authorization"] for h in http.headers] == ["Bearer tok1", "Bearer tok2"]


async def test_a_401_is_retried_once_with_a_rotated_token() -> None:
    tokens = iter(["old", "new"])

    async def provider() -> str:
        return next(tokens)

    http = _Http(refusals=1)
    assert await _open(http, Credentials(token_provider=provider)) == "websocket"
    assert [h["Authorization"] for h in http.headers] == ["Bearer old", "Bearer new"]
    with pytest.raises(connection.RealtimeHandshakeError) as raised:
        await _open(_Http(refusals=2), Credentials(token_provider=lambda: "same"))
    assert raised.value.status_code == 401


async def test_a_provider_without_a_token_is_a_retryable_connection_error() -> None:
    with pytest.raises(APIConnectionError, match="not a token string") as raised:
        await Credentials(token_provider=lambda: "").token(5.0)
    assert raised.value.retryable


async def test_a_closing_session_opens_no_websocket() -> None:
    closing = asyncio.Event()
    closing.set()
    opts: Any = type("Opts", (), {})()
    http = _Http()
    assert (
        await connection.connect(cast(aiohttp.ClientSession, http), ENDPOINT, opts, {}, closing)
        is None
    )
    assert http.headers == []
