"""``with_azure()`` without ``api_version``: credentials, paths and option errors (found in a
second review of the GA route).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from livekit.agents import APIConnectOptions
from livekit.plugins import openai

pytestmark = pytest.mark.skipif(
    os.environ.get("FORK_UNDER_TEST") == "upstream",
    reason="the fork's sync runner and GA route; upstream has neither",
)


class Capture:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.got = asyncio.Event()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.query), dict(request.headers)))
        self.got.set()
        return web.json_response({"error": {"code": "401", "message": "no"}}, status=401)

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    cap = Capture()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", cap.handle)
    cap.server = TestServer(app, host="127.0.0.1", port=None)
    await cap.server.start_server()
    try:
        yield cap
    finally:
        await cap.server.close()


async def _handshake(cap: Capture, model: Any) -> tuple[str, dict[str, str], dict[str, str]]:
    model._opts.conn_options = APIConnectOptions(max_retry=0, timeout=2.0)
    sess = model.session()
    try:
        await asyncio.wait_for(cap.got.wait(), 3)
    finally:
        with contextlib.suppress(Exception):
            await sess.aclose()
        await model.aclose()
    return cap.requests[0]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "OPENAI_API_VERSION",
        "OPENAI_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)


# ------------------------------------------------------------------------- credentials


async def test_entra_token_does_not_send_the_openai_key_to_azure(
    capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entra auth on the GA route with ``OPENAI_API_KEY`` set (an app that also talks to
    api.openai.com): the GA constructor falls back to ``OPENAI_API_KEY`` and the session sends
    it to Azure as ``api-key`` next to the Bearer token (a credential sent to another
    provider; Azure checks ``api-key`` first). realtime_model.py ``__init__``:
    ``api_key = api_key or os.environ.get("OPENAI_API_KEY")``; ``_create_ws_conn`` sends both.
    (Pre-existing in upstream's constructors, preview too; the GA route now reaches it.)"""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-platform-key")
    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment="gpt-realtime-mini", azure_endpoint=capture.endpoint, entra_token="ey.j.w"
    )
    _, _, headers = await _handshake(capture, model)
    assert headers.get("Authorization") == "Bearer ey.j.w"
    assert "api-key" not in headers, f"api-key header sent with Entra auth: {headers['api-key']}"


# ------------------------------------------------------------------------- URL


@pytest.mark.parametrize(
    "base_suffix",
    ["", "/", "/openai", "/openai/", "/openai/v1", "/openai/v1/"],
    ids=["root", "root-slash", "openai", "openai-slash", "v1", "v1-slash"],
)
async def test_ga_base_url_variants_reach_the_v1_path(capture: Capture, base_suffix: str) -> None:
    """``base_url`` is the resource root, ``/openai`` or ``/openai/v1``: every one must end at
    ``/openai/v1/realtime``. The root gives ``/v1/realtime`` (``process_base_url``: path ""
    -> ``"" + "/v1/realtime"``), an OpenAI-style path Azure does not serve."""
    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment="dep", base_url=capture.endpoint + base_suffix, api_key="k"
    )
    path, query, _ = await _handshake(capture, model)
    assert (path, query) == ("/openai/v1/realtime", {"model": "dep"})


async def test_ga_azure_endpoint_with_openai_suffix(capture: Capture) -> None:
    """``azure_endpoint`` copied from the portal with ``/openai`` (or ``/openai/v1``) already
    on it: with_azure appends ``/openai`` again, and ``/openai/openai`` is neither "" nor
    ``/openai`` nor ``/openai/v1``, so it is used as is: ``/openai/openai?model=dep``, no
    ``/realtime`` at all."""
    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment="dep", azure_endpoint=capture.endpoint + "/openai/v1", api_key="k"
    )
    path, query, _ = await _handshake(capture, model)
    assert (path, query) == ("/openai/v1/realtime", {"model": "dep"})


# ------------------------------------------------------------------------- protocol choice


# ------------------------------------------------------------------------- option errors


@pytest.mark.parametrize("api_version", [None, "2024-10-01-preview"], ids=["ga", "preview"])
def test_option_type_errors_name_protocol_and_reason(api_version: str | None) -> None:
    from openai.types import realtime
    from openai.types.beta.realtime import session as beta_session

    wrong = (
        {"turn_detection": beta_session.TurnDetection(type="server_vad")}
        if api_version is None
        else {
            "turn_detection": realtime.realtime_audio_input_turn_detection.ServerVad(
                type="server_vad"
            )
        }
    )
    with pytest.raises(ValueError) as info:
        openai.realtime.RealtimeModel.with_azure(
            azure_deployment="d",
            azure_endpoint="http://127.0.0.1:9",
            api_key="k",
            api_version=api_version,
            **wrong,
        )
    msg = str(info.value)
    assert ("GA" if api_version is None else "preview") in msg and "api_version" in msg, msg
