"""The session's send loop lets other tasks run between the events of a burst, on both protocols.

With the loops' time budget at zero (``loop_slicer.MAX_SLICE``), so that no clock is involved,
the send loop yields before every event it takes off its queue: another task runs between any
two events of a burst queued at once. 1.4.6 sends such a burst back to back, since a websocket
write does not suspend while the socket's buffer has room.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer
from sync_helpers import beta_session, cancel_and_wait

BURST = 200
# 20 ms of pcm16 silence at 24 kHz, mono
AUDIO = base64.b64encode(bytes(960)).decode()
APPEND = "input_audio_buffer.append"


def _zero_slice_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from livekit.plugins.openai.realtime import loop_slicer
    except ImportError:  # pristine upstream: its loops have no budget to set
        return
    monkeypatch.setattr(loop_slicer, "MAX_SLICE", 0.0)


@pytest.mark.regression(fails_on=("1.4.6",))
async def test_other_tasks_run_between_the_events_of_a_burst_the_send_loop_sends(
    fake_azure: FakeAzureRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BURST audio appends queued at once all reach the service, in their order, and another
    task runs between any two of them; 1.4.6 runs none in between."""
    _zero_slice_budget(monkeypatch)
    turns = 0  # how often the other task ran

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    seen: list[int] = []  # `turns` when the send loop took each append of the burst
    async with beta_session(fake_azure) as (sess, errors):
        await fake_azure.wait_received("session.update")

        def _queued(ev: dict[str, Any]) -> None:
            if ev.get("type") == APPEND:
                seen.append(turns)

        sess.on("openai_client_event_queued", _queued)
        other = asyncio.create_task(other_task())
        try:
            for i in range(BURST):
                sess.send_event({"type": APPEND, "audio": AUDIO, "event_id": f"append_{i}"})
            await fake_azure.wait_received(APPEND, BURST)
        finally:
            await cancel_and_wait(other)
        received = [
            r.event.get("event_id") for r in fake_azure.received if r.event["type"] == APPEND
        ]
        assert received == [f"append_{i}" for i in range(BURST)]
        assert errors == [] and fake_azure.errors == []

    assert len(seen) == BURST
    # events taken one after the other with no turn of the other task in between
    back_to_back = sum(a == b for a, b in zip(seen, seen[1:], strict=False))
    assert back_to_back == 0
