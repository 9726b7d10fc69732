"""Builds the code under test (the livekit realtime model) pointed at a fake server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .server import DEFAULT_API_VERSION, FakeAzureRealtimeServer

if TYPE_CHECKING:
    from livekit.plugins.openai.realtime.realtime_model_beta import RealtimeModelBeta


def make_model(server: FakeAzureRealtimeServer, **kwargs: Any) -> RealtimeModelBeta:
    """``openai.realtime.RealtimeModel.with_azure(...)`` aimed at ``server``.

    livekit is imported lazily so the fake itself works without it. ``with_azure`` in 1.4.x takes
    no ``conn_options`` / ``max_session_duration``; when given here they are set on the model's
    options afterwards (private attribute, stable across 1.4.x).

    Args:
        server: a started fake server.
        **kwargs: forwarded to ``with_azure`` (``azure_deployment``, ``api_key`` and
            ``api_version`` default to the server's).
    """
    from livekit.plugins import openai
    from livekit.plugins.openai.realtime.realtime_model_beta import RealtimeModelBeta

    conn_options = kwargs.pop("conn_options", None)
    max_session_duration = kwargs.pop("max_session_duration", None)
    kwargs.setdefault("azure_deployment", server.deployment)
    kwargs.setdefault("api_key", server.api_key)
    kwargs.setdefault("api_version", DEFAULT_API_VERSION)
    model = openai.realtime.RealtimeModel.with_azure(azure_endpoint=server.endpoint, **kwargs)
    assert isinstance(model, RealtimeModelBeta)
    if conn_options is not None:
        model._opts.conn_options = conn_options
    if max_session_duration is not None:
        model._opts.max_session_duration = max_session_duration
    return model
