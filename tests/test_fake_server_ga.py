"""Self-tests of the fake server's GA layer (``fake_azure/ga.py``) through a raw client.

Every server event a test provoked is validated strictly against ``openai.types.realtime``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from fake_azure import AudioReply, FakeAzureRealtimeServer, TextReply
from test_fake_server import RawClient, assert_all_valid, create, message as preview_message

pytestmark = pytest.mark.protocols("ga")

JsonDict = dict[str, Any]


@pytest.fixture
async def ga(fake_azure: FakeAzureRealtimeServer) -> AsyncIterator[RawClient]:
    """A raw GA connection (``session.created`` consumed); validates every sent event."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(fake_azure.ws_url(), headers={"api-key": fake_azure.api_key})
        client = RawClient(ws)
        assert (await client.recv())["type"] == "session.created"
        yield client
        await ws.close()
    assert_all_valid(fake_azure)


# GA assistant text is `output_text`
message = functools.partial(preview_message, assistant_type="output_text")


# --------------------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, {}, 401),
        ({"api-key": "KEY"}, {"api-version": "2025-08-28"}, 401),  # no api-version on GA
        ({"api-key": "KEY", "OpenAI-Beta": "realtime=v1"}, {}, 400),
        ({"api-key": "KEY"}, {"model": ""}, 400),
        ({"api-key": "KEY"}, {"model": "other-deployment"}, 404),
    ],
)
async def test_handshake_rejected(
    fake_azure: FakeAzureRealtimeServer, headers: dict[str, str], query: dict[str, Any], status: int
) -> None:
    headers = {k: v.replace("KEY", fake_azure.api_key) for k, v in headers.items()}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(fake_azure.ws_url(**query), headers=headers)
    assert exc.value.status == status
    assert fake_azure.handshake_failures == [status]
    assert fake_azure.connections == 0


async def test_preview_route_not_served(fake_azure: FakeAzureRealtimeServer) -> None:
    url = f"ws://127.0.0.1:{fake_azure.port}/openai/realtime?api-version=2024-10-01-preview"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(
                f"{url}&deployment={fake_azure.deployment}", headers={"api-key": fake_azure.api_key}
            )
    assert exc.value.status == 404


async def test_entra_bearer_accepted(fake_azure: FakeAzureRealtimeServer) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {fake_azure.api_key}"}
        async with http.ws_connect(fake_azure.ws_url(), headers=headers) as ws:
            created = await RawClient(ws).recv()
    assert created["session"]["type"] == "realtime"
    assert fake_azure.connections == 1


# --------------------------------------------------------------------------- session.update


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        ({"type": "realtime", "modalities": ["text"]}, "unknown_parameter", "session.modalities"),
        (
            {"type": "realtime", "turn_detection": {"type": "server_vad"}},
            "unknown_parameter",
            "session.turn_detection",
        ),
        ({"type": "realtime", "output_modalities": ["video"]}, "invalid_value", None),
    ],
)
async def test_session_update_rejected(
    fake_azure: FakeAzureRealtimeServer,
    ga: RawClient,
    session: JsonDict,
    code: str,
    param: str | None,
) -> None:
    event_id = await ga.send({"type": "session.update", "session": session})
    error = await ga.recv()
    assert error["type"] == "error"
    assert error["error"]["code"] == code
    if param is not None:
        assert error["error"]["param"] == param
    assert error["error"]["event_id"] == event_id


async def test_session_update_merges_audio(
    fake_azure: FakeAzureRealtimeServer, ga: RawClient
) -> None:
    updated = await ga.request(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "model": "ignored",
                "output_modalities": ["text"],
                "audio": {"input": {"transcription": {"model": "my-whisper-deployment"}}},
            },
        }
    )
    assert updated["type"] == "session.updated"
    session = updated["session"]
    assert session["output_modalities"] == ["text"]
    assert session["audio"]["input"]["transcription"] == {"model": "my-whisper-deployment"}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"  # kept
    assert session["model"] == "gpt-realtime"


# --------------------------------------------------------------------------- items


async def test_create_added_then_done(fake_azure: FakeAzureRealtimeServer, ga: RawClient) -> None:
    await ga.send(create(message("system", "be brief", "item_sys")))
    added, done = await ga.recv(), await ga.recv()
    assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
    assert added["previous_item_id"] is None and done["item"] == added["item"]
    await ga.send(create(message("assistant", "hello", "item_a")))
    added = (await ga.recv_until("conversation.item.done"))[0]
    assert added["previous_item_id"] == "item_sys"
    assert added["item"]["content"] == [{"type": "output_text", "text": "hello"}]
    assert fake_azure.conversation_ids() == ["item_sys", "item_a"]


