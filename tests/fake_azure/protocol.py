"""Wire-level helpers of the fake server: ids, error payloads and schema checks.

Shapes come from the typed models of ``openai.types.beta.realtime`` (the preview/"beta" protocol
that Azure's ``/openai/realtime?api-version=2024-10-01-preview`` endpoint speaks).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, NamedTuple

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

JsonDict = dict[str, Any]

MAX_ITEM_ID_LENGTH = 32

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


class ErrorSpec(NamedTuple):
    """The ``error`` object of an error event, minus the echoed client ``event_id``."""

    code: str | None
    message: str
    param: str | None = None
    type: str = "invalid_request_error"


# --- ids ------------------------------------------------------------------------------------

_event_counter = itertools.count(1)


def new_event_id() -> str:
    """Server event id (real ones are ``event_`` + 21 random characters; a counter here)."""
    return f"event_{next(_event_counter):021d}"


def _rand(n: int) -> str:
    return uuid.uuid4().hex[:n]


def new_item_id() -> str:
    """Server-generated item id, same length as the real ones (``item_`` + 21 characters)."""
    return "item_" + _rand(21)


def new_response_id() -> str:
    return "resp_" + _rand(21)


def new_call_id() -> str:
    return "call_" + _rand(16)


def new_session_id() -> str:
    return "sess_" + _rand(21)


# --- error messages (OpenAI's wording where known; see each call site for guesses) ------------


def missing_param(param: str) -> ErrorSpec:
    return ErrorSpec("missing_required_parameter", f"Missing required parameter: '{param}'.", param)


def unknown_param(param: str) -> ErrorSpec:
    return ErrorSpec("unknown_parameter", f"Unknown parameter: '{param}'.", param)


def invalid_value(param: str, value: object, supported: list[str] | None = None) -> ErrorSpec:
    msg = f"Invalid value: '{value}'."
    if supported:
        quoted = [f"'{s}'" for s in supported]
        if len(quoted) == 1:
            msg += f" Supported values are: {quoted[0]}."
        else:
            msg += f" Supported values are: {', '.join(quoted[:-1])} and {quoted[-1]}."
    return ErrorSpec("invalid_value", msg, param)


def invalid_type(param: str, detail: str) -> ErrorSpec:
    # inferred wording; OpenAI says e.g. "Invalid type for 'x': expected a string, but got ..."
    return ErrorSpec("invalid_type", f"Invalid type for '{param}': {detail}.", param)


def string_too_long(param: str, length: int, max_length: int) -> ErrorSpec:
    # `string_above_max_length` is inferred (OpenAI's JSON-schema error family)
    return ErrorSpec(
        "string_above_max_length",
        f"Invalid '{param}': string too long. Expected a string with maximum length "
        f"{max_length}, but got a string with length {length} instead.",
        param,
    )


def empty_array(param: str) -> ErrorSpec:
    return ErrorSpec(
        "empty_array",
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead.",
        param,
    )


# --- schema checks --------------------------------------------------------------------------

_UNION_TAGS = {"int", "str", "float", "bool", "none", "dict", "list"}


def _loc_to_param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # pydantic adds union-member tags (`int`, `literal['inf']`...) to locations
        if part in _UNION_TAGS or "[" in part or "-" in part:
            continue
        out = f"{out}.{part}" if out else part
    return out


def _first_extra(model: pydantic.BaseModel, prefix: str) -> str | None:
    if model.model_extra:
        key = next(iter(model.model_extra))
        return f"{prefix}.{key}" if prefix else key
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, pydantic.BaseModel):
            if found := _first_extra(value, path):
                return found
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                if isinstance(sub, pydantic.BaseModel) and (
                    found := _first_extra(sub, f"{path}[{i}]")
                ):
                    return found
    return None


def schema_error(
    model_cls: type[pydantic.BaseModel], data: JsonDict, *, reject_unknown: bool = True
) -> ErrorSpec | None:
    """Check ``data`` against a typed client-event model.

    The openai models accept unknown fields, so they are looked for separately. Mapping pydantic
    errors onto ``missing_required_parameter`` / ``invalid_value`` / ``invalid_type`` /
    ``unknown_parameter`` follows OpenAI's public error vocabulary; which one Azure picks for a
    given malformed field is a guess.
    """
    try:
        model = model_cls.model_validate(data)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        param = _loc_to_param(tuple(err["loc"]))
        if err["type"] == "missing":
            return missing_param(param)
        if err["type"] in ("literal_error", "enum"):
            return invalid_value(param, err.get("input"))
        return invalid_type(param, err["msg"].lower())
    if reject_unknown and (extra := _first_extra(model, "")):
        return unknown_param(extra)
    return None


def validate_server_event(event: JsonDict) -> pydantic.BaseModel:
    """Strictly validate a server event against ``openai.types.beta.realtime``.

    Besides ``model_validate`` this rejects unknown event types and fields the typed models do not
    declare (the openai models silently accept extras), so the fake cannot drift from the shapes.

    Raises:
        ValueError: if the event is unknown, malformed or carries undeclared fields.
    """
    model_cls = SERVER_EVENT_MODELS.get(event.get("type", ""))
    if model_cls is None:
        raise ValueError(f"unknown server event type: {event.get('type')!r}")
    model = model_cls.model_validate(event)
    if extra := _first_extra(model, ""):
        raise ValueError(f"{event['type']}: undeclared field {extra!r}")
    return model


def error_event(spec: ErrorSpec, client_event_id: str | None) -> JsonDict:
    return {
        "type": "error",
        "event_id": new_event_id(),
        "error": {
            "type": spec.type,
            "code": spec.code,
            "message": spec.message,
            "param": spec.param,
            "event_id": client_event_id,
        },
    }
