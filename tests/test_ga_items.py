"""The GA session's conversion of the service's items (``realtime/utils.py``)."""

from __future__ import annotations

import pytest
from openai.types.realtime import ConversationItemAdded

from livekit.agents import llm
from livekit.plugins.openai.realtime.utils import openai_item_to_livekit_item


@pytest.mark.regression(fails_on=("1.4.6",))
def test_function_call_the_service_is_still_making_converts_without_arguments() -> None:
    # a call announced before its arguments are streamed (`response.function_call_arguments.*`)
    # has none yet; the session reads the event as it came (`construct`), so they are None
    event = ConversationItemAdded.construct(
        type="conversation.item.added",
        event_id="event_1",
        previous_item_id=None,
        item={"type": "function_call", "id": "item_1", "call_id": "call_1", "name": "lookup"},
    )
    item = openai_item_to_livekit_item(event.item)
    assert isinstance(item, llm.FunctionCall)
    assert (item.id, item.call_id, item.name, item.arguments) == ("item_1", "call_1", "lookup", "")
