"""The protocol-specific names tests assert on, so one test body serves both protocols."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WireNames:
    """Server event names and content part types of one protocol (default GA spelling)."""

    protocol: str
    item_created: str
    """The event announcing an item that entered the conversation."""
    item_done: str | None
    """The event carrying the final item (GA only)."""
    text_delta: str
    audio_delta: str
    audio_transcript_delta: str
    assistant_text: str
    """Content part type of assistant text in items (``text`` / ``output_text``)."""
    assistant_audio: str

    def text_part(self, role: str, text: str) -> dict[str, str]:
        """A text content part of a message of ``role``, as the server stores and sends it."""
        return {"type": self.assistant_text if role == "assistant" else "input_text", "text": text}


PREVIEW = WireNames(
    protocol="preview",
    item_created="conversation.item.created",
    item_done=None,
    text_delta="response.text.delta",
    audio_delta="response.audio.delta",
    audio_transcript_delta="response.audio_transcript.delta",
    assistant_text="text",
    assistant_audio="audio",
)
GA = WireNames(
    protocol="ga",
    item_created="conversation.item.added",
    item_done="conversation.item.done",
    text_delta="response.output_text.delta",
    audio_delta="response.output_audio.delta",
    audio_transcript_delta="response.output_audio_transcript.delta",
    assistant_text="output_text",
    assistant_audio="output_audio",
)


def wire_names(protocol: str) -> WireNames:
    """The names of ``protocol`` (``"preview"`` or ``"ga"``)."""
    return {"preview": PREVIEW, "ga": GA}[protocol]
