"""The GA protocol layer: ``/openai/v1/realtime?model=<deployment>``, ``openai.types.realtime``.

What it enforces, as Azure's GA endpoint does (codes and statuses marked *guess* are not
documented): no ``api-version`` query (a 401 per the project's notes), no ``OpenAI-Beta``
header, ``session.update`` with ``session.type="realtime"``, no preview-only client shapes
(``session.modalities``, ``voice``, ``turn_detection`` at the top of the session, assistant
``text`` content...). Items use ``output_text`` / ``output_audio`` assistant content; created
items are announced as ``conversation.item.added`` then ``conversation.item.done``.

Guess: whether Azure's GA endpoint still sends old-style names (``conversation.item.created``,
``response.text.delta``, ``response.audio_transcript.delta``...). Upstream main normalizes them
for Azure, so a client should accept both: ``GaProtocol(legacy_event_names=True)`` sends them.
"""

from __future__ import annotations

import typing
from typing import Any
from urllib.parse import urlencode

import pydantic
from openai.types.realtime import (
    ConversationItemCreateEvent,
    RealtimeConversationItemAssistantMessage,
    RealtimeConversationItemFunctionCall,
    RealtimeConversationItemFunctionCallOutput,
    RealtimeConversationItemSystemMessage,
    RealtimeConversationItemUserMessage,
    RealtimeSessionCreateRequest,
)
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

from . import protocol as p
from .conversation import JsonDict, copy_item

SESSION_MODEL = "gpt-realtime"


def _by_type(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    """``type`` literal -> model, for every member of an openai event union."""
    if typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    out: dict[str, type[pydantic.BaseModel]] = {}
    for model in typing.get_args(union):
        (literal,) = typing.get_args(model.model_fields["type"].annotation)
        out[literal] = model
    return out


# `output_audio_buffer.clear` is WebRTC only: refused as an unknown event (guess about Azure)
CLIENT_EVENT_MODELS = {
    k: v for k, v in _by_type(RealtimeClientEvent).items() if k != "output_audio_buffer.clear"
}
SERVER_EVENT_MODELS = _by_type(RealtimeServerEvent)

_ITEM_MODELS: dict[tuple[str, str | None], type[pydantic.BaseModel]] = {
    ("message", "system"): RealtimeConversationItemSystemMessage,
    ("message", "user"): RealtimeConversationItemUserMessage,
    ("message", "assistant"): RealtimeConversationItemAssistantMessage,
    ("function_call", None): RealtimeConversationItemFunctionCall,
    ("function_call_output", None): RealtimeConversationItemFunctionCallOutput,
}

# Session fields of the preview protocol that the GA session does not have: always refused
# with `unknown_parameter`, whatever `reject_unknown_parameters` says (code is a guess).
PREVIEW_SESSION_FIELDS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "turn_detection",
        "temperature",
        "max_response_output_tokens",
        "speed",
    }
)
PREVIEW_RESPONSE_FIELDS = frozenset(
    {"modalities", "voice", "output_audio_format", "temperature", "max_response_output_tokens"}
)

# neutral (preview) stream event names -> GA names
_GA_NAMES = {
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
}
_LEGACY_TO_GA = _GA_NAMES

_ASSISTANT_WIRE = {"text": "output_text", "audio": "output_audio"}
_BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}


