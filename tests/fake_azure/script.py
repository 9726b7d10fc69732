"""Planned responses the fake server plays, one per ``response.create`` or automatic turn."""

from __future__ import annotations

import base64
import functools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class TextReply:
    """An assistant message with one ``text`` content part.

    Attributes:
        text: the full text, streamed as a few ``response.text.delta`` events.
        chunk_delay: seconds to sleep between deltas (lets tests interrupt a response).
    """

    text: str
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class AudioReply:
    """An assistant message with one ``audio`` content part and its transcript.

    Attributes:
        transcript: the transcript, streamed as ``response.audio_transcript.delta`` events.
        chunks: number of ``response.audio.delta`` events (small PCM16 24 kHz mono chunks).
        chunk_ms: duration of each audio chunk.
        chunk_delay: seconds to sleep between chunks.
    """

    transcript: str
    chunks: int = 3
    chunk_ms: int = 50
    chunk_delay: float = 0.0

    @property
    def audio_ms(self) -> int:
        return self.chunks * self.chunk_ms


@dataclass(frozen=True)
class FunctionCallReply:
    """A ``function_call`` output item.

    Attributes:
        name: tool name.
        arguments: JSON text, or a mapping that is serialised with ``json.dumps``.
        call_id: the call id; generated (``call_...``) when ``None``.
        chunk_delay: seconds to sleep between argument deltas.
    """

    name: str
    arguments: str | Mapping[str, Any] = field(default="{}")
    call_id: str | None = None
    chunk_delay: float = 0.0

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments))


Reply = TextReply | AudioReply | FunctionCallReply
"""One output item of a planned response."""

PlannedResponse = Sequence[Reply]
"""All output items of one response, in order."""


def split_text(text: str, parts: int = 3) -> list[str]:
    """Split ``text`` into at most ``parts`` non-empty deltas whose concatenation is ``text``."""
    if not text:
        return [""]
    size = max(1, math.ceil(len(text) / parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


@functools.lru_cache(maxsize=16)
def pcm16_chunk_b64(chunk_ms: int) -> str:
    """Base64 of ``chunk_ms`` of a quiet 440 Hz tone, PCM16 little-endian, 24 kHz mono."""
    n = SAMPLE_RATE * chunk_ms // 1000
    samples = (int(1000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE)) for i in range(n))
    return base64.b64encode(struct.pack(f"<{n}h", *samples)).decode("ascii")
