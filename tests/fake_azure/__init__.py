"""A strict fake Azure OpenAI Realtime server (preview/"beta" protocol) for the tests."""

from .client import make_model
from .conversation import Conversation
from .protocol import (
    CLIENT_EVENT_MODELS,
    SERVER_EVENT_MODELS,
    ErrorSpec,
    validate_server_event,
)
from .script import AudioReply, FunctionCallReply, Reply, TextReply
from .server import (
    DEFAULT_API_KEY,
    DEFAULT_API_VERSION,
    DEFAULT_DEPLOYMENT,
    ErrorRecord,
    FakeAzureRealtimeServer,
    ReceivedEvent,
    Rejection,
    SentEvent,
)

__all__ = [
    "CLIENT_EVENT_MODELS",
    "DEFAULT_API_KEY",
    "DEFAULT_API_VERSION",
    "DEFAULT_DEPLOYMENT",
    "SERVER_EVENT_MODELS",
    "AudioReply",
    "Conversation",
    "ErrorRecord",
    "ErrorSpec",
    "FakeAzureRealtimeServer",
    "FunctionCallReply",
    "ReceivedEvent",
    "Rejection",
    "Reply",
    "SentEvent",
    "TextReply",
    "make_model",
    "validate_server_event",
]