@pytest.mark.parametrize(
    ("item", "code", "param"),
    [
        (
            {"role": "user", "content": [{"type": "input_text", "text": "x"}]},
            "missing_required_parameter",
            "item.type",
        ),
        (
            message("assistant", "x") | {"content": [{"type": "text", "text": "x"}]},
            "invalid_value",
            "item.content[0].type",
        ),
        (message("user", "x") | {"content": []}, "empty_array", "item.content"),
        (message("user", "x", "item_" + "x" * 28), "string_above_max_length", "item.id"),
        (
            {"type": "function_call_output", "call_id": "nope", "output": "1"},
            "invalid_function_call_output",
            "item.call_id",
        ),
    ],
    ids=["typeless", "preview assistant text", "empty content", "long id", "output before call"],
)
async def test_create_rejected_echoes_event_id(
    fake_azure: FakeAzureRealtimeServer, ga: RawClient, item: JsonDict, code: str, param: str
) -> None:
    event_id = await ga.send(create(item))
    error = await ga.recv()
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert error["error"]["event_id"] == event_id
    assert fake_azure.conversation == []


async def test_unknown_previous_item(fake_azure: FakeAzureRealtimeServer, ga: RawClient) -> None:
    event_id = await ga.send(create(message("user", "x"), previous_item_id="item_nope"))
    error = await ga.recv()
    assert error["error"]["code"] == "item_create_invalid_previous_item_id"
    assert error["error"]["event_id"] == event_id


async def test_delete_and_retrieve(fake_azure: FakeAzureRealtimeServer, ga: RawClient) -> None:
    await ga.send(create(message("user", "hi", "item_u")))
    await ga.recv_until("conversation.item.done")
    retrieved = await ga.request({"type": "conversation.item.retrieve", "item_id": "item_u"})
    assert retrieved["type"] == "conversation.item.retrieved"
    assert retrieved["item"]["id"] == "item_u"
    deleted = await ga.request({"type": "conversation.item.delete", "item_id": "item_u"})
    assert deleted == {
        "type": "conversation.item.deleted",
        "event_id": deleted["event_id"],
        "item_id": "item_u",
    }
    event_id = await ga.send({"type": "conversation.item.delete", "item_id": "item_u"})
    error = await ga.recv()
    assert (error["error"]["code"], error["error"]["event_id"]) == (
        "item_delete_invalid_item_id",
        event_id,
    )


# --------------------------------------------------------------------------- turns and replies


async def test_user_audio_turn(fake_azure: FakeAzureRealtimeServer, ga: RawClient) -> None:
    await ga.request(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        }
    )
    item_id = await fake_azure.user_audio_turn("hello there", respond=False)
    events = await ga.recv_until("conversation.item.input_audio_transcription.completed")
    assert [e["type"] for e in events] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert events[3]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert fake_azure.conversation[0]["id"] == item_id
    assert fake_azure.conversation[0]["content"][0]["transcript"] == "hello there"


async def test_scripted_text_reply(fake_azure: FakeAzureRealtimeServer, ga: RawClient) -> None:
    fake_azure.script(TextReply("Hello, world!"))
    await ga.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    events = await ga.recv_until("response.done")
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in types and "response.text.delta" not in types
    assert types[-5:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = events[-1]["response"]
    assert done["output_modalities"] == ["text"]
    assert done["output"][0]["content"] == [{"type": "output_text", "text": "Hello, world!"}]


async def test_audio_reply_and_truncate(fake_azure: FakeAzureRealtimeServer, ga: RawClient) -> None:
    fake_azure.script(AudioReply("one two", chunks=4, chunk_ms=50))
    await ga.send({"type": "response.create"})
    events = await ga.recv_until("response.done")
    types = {e["type"] for e in events}
    assert {"response.output_audio.delta", "response.output_audio_transcript.delta"} <= types
    item = events[-1]["response"]["output"][0]
    assert item["content"] == [{"type": "output_audio", "transcript": "one two"}]
    truncated = await ga.request(
        {
            "type": "conversation.item.truncate",
            "item_id": item["id"],
            "content_index": 0,
            "audio_end_ms": 100,
        }
    )
    assert truncated["type"] == "conversation.item.truncated"
    assert fake_azure.conversation[0]["content"][0]["transcript"] == ""


async def test_preview_response_create_rejected(
    fake_azure: FakeAzureRealtimeServer, ga: RawClient
) -> None:
    event_id = await ga.send({"type": "response.create", "response": {"modalities": ["text"]}})
    error = await ga.recv()
    assert (error["error"]["code"], error["error"]["param"]) == (
        "unknown_parameter",
        "response.modalities",
    )
    assert error["error"]["event_id"] == event_id
    assert fake_azure.responses == []


async def test_legacy_event_names(fake_azure_factory: Any) -> None:
    server: FakeAzureRealtimeServer = await fake_azure_factory(legacy_event_names=True)
    server.script(TextReply("hi"))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url(), headers={"api-key": server.api_key}) as ws:
            client = RawClient(ws)
            await client.recv()
            await client.send(create(message("user", "x", "item_u")))
            assert (await client.recv())["type"] == "conversation.item.created"
            await client.send(
                {"type": "response.create", "response": {"output_modalities": ["text"]}}
            )
            types = [e["type"] for e in await client.recv_until("response.done")]
    assert "response.text.delta" in types and "conversation.item.created" in types
    assert "conversation.item.added" not in types
    assert_all_valid(server)
