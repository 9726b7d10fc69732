"""Unit tests of livekit.plugins.openai.realtime.chat_sync_io (its pure helpers)."""

from __future__ import annotations

from livekit.plugins.openai.realtime.chat_sync_io import decode_server_event


def test_a_json_event_is_decoded() -> None:
    assert decode_server_event('{"type": "session.created"}') == {"type": "session.created"}


def test_frames_that_are_not_events_are_skipped() -> None:
    for frame in ("not json", "[1, 2]", '{"no": "type"}', '{"type": 3}'):
        assert decode_server_event(frame) is None
