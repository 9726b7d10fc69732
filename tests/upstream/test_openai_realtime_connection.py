"""Unit tests of livekit.plugins.openai.realtime.connection (URLs, credentials, retries)."""

from __future__ import annotations

import pytest

from livekit.plugins.openai.realtime import connection


def test_a_pasted_api_path_is_the_resource_endpoint() -> None:
    base = connection.azure_base_url("https://res.openai.azure.com/openai/v1/realtime")
    assert base == "https://res.openai.azure.com/openai"


def test_an_endpoint_with_a_query_is_refused() -> None:
    with pytest.raises(ValueError, match="query"):
        connection.azure_base_url("wss://res.openai.azure.com/openai/realtime?deployment=x")


def test_retry_after_reads_seconds_and_ignores_junk() -> None:
    assert connection.parse_retry_after("2") == 2.0
    assert connection.parse_retry_after("nan") is None
    assert connection.parse_retry_after(None) is None


def test_missing_credentials_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        connection.resolve_credentials(
            api_key=None, entra_token=None, azure_ad_token_provider=None, env={}
        )
