"""Protocol-neutral wire helpers of the fake server: ids, error payloads and schema checks.

The protocol layers (``preview.py``, ``ga.py``) feed these their own typed models
(``openai.types.beta.realtime`` resp. ``openai.types.realtime``).
"""

from __future__ import annotations

import itertools
import re
import uuid
from typing import Any, NamedTuple

import pydantic

JsonDict = dict[str, Any]

MAX_ITEM_ID_LENGTH = 32
# the characters a client-chosen item id may hold (livekit/agents#1717)
ITEM_ID_RE = re.compile(r"[a-zA-Z0-9_-]+")

DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again."
)


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


def pattern_mismatch(param: str, pattern: str) -> ErrorSpec:
    # OpenAI's realtime error for an item id like "a/b" (livekit/agents#1717); Azure's is assumed
    # to be the same
    return ErrorSpec(
        "invalid_value",
        f"Invalid '{param}': string does not match pattern. Expected a string that matches the "
        f"pattern '^{pattern}$'.",
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
    model_cls: type[pydantic.BaseModel],
    data: JsonDict,
    *,
    reject_unknown: bool = True,
    prefix: str = "",
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
        if prefix:
            param = f"{prefix}.{param}" if param else prefix
        if err["type"] == "missing":
            return missing_param(param)
        if err["type"] in ("literal_error", "enum"):
            return invalid_value(param, err.get("input"))
        return invalid_type(param, err["msg"].lower())
    if reject_unknown and (extra := _first_extra(model, prefix)):
        return unknown_param(extra)
    return None


def strict_validate(model_cls: type[pydantic.BaseModel], event: JsonDict) -> pydantic.BaseModel:
    """``model_validate`` plus a check that no field is undeclared (the openai models allow extras).

    Raises:
        ValueError: if the event is malformed or carries undeclared fields.
    """
    model = model_cls.model_validate(event)
    if extra := _first_extra(model, ""):
        raise ValueError(f"{event.get('type')}: undeclared field {extra!r}")
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


# --- the protocol layer interface -----------------------------------------------------------


class HttpError(NamedTuple):
    """A rejected websocket handshake: HTTP status and the ``error`` body's code and message."""

    status: int
    code: str
    message: str


class WireProtocol:
    """What a protocol layer tells the protocol-neutral engine (``server.py``).

    The engine speaks in *neutral* events: the preview protocol's event names and fields, with
    items in the stored shape of ``conversation.py``, plus two item stages
    ``conversation.item.added`` / ``conversation.item.done`` (an item entered the conversation /
    is final). :meth:`translate` turns one neutral event into the events this protocol sends.
    Sessions are kept in the protocol's own wire shape; the engine reads them only through the
    accessors below.
    """

    name: str
    path: str
    """The route of the realtime websocket."""
    client_models: dict[str, type[pydantic.BaseModel]]
    """Typed model of every client event type this protocol accepts."""
    server_models: dict[str, type[pydantic.BaseModel]]
    allowed_content: dict[str, list[str]]
    """Per message role, the content part types a client may create (wire names)."""
    to_neutral: dict[str, str]
    """Wire content part type -> stored type."""

    def handshake_error(
        self, query: dict[str, str], headers: Any, deployment: str
    ) -> HttpError | None:
        raise NotImplementedError

    def ws_url(self, base: str, deployment: str, /, **query: str | None) -> str:
        raise NotImplementedError

    def default_session(self) -> JsonDict:
        raise NotImplementedError

    def apply_session_update(
        self, session: JsonDict, ev: JsonDict, reject_unknown: bool
    ) -> ErrorSpec | None:
        """Validate a ``session.update`` and merge it into ``session`` (unchanged on error)."""
        raise NotImplementedError

    def check_event(self, ev: JsonDict, reject_unknown: bool) -> ErrorSpec | None:
        """Schema check of any client event but ``session.update``."""
        raise NotImplementedError

    def turn_detection(self, session: JsonDict) -> JsonDict | None:
        raise NotImplementedError

    def transcription_on(self, session: JsonDict) -> bool:
        raise NotImplementedError

    def output_modalities(self, session: JsonDict) -> list[str]:
        raise NotImplementedError

    def bytes_per_ms(self, session: JsonDict) -> int:
        raise NotImplementedError

    def response_params(self, params: JsonDict) -> tuple[list[str] | None, bool]:
        """``(modalities or None, out_of_band)`` of a ``response.create``'s ``response``."""
        raise NotImplementedError

    def render_item(self, item: JsonDict) -> JsonDict:
        """A stored item in this protocol's server shape (a copy)."""
        raise NotImplementedError

    def translate(self, event_type: str, fields: JsonDict) -> list[tuple[str, JsonDict]]:
        """The ``(type, fields)`` of the events to send for one neutral event."""
        raise NotImplementedError

    def validate_server_event(self, event: JsonDict) -> pydantic.BaseModel:
        """Strictly validate a sent event against this protocol's server event models.

        Raises:
            ValueError: if the event is unknown, malformed or carries undeclared fields.
        """
        model_cls = self.server_models.get(event.get("type", ""))
        if model_cls is None:
            raise ValueError(f"unknown {self.name} server event type: {event.get('type')!r}")
        return strict_validate(model_cls, event)
