"""A strict fake Azure OpenAI Realtime server speaking the preview and the GA protocol.

Layout: ``conversation.py`` (the ordered items and Azure's item rules, shared), ``server.py``
(the protocol-neutral engine: connections, scripted replies, audio turns, rejections, drops),
``protocol.py`` (ids, error payloads, schema checks, the layer interface), ``preview.py`` and
``ga.py`` (event names and shapes in and out, validated against ``openai.types.beta.realtime``
resp. ``openai.types.realtime``), ``script.py`` (planned replies), ``client.py`` (the model
under test aimed at a server).

Fixture API (stable; ``tests/conftest.py``):

- ``fake_azure``: a started server, parametrized over ``PROTOCOLS`` (ids ``preview``/``ga``;
  ``FORK_PROTOCOLS=preview`` or ``=ga`` restricts). ``fake_azure_factory(**options)`` makes
  more servers of the same protocol. ``protocol`` is the test's protocol name.
- ``FakeAzureRealtimeServer(protocol="preview"|"ga", legacy_event_names=False, ...)``;
  ``server.protocol``, ``server.wire`` (the layer), ``server.endpoint``, ``server.ws_url(...)``
  (preview: ``api_version=``, ``deployment=``; GA: ``model=``), ``server.conversation`` (items
  in the protocol's server shape), ``server.script(...)``, ``user_audio_turn(...)``,
  ``reject_next(...)``, ``drop_connections()``, ``stop_reading()``, ``wait_*``.
- ``make_model(server, **kw)``: ``RealtimeModel.with_azure(...)`` for the server's protocol
  (``api_version`` only for preview; for GA a fallback while the plugin lacks the GA route).
- ``session_options(protocol, ...)``: the model options (transcription, turn detection, noise
  reduction) as the right openai types for the protocol.
- ``wire_names(protocol)``: the protocol's event names and assistant content types, for
  assertions (``names.item_created``, ``names.assistant_text``...).
- ``ga_route_available()``: whether the installed plugin's ``with_azure`` has the GA route.
"""

from .client import ga_route_available, make_model, selected_protocols, session_options
from .conversation import Conversation
from .ga import GaProtocol
from .names import WireNames, wire_names
from .preview import CLIENT_EVENT_MODELS, SERVER_EVENT_MODELS, PreviewProtocol
from .protocol import ErrorSpec, WireProtocol
from .script import AudioReply, FunctionCallReply, Reply, TextReply
from .server import (
    DEFAULT_API_KEY,
    DEFAULT_API_VERSION,
    DEFAULT_DEPLOYMENT,
    PROTOCOLS,
    ErrorRecord,
    FakeAzureRealtimeServer,
    ReceivedEvent,
    Rejection,
    SentEvent,
)


def validate_server_event(event: dict[str, object]) -> object:
    """Strictly validate a preview server event (kept for callers of the preview-only fake)."""
    return PreviewProtocol().validate_server_event(dict(event))


__all__ = [
    "CLIENT_EVENT_MODELS",
    "DEFAULT_API_KEY",
    "DEFAULT_API_VERSION",
    "DEFAULT_DEPLOYMENT",
    "PROTOCOLS",
    "SERVER_EVENT_MODELS",
    "AudioReply",
    "Conversation",
    "ErrorRecord",
    "ErrorSpec",
    "FakeAzureRealtimeServer",
    "FunctionCallReply",
    "GaProtocol",
    "PreviewProtocol",
    "ReceivedEvent",
    "Rejection",
    "Reply",
    "SentEvent",
    "TextReply",
    "WireNames",
    "WireProtocol",
    "ga_route_available",
    "make_model",
    "selected_protocols",
    "session_options",
    "validate_server_event",
    "wire_names",
]
