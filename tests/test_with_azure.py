"""``RealtimeModel.with_azure``: which protocol it picks, where it connects, which options it takes.

Without ``api_version`` (argument or ``OPENAI_API_VERSION``) the call builds the GA
``RealtimeModel`` on ``/openai/v1/realtime?model=<deployment>``; with one, the preview
``RealtimeModelBeta`` exactly as 1.4.6 does. The upgrade request is recorded by a tiny aiohttp
handler on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sync_helpers import FORK_BEFORE

GA_FAILS_ON = ("1.4.6", "1.4.3", FORK_BEFORE)
# the fork before the Azure patches were split and reviewed (fc21a85): a gateway prefix lost the
# realtime path, a model built directly read neither AZURE_OPENAI_API_KEY nor a normalised
# AZURE_OPENAI_ENDPOINT
AZURE_SPLIT = "1.4.6.post8"


@dataclass
class Upgrade:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Recorder:
    endpoint: str
    upgrades: list[Upgrade] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder(endpoint="")

    async def _handler(request: web.Request) -> web.StreamResponse:
        rec.upgrades.append(Upgrade(request.path, dict(request.query), dict(request.headers)))
        rec.event.set()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", _handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    rec.endpoint = f"http://127.0.0.1:{server.port}"
    try:
        yield rec
    finally:
        await server.close()


@pytest.fixture(autouse=True)
def _no_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_VERSION", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


async def _upgrade(rec: Recorder, path: str = "", **kwargs: Any) -> tuple[Any, Upgrade]:
    from livekit.plugins import openai

    async with aiohttp.ClientSession() as http:
        model = openai.realtime.RealtimeModel.with_azure(
            azure_deployment="my-realtime",
            azure_endpoint=rec.endpoint + path,
            http_session=http,
            **kwargs,
        )
        sess = model.session()
        try:
            await asyncio.wait_for(rec.event.wait(), 5)
        finally:
            await sess.aclose()
    return model, rec.upgrades[0]


@pytest.mark.regression(fails_on=GA_FAILS_ON)
async def test_without_api_version_is_ga(recorder: Recorder) -> None:
    from livekit.plugins.openai.realtime import RealtimeModel, RealtimeModelBeta

    model, up = await _upgrade(recorder, api_key="k")
    assert isinstance(model, RealtimeModel) and not isinstance(model, RealtimeModelBeta)
    assert up.path == "/openai/v1/realtime"
    assert up.query == {"model": "my-realtime"}
    assert up.headers.get("api-key") == "k"
    assert "OpenAI-Beta" not in up.headers
    assert "Authorization" not in up.headers


@pytest.mark.regression(fails_on=GA_FAILS_ON)
async def test_ga_with_entra_token(recorder: Recorder) -> None:
    _, up = await _upgrade(recorder, entra_token="tok")
    assert up.path == "/openai/v1/realtime"
    assert up.query == {"model": "my-realtime"}
    assert up.headers.get("Authorization") == "Bearer tok"
    assert "api-key" not in up.headers
    assert "OpenAI-Beta" not in up.headers


async def test_with_api_version_is_beta(recorder: Recorder) -> None:
    from livekit.plugins.openai.realtime import RealtimeModelBeta

    model, up = await _upgrade(recorder, api_key="k", api_version="2024-10-01-preview")
    assert isinstance(model, RealtimeModelBeta)
    assert up.path == "/openai/realtime"
    assert up.query == {"api-version": "2024-10-01-preview", "deployment": "my-realtime"}
    assert up.headers.get("api-key") == "k"


@pytest.mark.regression(fails_on=("1.4.6", AZURE_SPLIT))
async def test_beta_under_a_gateway_prefix_connects_to_the_realtime_path_under_it(
    recorder: Recorder,
) -> None:
    _, up = await _upgrade(recorder, "/gateway", api_key="k", api_version="2024-10-01-preview")
    assert up.path == "/gateway/openai/realtime"


@pytest.mark.regression(fails_on=(*GA_FAILS_ON, AZURE_SPLIT))
async def test_ga_under_a_gateway_prefix_connects_to_the_realtime_path_under_it(
    recorder: Recorder,
) -> None:
    _, up = await _upgrade(recorder, "/gateway/openai/v1", api_key="k")
    assert up.path == "/gateway/openai/v1/realtime"


async def _direct_upgrade(rec: Recorder, cls_name: str, **kwargs: Any) -> Upgrade:
    """The upgrade of a model built by its constructor (not ``with_azure``)."""
    from livekit.plugins.openai import realtime

    async with aiohttp.ClientSession() as http:
        model = getattr(realtime, cls_name)(
            azure_deployment="my-realtime", http_session=http, **kwargs
        )
        sess = model.session()
        try:
            await asyncio.wait_for(rec.event.wait(), 5)
        finally:
            await sess.aclose()
    return rec.upgrades[0]


@pytest.mark.regression(fails_on=("1.4.6", AZURE_SPLIT))
@pytest.mark.parametrize("cls_name", ["RealtimeModelBeta", "RealtimeModel"])
async def test_azure_model_sends_azure_openai_api_key_not_openai_api_key(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, cls_name: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key")
    up = await _direct_upgrade(
        recorder, cls_name, base_url=f"{recorder.endpoint}/openai", api_version="2024-10-01-preview"
    )
    assert up.headers.get("api-key") == "azure-key"
    assert "Authorization" not in up.headers


@pytest.mark.regression(fails_on=("1.4.6", AZURE_SPLIT))
@pytest.mark.parametrize("cls_name", ["RealtimeModelBeta", "RealtimeModel"])
async def test_azure_openai_endpoint_with_its_api_path_is_the_same_endpoint(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, cls_name: str
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", f"{recorder.endpoint}/openai")
    up = await _direct_upgrade(recorder, cls_name, api_key="k", api_version="2024-10-01-preview")
    assert up.path == "/openai/realtime"


@pytest.mark.regression(fails_on=("1.4.6", AZURE_SPLIT))
@pytest.mark.parametrize("cls_name", ["RealtimeModelBeta", "RealtimeModel"])
async def test_azure_base_url_under_a_gateway_prefix_gets_the_realtime_path(
    recorder: Recorder, cls_name: str
) -> None:
    up = await _direct_upgrade(
        recorder,
        cls_name,
        base_url=f"{recorder.endpoint}/gateway/openai",
        api_key="k",
        api_version="2024-10-01-preview",
    )
    assert up.path == "/gateway/openai/realtime"


async def test_api_version_from_env_is_beta(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livekit.plugins.openai.realtime import RealtimeModelBeta

    monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")
    model, up = await _upgrade(recorder, api_key="k")
    assert isinstance(model, RealtimeModelBeta)
    assert up.query["api-version"] == "2025-04-01-preview"


@pytest.mark.regression(fails_on=GA_FAILS_ON)
def test_ga_defaults_and_option_types() -> None:
    from openai.types import realtime

    from livekit.plugins import openai

    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment="d", azure_endpoint="https://x.openai.azure.com", api_key="k"
    )
    opts = model._opts
    assert isinstance(opts.input_audio_transcription, realtime.AudioTranscription)
    assert opts.input_audio_transcription.model == "whisper-1"
    vad = realtime.realtime_audio_input_turn_detection.ServerVad
    assert isinstance(opts.turn_detection, vad)
    assert (opts.turn_detection.threshold, opts.turn_detection.silence_duration_ms) == (0.5, 200)
    assert opts.input_audio_noise_reduction is None

    semantic = realtime.realtime_audio_input_turn_detection.SemanticVad(
        type="semantic_vad", eagerness="auto"
    )
    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment="d",
        azure_endpoint="https://x.openai.azure.com",
        api_key="k",
        input_audio_transcription=realtime.AudioTranscription(model="gpt-4o-transcribe"),
        turn_detection=semantic,
        input_audio_noise_reduction="near_field",
    )
    opts = model._opts
    assert opts.input_audio_transcription is not None
    assert opts.input_audio_transcription.model == "gpt-4o-transcribe"
    assert opts.turn_detection == semantic
    assert opts.input_audio_noise_reduction is not None
    assert opts.input_audio_noise_reduction.type == "near_field"

    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment="d",
        azure_endpoint="https://x.openai.azure.com",
        api_key="k",
        input_audio_transcription=None,
        turn_detection=None,
    )
    assert model._opts.input_audio_transcription is None
    assert model._opts.turn_detection is None


def _beta_options() -> dict[str, Any]:
    from openai.types.beta.realtime.session import (
        InputAudioNoiseReduction,
        InputAudioTranscription,
        TurnDetection,
    )

    return {
        "input_audio_transcription": InputAudioTranscription(model="whisper-1"),
        "turn_detection": TurnDetection(type="server_vad"),
        "input_audio_noise_reduction": InputAudioNoiseReduction(type="near_field"),
    }


def _ga_options() -> dict[str, Any]:
    from openai.types import realtime
    from openai.types.realtime.realtime_audio_config_input import NoiseReduction

    return {
        "input_audio_transcription": realtime.AudioTranscription(model="whisper-1"),
        "turn_detection": realtime.realtime_audio_input_turn_detection.ServerVad(type="server_vad"),
        "input_audio_noise_reduction": NoiseReduction(type="near_field"),
    }


@pytest.mark.regression(fails_on=GA_FAILS_ON)
@pytest.mark.parametrize(
    "option", ["input_audio_transcription", "turn_detection", "input_audio_noise_reduction"]
)
def test_ga_rejects_beta_option_types(option: str) -> None:
    from livekit.plugins import openai

    with pytest.raises(ValueError) as e:
        openai.realtime.RealtimeModel.with_azure(
            azure_deployment="d",
            azure_endpoint="https://x.openai.azure.com",
            api_key="k",
            **{option: _beta_options()[option]},
        )
    message = str(e.value)
    assert "GA realtime protocol" in message
    assert "no api_version was given" in message
    assert option in message
    assert "openai.types.realtime" in message


@pytest.mark.regression(fails_on=GA_FAILS_ON)
@pytest.mark.parametrize(
    "option", ["input_audio_transcription", "turn_detection", "input_audio_noise_reduction"]
)
def test_beta_rejects_ga_option_types(option: str) -> None:
    from livekit.plugins import openai

    with pytest.raises(ValueError) as e:
        openai.realtime.RealtimeModel.with_azure(
            azure_deployment="d",
            azure_endpoint="https://x.openai.azure.com",
            api_key="k",
            api_version="2024-10-01-preview",
            **{option: _ga_options()[option]},
        )
    message = str(e.value)
    assert "preview (beta) realtime protocol" in message
    assert "api_version `2024-10-01-preview` was given" in message
    assert option in message
    assert "openai.types.beta.realtime.session" in message


def test_beta_takes_beta_option_types() -> None:
    from livekit.plugins import openai
    from livekit.plugins.openai.realtime import RealtimeModelBeta

    model = openai.realtime.RealtimeModel.with_azure(
        azure_deployment="d",
        azure_endpoint="https://x.openai.azure.com",
        api_key="k",
        api_version="2024-10-01-preview",
        **_beta_options(),
    )
    assert isinstance(model, RealtimeModelBeta)


def test_missing_credentials_and_endpoint() -> None:
    from livekit.plugins import openai

    with pytest.raises(ValueError, match="Missing credentials"):
        openai.realtime.RealtimeModel.with_azure(
            azure_deployment="d", azure_endpoint="https://x.openai.azure.com"
        )
    with pytest.raises(ValueError, match="Missing Azure endpoint"):
        openai.realtime.RealtimeModel.with_azure(azure_deployment="d", api_key="k")
