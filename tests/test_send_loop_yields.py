"""The session's send loop lets other tasks run between the events of a burst, on both protocols.

With the loops' time budget at zero (``loop_slicer.MAX_SLICE``), so that no clock is involved,
the send loop yields before every event it takes off its queue: another task runs between any
two events of a burst queued at once, and between events it skips because they failed before
they went out (a dropped sync leaves thousands). 1.4.6 sends a burst back to back, since a
websocket write does not suspend while the socket's buffer has room; the forks before
1.4.6.post6 yielded after an event sent only, so a run of skipped events held the loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer
from sync_helpers import beta_session, cancel_and_wait, until_send_loop_blocked, wait_until

BURST = 200
# 20 ms of pcm16 silence at 24 kHz, mono
AUDIO = base64.b64encode(bytes(960)).decode()
APPEND = "input_audio_buffer.append"
# 1 MiB of silence per event; more events than a loopback connection's buffers hold
BIG_AUDIO = base64.b64encode(bytes(3 << 18)).decode()
BIG_EVENTS = 32
SKIPPED = 300


def _zero_slice_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from livekit.plugins.openai.realtime import loop_slicer
    except ImportError:  # pristine upstream: its loops have no budget to set
        return
    monkeypatch.setattr(loop_slicer, "MAX_SLICE", 0.0)


class _Turns:
    """How often another task ran while :meth:`take` was running as a task of its own."""

    def __init__(self) -> None:
        self.count = 0

    async def take(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)


@pytest.mark.regression(fails_on=("1.4.6",))
async def test_other_tasks_run_between_the_events_of_a_burst_the_send_loop_sends(
    fake_azure: FakeAzureRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BURST audio appends queued at once all reach the service, in their order, and another
    task runs between any two of them; 1.4.6 runs none in between."""
    _zero_slice_budget(monkeypatch)
    turns = _Turns()

    seen: list[int] = []  # `turns` when the send loop took each append of the burst
    async with beta_session(fake_azure) as (sess, errors):
        await fake_azure.wait_received("session.update")

        def _queued(ev: dict[str, Any]) -> None:
            if ev.get("type") == APPEND:
                seen.append(turns.count)

        sess.on("openai_client_event_queued", _queued)
        other = asyncio.create_task(turns.take())
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


@pytest.mark.regression(
    fails_on=("1.4.6", "1.4.6.post1", "1.4.6.post2", "1.4.6.post3", "1.4.6.post4", "1.4.6.post5")
)
async def test_other_tasks_run_between_the_events_the_send_loop_skips(
    fake_azure: FakeAzureRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service stops reading; a sync's SKIPPED creates wait in the queue behind audio the
    send loop cannot write, then a marker event; the connection drops, so the creates fail
    unsent. On the next connection the send loop skips them, and the other task runs between
    any two of them: at least SKIPPED turns between the last audio sent and the marker. The
    forks before 1.4.6.post6 and 1.4.6's preview session give it none or a few; 1.4.6's GA
    session, which does not stop at a failed write, writes the whole queue into the dropped
    socket."""
    _zero_slice_budget(monkeypatch)
    turns = _Turns()

    taken: list[tuple[str, int]] = []  # the send loop took (event type or id, turns)
    sync: asyncio.Task[None] | None = None
    other: asyncio.Task[None] | None = None
    async with beta_session(fake_azure) as (sess, _):
        await fake_azure.wait_received("session.update")
        sess.on(
            "openai_client_event_queued",
            lambda ev: taken.append((ev.get("event_id") or ev["type"], turns.count)),
        )
        try:
            fake_azure.stop_reading()
            for _ in range(BIG_EVENTS):
                sess.send_event({"type": APPEND, "audio": BIG_AUDIO})
            await until_send_loop_blocked(taken)
            unsent = BIG_EVENTS - sum(1 for name, _ in taken if name == APPEND)
            assert unsent > 0  # the send loop is blocked in a write

            ctx = sess.chat_ctx.copy()
            for i in range(SKIPPED):
                ctx.add_message(role="user", content=f"note {i}", id=f"skip_{i}")
            sync = asyncio.create_task(sess.update_chat_ctx(ctx))
            await wait_until(lambda: sess._msg_ch.qsize() >= unsent + SKIPPED, timeout=10.0)
            sess.send_event({"type": APPEND, "audio": AUDIO, "event_id": "marker"})

            other = asyncio.create_task(turns.take())
            await fake_azure.drop_connections()
            try:
                await fake_azure.wait_for(
                    lambda: any(r.event.get("event_id") == "marker" for r in fake_azure.received),
                    timeout=10.0,
                )
            except asyncio.TimeoutError:
                # 1.4.6's GA loop, not yielding, writes the whole queue into the closed socket
                pytest.fail("the events queued for the dropped connection never reached the next")
        finally:
            if other is not None:
                await cancel_and_wait(other)
            if sync is not None:
                await cancel_and_wait(sync)

    names = [name for name, _ in taken]
    marker = names.index("marker")
    last_audio = max(i for i in range(marker) if names[i] == APPEND)
    # the creates the send loop took in between on the new connection, skipped or (1.4.6) sent
    between = taken[marker][1] - taken[last_audio][1]
    assert between >= SKIPPED, f"the other task ran {between} times while {SKIPPED} were skipped"