class GaProtocol(p.WireProtocol):
    """Azure's GA realtime protocol (``openai.types.realtime``).

    Args:
        legacy_event_names: send the old-style names (``conversation.item.created`` instead of
            ``conversation.item.added`` + ``conversation.item.done``, ``response.text.delta``,
            ``response.audio.delta``, ``response.audio_transcript.delta``...). Guess: unknown
            whether Azure's GA endpoint ever does; off by default.
    """

    name = "ga"
    path = "/openai/v1/realtime"
    client_models = CLIENT_EVENT_MODELS
    server_models = SERVER_EVENT_MODELS
    allowed_content = {
        "system": ["input_text"],
        # `input_image` (a data URL) is in OpenAI's GA user message schema; Azure's acceptance
        # of it is assumed from that schema
        "user": ["input_text", "input_audio", "input_image"],
        # Guess: like the preview, clients cannot create assistant audio
        "assistant": ["output_text"],
    }
    to_neutral = {
        "input_text": "input_text",
        "input_audio": "input_audio",
        "input_image": "input_image",
        "output_text": "text",
    }

    def __init__(self, *, legacy_event_names: bool = False) -> None:
        self.legacy_event_names = legacy_event_names

    # ------------------------------------------------------------------ handshake

    def handshake_error(
        self, query: dict[str, str], headers: Any, deployment: str
    ) -> p.HttpError | None:
        if "api-version" in query:
            # The project's notes: giving an api-version on the GA path is a 401. The code and
            # message are a guess.
            return p.HttpError(
                401,
                "401",
                "The v1 realtime API does not take an 'api-version' query parameter.",
            )
        if "OpenAI-Beta" in headers:
            # Guess: status, code and message (Azure's GA endpoint refuses the beta header)
            return p.HttpError(
                400, "BadRequest", "The 'OpenAI-Beta' header is not supported on the v1 API."
            )
        model = query.get("model")
        if not model:
            # Guess: 400 for a realtime request that names no model (deployment)
            return p.HttpError(400, "BadRequest", "Missing required query parameter: 'model'.")
        if model != deployment:
            return p.HttpError(404, "DeploymentNotFound", p.DEPLOYMENT_NOT_FOUND)
        return None

    def ws_url(self, base: str, deployment: str, /, **query: str | None) -> str:
        params: dict[str, str] = {}
        model = query.pop("model", deployment)
        if model:
            params["model"] = model
        params.update({k: v for k, v in query.items() if v is not None})
        return f"{base}{self.path}?{urlencode(params)}"

    # ------------------------------------------------------------------ session

    def default_session(self) -> JsonDict:
        # Guess: the defaults Azure reports in `session.created` (OpenAI's documented GA
        # defaults). No `id`/`object`: `RealtimeSessionCreateRequest` does not declare them.
        pcm = {"type": "audio/pcm", "rate": 24000}
        return {
            "type": "realtime",
            "model": SESSION_MODEL,
            "output_modalities": ["audio"],
            "instructions": "You are a helpful assistant (fake Azure default instructions).",
            "audio": {
                "input": {
                    "format": dict(pcm),
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
        }

    def apply_session_update(
        self, session: JsonDict, ev: JsonDict, reject_unknown: bool
    ) -> p.ErrorSpec | None:
        if extra := next((k for k in ev if k not in ("type", "event_id", "session")), None):
            if reject_unknown:
                return p.unknown_param(extra)
        update = ev.get("session")
        if update is None:
            return p.missing_param("session")
        if not isinstance(update, dict):
            return p.invalid_type("session", "expected an object")  # guess
        for key in update:
            if key in PREVIEW_SESSION_FIELDS:
                return p.unknown_param(f"session.{key}")
        # `session.type` is required on GA (the typed model says so); the code is a guess
        stype = update.get("type")
        if stype is None:
            return p.missing_param("session.type")
        if stype != "realtime":
            # Guess: a transcription session cannot be configured on a realtime connection
            return p.invalid_value("session.type", stype, ["realtime"])
        # Guess: Azure picks the model from the deployment and ignores `session.model`
        update = {k: v for k, v in update.items() if k != "model"}
        if spec := p.schema_error(
            RealtimeSessionCreateRequest, update, reject_unknown=reject_unknown, prefix="session"
        ):
            return spec
        for key, value in update.items():
            if (
                key == "audio"
                and isinstance(value, dict)
                and isinstance(session.get("audio"), dict)
            ):
                # Guess: `audio.input` / `audio.output` are merged field by field, each field
                # (turn_detection, transcription...) replaced as a whole; `null` turns it off.
                for direction, conf in value.items():
                    merged = dict(session["audio"].get(direction) or {})
                    merged.update(conf or {})
                    session["audio"][direction] = merged
            else:
                session[key] = value
        return None

    def _input(self, session: JsonDict) -> JsonDict:
        audio_in: JsonDict = (session.get("audio") or {}).get("input") or {}
        return audio_in

    def turn_detection(self, session: JsonDict) -> JsonDict | None:
        td: JsonDict | None = self._input(session).get("turn_detection")
        return td

    def transcription_on(self, session: JsonDict) -> bool:
        return bool(self._input(session).get("transcription"))

    def output_modalities(self, session: JsonDict) -> list[str]:
        return list(session.get("output_modalities") or ["audio"])

    def bytes_per_ms(self, session: JsonDict) -> int:
        fmt = self._input(session).get("format") or {}
        return _BYTES_PER_MS.get(fmt.get("type") or "audio/pcm", 48)

    # ------------------------------------------------------------------ client events

    def check_event(self, ev: JsonDict, reject_unknown: bool) -> p.ErrorSpec | None:
        etype = ev["type"]
        if etype == "conversation.item.create":
            return self._check_item_create(ev, reject_unknown)
        if etype == "response.create" and isinstance(response := ev.get("response"), dict):
            for key in response:
                if key in PREVIEW_RESPONSE_FIELDS:
                    return p.unknown_param(f"response.{key}")
        return p.schema_error(self.client_models[etype], ev, reject_unknown=reject_unknown)

    def _check_item_create(self, ev: JsonDict, reject_unknown: bool) -> p.ErrorSpec | None:
        # The union of item models makes pydantic's errors unreadable: the item is checked
        # against the one model its type and role select, the rest of the event separately.
        item: JsonDict = ev["item"]
        rest = {k: v for k, v in ev.items() if k != "item"}
        known = ConversationItemCreateEvent.model_fields
        if reject_unknown and (extra := next((k for k in rest if k not in known), None)):
            return p.unknown_param(extra)
        prev = ev.get("previous_item_id")
        if prev is not None and not isinstance(prev, str):
            return p.invalid_type("previous_item_id", "expected a string")  # guess
        itype, role = item["type"], item.get("role")
        if itype == "message":
            if role is None:
                return p.missing_param("item.role")  # guess
            model = _ITEM_MODELS.get((itype, role))
            if model is None:
                return p.invalid_value("item.role", role, ["system", "user", "assistant"])
        else:
            model = _ITEM_MODELS.get((itype, None))
            if model is None:
                # Guess: MCP items exist in the schema but cannot be created by a client here
                return p.invalid_value(
                    "item.type", itype, ["message", "function_call", "function_call_output"]
                )
        return p.schema_error(model, item, reject_unknown=reject_unknown, prefix="item")

    def response_params(self, params: JsonDict) -> tuple[list[str] | None, bool]:
        # Guess: `conversation: "none"` (out-of-band) responses are not stored
        return params.get("output_modalities"), params.get("conversation") == "none"

    # ------------------------------------------------------------------ server events

    def render_item(self, item: JsonDict) -> JsonDict:
        out = copy_item(item)
        if out.get("role") == "assistant":
            for part in out.get("content") or []:
                part["type"] = _ASSISTANT_WIRE.get(part["type"], part["type"])
        return out

    def translate(self, event_type: str, fields: JsonDict) -> list[tuple[str, JsonDict]]:
        if "item" in fields:
            fields = {**fields, "item": self.render_item(fields["item"])}
        if "response" in fields:
            fields = {**fields, "response": self._render_response(fields["response"])}
        if self.legacy_event_names:
            if event_type == "conversation.item.added":
                return [("conversation.item.created", fields)]
            if event_type == "conversation.item.done":
                return []
            return [(event_type, fields)]
        return [(_GA_NAMES.get(event_type, event_type), fields)]

    def _render_response(self, response: JsonDict) -> JsonDict:
        out = {k: v for k, v in response.items() if k != "modalities"}
        out["output_modalities"] = response.get("modalities")
        out["output"] = [self.render_item(i) for i in response.get("output") or []]
        return out

    def validate_server_event(self, event: JsonDict) -> pydantic.BaseModel:
        etype = event.get("type", "")
        if etype in _LEGACY_TO_GA:  # an old-style name: the shape is the GA event's
            event = {**event, "type": _LEGACY_TO_GA[etype]}
        return super().validate_server_event(event)
