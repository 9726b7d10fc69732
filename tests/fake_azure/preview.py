"""The preview ("beta") protocol layer: ``/openai/realtime?api-version=...&deployment=...``.

Event names and shapes are those of ``openai.types.beta.realtime``. The stored item shape is
this protocol's server shape, so items pass through unchanged; the neutral item stages map onto
the single ``conversation.item.created``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pydantic
from openai.types.beta.realtime import (
    ConversationCreatedEvent,
    ConversationItemCreatedEvent,
    ConversationItemCreateEvent,
    ConversationItemDeletedEvent,
    ConversationItemDeleteEvent,
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
    ConversationItemInputAudioTranscriptionFailedEvent,
    ConversationItemRetrieveEvent,
    ConversationItemTruncatedEvent,
    ConversationItemTruncateEvent,
    ErrorEvent,
    InputAudioBufferAppendEvent,
    InputAudioBufferClearedEvent,
    InputAudioBufferClearEvent,
    InputAudioBufferCommitEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    InputAudioBufferSpeechStoppedEvent,
    RateLimitsUpdatedEvent,
    ResponseAudioDeltaEvent,
    ResponseAudioDoneEvent,
    ResponseAudioTranscriptDeltaEvent,
    ResponseAudioTranscriptDoneEvent,
    ResponseCancelEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseCreateEvent,
    ResponseDoneEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
    SessionUpdateEvent,
)
from openai.types.beta.realtime.realtime_server_event import ConversationItemRetrieved

from . import protocol as p
from .conversation import JsonDict, copy_item

DEFAULT_API_VERSION = "2024-10-01-preview"
SESSION_MODEL = "gpt-4o-realtime-preview-2024-10-01"

# bytes of input audio per millisecond, per `input_audio_format`
_BYTES_PER_MS = {"pcm16": 48, "g711_ulaw": 8, "g711_alaw": 8}

# Client events of the preview protocol. `output_audio_buffer.clear` (WebRTC only) and
# `transcription_session.update` (transcription-only sessions) are not accepted on a
# conversation websocket: treating them as unknown is a guess about Azure.
CLIENT_EVENT_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "session.update": SessionUpdateEvent,
    "input_audio_buffer.append": InputAudioBufferAppendEvent,
    "input_audio_buffer.commit": InputAudioBufferCommitEvent,
    "input_audio_buffer.clear": InputAudioBufferClearEvent,
    "conversation.item.create": ConversationItemCreateEvent,
    "conversation.item.delete": ConversationItemDeleteEvent,
    "conversation.item.truncate": ConversationItemTruncateEvent,
    "conversation.item.retrieve": ConversationItemRetrieveEvent,
    "response.create": ResponseCreateEvent,
    "response.cancel": ResponseCancelEvent,
}

SERVER_EVENT_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "conversation.created": ConversationCreatedEvent,
    "conversation.item.created": ConversationItemCreatedEvent,
    "conversation.item.deleted": ConversationItemDeletedEvent,
    "conversation.item.input_audio_transcription.completed": (
        ConversationItemInputAudioTranscriptionCompletedEvent
    ),
    "conversation.item.input_audio_transcription.delta": (
        ConversationItemInputAudioTranscriptionDeltaEvent
    ),
    "conversation.item.input_audio_transcription.failed": (
        ConversationItemInputAudioTranscriptionFailedEvent
    ),
    "conversation.item.retrieved": ConversationItemRetrieved,
    "conversation.item.truncated": ConversationItemTruncatedEvent,
    "error": ErrorEvent,
    "input_audio_buffer.cleared": InputAudioBufferClearedEvent,
    "input_audio_buffer.committed": InputAudioBufferCommittedEvent,
    "input_audio_buffer.speech_started": InputAudioBufferSpeechStartedEvent,
    "input_audio_buffer.speech_stopped": InputAudioBufferSpeechStoppedEvent,
    "rate_limits.updated": RateLimitsUpdatedEvent,
    "response.audio.delta": ResponseAudioDeltaEvent,
    "response.audio.done": ResponseAudioDoneEvent,
    "response.audio_transcript.delta": ResponseAudioTranscriptDeltaEvent,
    "response.audio_transcript.done": ResponseAudioTranscriptDoneEvent,
    "response.content_part.added": ResponseContentPartAddedEvent,
    "response.content_part.done": ResponseContentPartDoneEvent,
    "response.created": ResponseCreatedEvent,
    "response.done": ResponseDoneEvent,
    "response.function_call_arguments.delta": ResponseFunctionCallArgumentsDeltaEvent,
    "response.function_call_arguments.done": ResponseFunctionCallArgumentsDoneEvent,
    "response.output_item.added": ResponseOutputItemAddedEvent,
    "response.output_item.done": ResponseOutputItemDoneEvent,
    "response.text.delta": ResponseTextDeltaEvent,
    "response.text.done": ResponseTextDoneEvent,
    "session.created": SessionCreatedEvent,
    "session.updated": SessionUpdatedEvent,
}


class PreviewProtocol(p.WireProtocol):
    """Azure's preview realtime protocol (``openai.types.beta.realtime``)."""

    name = "preview"
    path = "/openai/realtime"
    client_models = CLIENT_EVENT_MODELS
    server_models = SERVER_EVENT_MODELS
    # OpenAI's documented rules; Azure is assumed to apply the same ones
    allowed_content = {
        "system": ["input_text"],
        "user": ["input_text", "input_audio"],
        "assistant": ["text"],
    }
    to_neutral = {"input_text": "input_text", "input_audio": "input_audio", "text": "text"}

    def handshake_error(
        self, query: dict[str, str], headers: Any, deployment: str
    ) -> p.HttpError | None:
        if not query.get("api-version"):
            # Guess: Azure answers 404 "Resource not found" for an absent api-version
            return p.HttpError(404, "404", "Resource not found")
        requested = query.get("deployment")
        if not requested:
            # Guess: 400 for a realtime request that names no deployment
            return p.HttpError(400, "BadRequest", "Missing required query parameter: 'deployment'.")
        if requested != deployment:
            return p.HttpError(404, "DeploymentNotFound", p.DEPLOYMENT_NOT_FOUND)
        return None

    def ws_url(
        self,
        base: str,
        deployment: str,
        /,
        *,
        api_version: str | None = DEFAULT_API_VERSION,
        **query: str | None,
    ) -> str:
        params: dict[str, str] = {}
        if api_version is not None:
            params["api-version"] = api_version
        dep = query.pop("deployment", deployment)
        if dep:
            params["deployment"] = dep
        params.update({k: v for k, v in query.items() if v is not None})
        return f"{base}{self.path}?{urlencode(params)}"

    def default_session(self) -> JsonDict:
        # Guess: the defaults Azure reports in `session.created` for a preview deployment
        # (OpenAI's documented defaults; the real instructions are a long default prompt).
        return {
            "id": p.new_session_id(),
            "model": SESSION_MODEL,
            "modalities": ["text", "audio"],
            "instructions": "You are a helpful assistant (fake Azure default instructions).",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
                "create_response": True,
                "interrupt_response": True,
            },
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
        }

    def apply_session_update(
        self, session: JsonDict, ev: JsonDict, reject_unknown: bool
    ) -> p.ErrorSpec | None:
        update = ev.get("session")
        if isinstance(update, dict):
            # Guess: Azure picks the model from the deployment and ignores `session.model`;
            # `client_secret` only concerns ephemeral-token sessions (not on this route).
            ev = {**ev, "session": {k: v for k, v in update.items() if k != "model"}}
        spec = p.schema_error(
            CLIENT_EVENT_MODELS["session.update"], ev, reject_unknown=reject_unknown
        )
        if spec:
            return spec
        for key, value in ev["session"].items():
            if key == "client_secret":
                continue
            # Guess: objects (turn_detection, input_audio_transcription...) are replaced as a
            # whole, `null` turns a feature off.
            session[key] = value
        return None

    def check_event(self, ev: JsonDict, reject_unknown: bool) -> p.ErrorSpec | None:
        return p.schema_error(self.client_models[ev["type"]], ev, reject_unknown=reject_unknown)

    def turn_detection(self, session: JsonDict) -> JsonDict | None:
        td: JsonDict | None = session.get("turn_detection")
        return td

    def transcription_on(self, session: JsonDict) -> bool:
        return bool(session.get("input_audio_transcription"))

    def output_modalities(self, session: JsonDict) -> list[str]:
        return list(session.get("modalities") or ["text"])

    def bytes_per_ms(self, session: JsonDict) -> int:
        return _BYTES_PER_MS.get(session.get("input_audio_format") or "pcm16", 48)

    def response_params(self, params: JsonDict) -> tuple[list[str] | None, bool]:
        # Guess: `conversation: "none"` (out-of-band) responses are not stored
        return params.get("modalities"), params.get("conversation") == "none"

    def render_item(self, item: JsonDict) -> JsonDict:
        return copy_item(item)

    def translate(self, event_type: str, fields: JsonDict) -> list[tuple[str, JsonDict]]:
        if event_type == "conversation.item.added":
            return [("conversation.item.created", fields)]
        if event_type == "conversation.item.done":
            return []  # the preview protocol has no such stage
        if event_type == "response.function_call_arguments.done":
            fields = {k: v for k, v in fields.items() if k != "name"}
        return [(event_type, fields)]
