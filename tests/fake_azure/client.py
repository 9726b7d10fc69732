"""Builds the code under test (the livekit realtime model) pointed at a fake server."""

from __future__ import annotations

import functools
import os
from typing import Any

from .server import DEFAULT_API_VERSION, PROTOCOLS, FakeAzureRealtimeServer


@functools.cache
def ga_route_available() -> bool:
    """Whether ``RealtimeModel.with_azure`` without ``api_version`` gives the GA route.

    1.4.6 raises ``ValueError`` then (it requires an api-version); issue 10's plugin patch makes
    it return the GA ``RealtimeModel`` on ``/openai/v1/realtime``. ``OPENAI_API_VERSION`` is
    hidden during the probe, since ``with_azure`` falls back to it.
    """
    from livekit.plugins import openai

    saved = os.environ.pop("OPENAI_API_VERSION", None)
    try:
        openai.realtime.RealtimeModel.with_azure(
            azure_deployment="probe", azure_endpoint="http://127.0.0.1:9", api_key="probe"
        )
    except ValueError:
        return False
    finally:
        if saved is not None:
            os.environ["OPENAI_API_VERSION"] = saved
    return True


def make_model(server: FakeAzureRealtimeServer, **kwargs: Any) -> Any:
    """``openai.realtime.RealtimeModel.with_azure(...)`` aimed at ``server``, for its protocol.

    Returns a ``RealtimeModelBeta`` (preview) or the GA ``RealtimeModel`` (GA), typed ``Any``
    so that tests call either session's methods.

    Preview: ``api_version`` defaults to :data:`DEFAULT_API_VERSION` and the model is a
    ``RealtimeModelBeta``. GA: no ``api_version``; while the installed plugin lacks the GA route
    (see :func:`ga_route_available`), the GA ``RealtimeModel`` is built directly with
    ``base_url=<endpoint>/openai/v1/realtime`` (1.4.6's ``process_base_url`` appends
    ``/realtime`` only to ``""``, ``/v1`` and ``/openai``) and ``model=<deployment>``: it then
    connects to ``/openai/v1/realtime?model=<deployment>`` with ``Authorization: Bearer <key>``,
    which the fake accepts as an Entra token.

    livekit is imported lazily so the fake itself works without it. ``with_azure`` in 1.4.x takes
    no ``conn_options`` / ``max_session_duration``; when given here they are set on the model's
    options afterwards (private attribute, stable across 1.4.x).

    Args:
        server: a started fake server.
        **kwargs: forwarded to ``with_azure`` (``azure_deployment`` and ``api_key`` default to
            the server's).
    """
    from livekit.plugins import openai
    from livekit.plugins.openai.realtime.realtime_model_beta import RealtimeModelBeta

    conn_options = kwargs.pop("conn_options", None)
    max_session_duration = kwargs.pop("max_session_duration", None)
    kwargs.setdefault("azure_deployment", server.deployment)
    kwargs.setdefault("api_key", server.api_key)
    model: Any
    if server.protocol == "preview":
        kwargs.setdefault("api_version", DEFAULT_API_VERSION)
        model = openai.realtime.RealtimeModel.with_azure(azure_endpoint=server.endpoint, **kwargs)
        assert isinstance(model, RealtimeModelBeta)
    elif ga_route_available():
        model = openai.realtime.RealtimeModel.with_azure(azure_endpoint=server.endpoint, **kwargs)
        assert not isinstance(model, RealtimeModelBeta)
    else:
        # 1.4.6 has no Azure GA route: the plain GA model on Azure's v1 path (see above)
        deployment = kwargs.pop("azure_deployment")
        model = openai.realtime.RealtimeModel(
            base_url=f"{server.endpoint}/openai/v1/realtime", model=deployment, **kwargs
        )
    if conn_options is not None:
        model._opts.conn_options = conn_options
    if max_session_duration is not None:
        model._opts.max_session_duration = max_session_duration
    return model


def session_options(
    protocol: str,
    *,
    transcription: bool | str = True,
    language: str | None = "en",
    turn_detection: str | None = "server_vad",
    create_response: bool = False,
    noise_reduction: str | None = None,
) -> dict[str, Any]:
    """``make_model`` options as the openai types of ``protocol``.

    Preview: ``openai.types.beta.realtime.session`` ``InputAudioTranscription``,
    ``TurnDetection`` and ``InputAudioNoiseReduction``. GA: ``openai.types.realtime``
    ``AudioTranscription``, ``realtime_audio_input_turn_detection.ServerVad`` / ``SemanticVad``
    and the noise reduction type name.

    Args:
        protocol: ``"preview"`` or ``"ga"``.
        transcription: ``True`` for ``whisper-1``, a model (Azure: deployment) name, or
            ``False`` to leave the option out.
        language: transcription language.
        turn_detection: ``"server_vad"``, ``"semantic_vad"`` or ``None`` to leave it out.
        create_response: turn detection's ``create_response``.
        noise_reduction: ``"near_field"`` / ``"far_field"`` or ``None`` to leave it out.
    """
    out: dict[str, Any] = {}
    model = "whisper-1" if transcription is True else transcription
    if protocol == "preview":
        from openai.types.beta.realtime import session as beta_session

        if model:
            out["input_audio_transcription"] = beta_session.InputAudioTranscription(
                model=str(model), language=language
            )
        if turn_detection:
            out["turn_detection"] = beta_session.TurnDetection(
                type=turn_detection,
                create_response=create_response,
            )
        if noise_reduction:
            out["input_audio_noise_reduction"] = beta_session.InputAudioNoiseReduction(
                type=noise_reduction
            )
        return out
    from openai.types import realtime
    from openai.types.realtime import realtime_audio_input_turn_detection as td

    if model:
        out["input_audio_transcription"] = realtime.AudioTranscription(
            model=str(model), language=language
        )
    if turn_detection == "server_vad":
        out["turn_detection"] = td.ServerVad(type="server_vad", create_response=create_response)
    elif turn_detection == "semantic_vad":
        out["turn_detection"] = td.SemanticVad(type="semantic_vad", create_response=create_response)
    if noise_reduction:
        out["input_audio_noise_reduction"] = noise_reduction
    return out


def selected_protocols() -> list[str]:
    """The protocols of this run: ``FORK_PROTOCOLS`` (comma list), default all."""
    raw = os.environ.get("FORK_PROTOCOLS", "").strip()
    if not raw:
        return list(PROTOCOLS)
    chosen = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"FORK_PROTOCOLS: unknown protocol(s) {unknown}, use {PROTOCOLS}")
    return chosen
