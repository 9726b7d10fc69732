"""A drop and its replay while a sync is still planning (before it queued anything).

Unsliced, the replay comes before the sync (the spoken replies whose end has not arrived are
lost, and the sync creates them again from the context) or after it (the sync took the
context's text as their content, and the replay re-creates them): the view ends with every item
either way. A plan made across the drop was made for a conversation the replay changed, so
``ChatSyncIO`` plans the sync again once the next connection is ready, also when the plan has
no events (that one used to return at once, and the replies the replay lost stayed lost).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

loop_slicer = pytest.importorskip(
    "livekit.plugins.openai.realtime.loop_slicer",
    reason="the fork's modules are not in this build (pristine upstream)",
)
from state_helpers import answer, spoken_replies_io, text_ctx  # noqa: E402

N = 100  # a few steps of planning (``STEP_ITEMS`` each)


async def _sync_with_a_drop_after(protocol: str, turns: int) -> tuple[int, int] | None:
    """The items the view holds after a sync of the context whose planning a drop and replay
    interrupt after ``turns`` turns of the event loop, and those of the context; None when the
    sync was done before."""
    queued: list[Any] = []
    io = spoken_replies_io(protocol, queued, N)
    ctx = text_ctx("assistant", "said", range(N))
    task = asyncio.create_task(io.update_chat_ctx(ctx))
    for _ in range(turns):
        await asyncio.sleep(0)
    if task.done():
        await task
        return None
    io.connection_lost()
    sent: list[Any] = []

    async def _send(event: Any) -> None:
        sent.append(event)

    await io.replay(_send)
    answer(io, sent)  # the replay is answered: the connection is ready for syncs again
    while not task.done():
        await asyncio.sleep(0)
        answer(io, queued)
    await task
    view = len(list(io.state.remote))
    await io.aclose()
    return view, N


@pytest.mark.regression(fails_on=("1.4.6.post8",))
@pytest.mark.parametrize("protocol", ["preview", "ga"])
async def test_a_drop_while_a_sync_plans_leaves_no_item_of_the_context_out(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_slicer, "MAX_SLICE", 0.0)  # every tick yields: nothing timed
    left_out: dict[int, tuple[int, int]] = {}
    for turns in itertools.count():
        result = await asyncio.wait_for(_sync_with_a_drop_after(protocol, turns), 5)
        if result is None:
            break
        if result[0] < result[1]:
            left_out[turns] = result
    assert turns > 0  # the drop landed in the planning at least once
    assert left_out == {}
