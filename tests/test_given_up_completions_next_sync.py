"""A sync given up mid-completion, then a sync of a context that changed those items.

Unsliced, the given-up sync completes its held items before the next sync begins, and the next
sync replaces what its context holds differently and deletes what it no longer holds. So the
next sync completes the given-up sync's rest before it takes ``since``: the rest is no content
the service made after it began, and its own context wins.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

loop_slicer = pytest.importorskip(
    "livekit.plugins.openai.realtime.loop_slicer",
    reason="the fork's modules are not in this build (pristine upstream)",
)
from state_helpers import answer, spoken_replies_io, text_ctx  # noqa: E402

N = 100  # more than one step of completions (``STEP_ITEMS`` each)


@pytest.mark.parametrize("protocol", ["preview", "ga"])
@pytest.mark.parametrize("kept", [range(N), range(0, N, 2)], ids=["edited", "edited_and_cut"])
async def test_the_next_sync_applies_its_context_over_a_given_up_syncs_rest(
    protocol: str, kept: range, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_slicer, "MAX_SLICE", 0.0)  # every tick yields: nothing timed
    queued: list[Any] = []
    io = spoken_replies_io(protocol, queued, N)
    first = asyncio.create_task(io.update_chat_ctx(text_ctx("assistant", "said", range(N))))
    # given up once it has completed part of its held items
    while not io.state._completions:
        assert not first.done()
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert io.state._completions  # part of them left
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(io.update_chat_ctx(text_ctx("assistant", "other", kept)))
    while not second.done():
        await asyncio.sleep(0)
        answer(io, queued)
    await second
    view = {r.item.id: r.item.content for r in io.state.remote}
    assert view == {f"s{k}": [f"other {k}"] for k in kept}
    await io.aclose()
