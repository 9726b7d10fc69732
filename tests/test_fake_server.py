"""Self-tests of the fake Azure realtime server, mostly through a raw aiohttp websocket client.

Tests that speak preview wire shapes are marked ``protocols("preview")``; the rest run on both
protocols (``test_fake_server_ga.py`` holds the GA layer's own tests). Every server event a test
provoked is validated against the protocol's openai types (``openai.types.beta.realtime`` resp.
``openai.types.realtime``; strictly: no undeclared fields) when the raw client is torn down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from fake_azure import (
    AudioReply,
    Conversation,
    FakeAzureRealtimeServer,
    FunctionCallReply,
    TextReply,
    make_model,
    session_options,
    wire_names,
)

JsonDict = dict[str, Any]


def assert_all_valid(server: FakeAzureRealtimeServer) -> None:
    assert server.sent, "the server sent nothing"
    for sent in server.sent:
        server.wire.validate_server_event(sent.event)


class RawClient:
    """Minimal realtime client: send JSON events, read server events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._n = 0

    def _event_id(self) -> str:
        self._n += 1
        return f"evt_client_{self._n}"

    async def send(self, event: JsonDict) -> str:
        """Send one event (an ``event_id`` is added unless present) and return its id."""
        event = {"event_id": self._event_id(), **event}
        await self.ws.send_str(json.dumps(event))
        return str(event["event_id"])

    async def send_batch(self, events: list[JsonDict]) -> list[str]:
        """Send several events back to back, without reading in between."""
        return [await self.send(e) for e in events]

    async def recv(self, timeout: float = 3.0) -> JsonDict:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        event: JsonDict = json.loads(msg.data)
        return event

    async def recv_until(self, event_type: str, timeout: float = 3.0) -> list[JsonDict]:
        """Read events up to and including the first one of ``event_type``."""
        out: list[JsonDict] = []
        while True:
            out.append(await self.recv(timeout))
            if out[-1]["type"] == event_type:
                return out

    async def request(self, event: JsonDict) -> JsonDict:
        """Send one event and return the next server event."""
        await self.send(event)
        return await self.recv()


Connect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def connect(fake_azure: FakeAzureRealtimeServer) -> AsyncIterator[Connect]:
    """Open raw connections (first ``session.created`` consumed); validates all sent events."""
    http = aiohttp.ClientSession()
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def _connect(headers: dict[str, str] | None = None) -> RawClient:
        ws = await http.ws_connect(
            fake_azure.ws_url(), headers=headers or {"api-key": fake_azure.api_key}
        )
        sockets.append(ws)
        client = RawClient(ws)
        first = await client.recv()
        assert first["type"] == "session.created"
        return client

    try:
        yield _connect
    finally:
        for ws in sockets:
            await ws.close()
        await http.close()
    assert_all_valid(fake_azure)


@pytest.fixture
async def client(connect: Connect) -> RawClient:
    return await connect()


def message(
    role: str, text: str, item_id: str | None = None, *, assistant_type: str = "text"
) -> JsonDict:
    """A client message item; ``assistant_type``: the protocol's assistant text part."""
    part_type = assistant_type if role == "assistant" else "input_text"
    item: JsonDict = {
        "type": "message",
        "role": role,
        "content": [{"type": part_type, "text": text}],
    }
    if item_id is not None:
        item["id"] = item_id
    return item


def create(item: JsonDict, previous_item_id: str | None = None) -> JsonDict:
    ev: JsonDict = {"type": "conversation.item.create", "item": item}
    if previous_item_id is not None:
        ev["previous_item_id"] = previous_item_id
    return ev


# --------------------------------------------------------------------------- handshake


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_session_created_first(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    created = fake_azure.sent[0].event
    assert created["type"] == "session.created"
    assert created["session"]["model"] == "gpt-4o-realtime-preview-2024-10-01"
    assert fake_azure.connections == 1
    assert fake_azure.conversation == []


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, {}, 401),
        ({"api-key": "wrong"}, {}, 401),
        ({"Authorization": "Bearer wrong"}, {}, 401),
        ({"api-key": "KEY"}, {"api_version": None}, 404),
        ({"api-key": "KEY"}, {"deployment": ""}, 400),
        ({"api-key": "KEY"}, {"deployment": "other-deployment"}, 404),
    ],
)
async def test_handshake_rejected(
    fake_azure: FakeAzureRealtimeServer,
    headers: dict[str, str],
    query: dict[str, Any],
    status: int,
) -> None:
    headers = {k: v.replace("KEY", fake_azure.api_key) for k, v in headers.items()}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(fake_azure.ws_url(**query), headers=headers)
    assert exc.value.status == status
    assert fake_azure.handshake_failures == [status]
    assert fake_azure.connections == 0


async def test_bearer_token_accepted(fake_azure: FakeAzureRealtimeServer, connect: Connect) -> None:
    await connect({"Authorization": f"Bearer {fake_azure.api_key}"})
    assert fake_azure.connections == 1


# --------------------------------------------------------------------------- item validation

LONG_ID = "item_" + "x" * 28  # 33 characters

VALIDATION_CASES: list[tuple[str, JsonDict, str, str | None, str | None]] = [
    (
        "missing type",
        create(
            {"id": "item_a", "role": "system", "content": [{"type": "input_text", "text": "TEST"}]}
        ),
        "missing_required_parameter",
        "item.type",
        "Missing required parameter: 'item.type'.",
    ),
    (
        "type checked before id length and previous item",
        create({"id": LONG_ID, "role": "system", "content": []}, "item_nope"),
        "missing_required_parameter",
        "item.type",
        None,
    ),
    (
        "id too long",
        create(message("system", "x", LONG_ID), "item_nope"),
        "string_above_max_length",
        "item.id",
        None,
    ),
    (
        "unknown previous item",
        create(message("system", "TEST"), "item_d4fc3f27baf6"),
        "item_create_invalid_previous_item_id",
        "previous_item_id",
        "Error adding item: the previous item with id 'item_d4fc3f27baf6' does not exist.",
    ),
    (
        "empty content",
        create({"type": "message", "role": "system", "content": []}),
        "empty_array",
        "item.content",
        None,
    ),
    (
        "absent content",
        create({"type": "message", "role": "user"}),
        "empty_array",
        "item.content",
        None,
    ),
    (
        "system audio",
        create(
            {"type": "message", "role": "system", "content": [{"type": "input_audio", "audio": ""}]}
        ),
        "invalid_value",
        "item.content[0].type",
        None,
    ),
    (
        "assistant audio",
        create(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "a"}, {"type": "audio", "transcript": "b"}],
            }
        ),
        "invalid_value",
        "item.content[1].type",
        None,
    ),
    (
        "assistant input_text",
        create(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "input_text", "text": "a"}],
            }
        ),
        "invalid_value",
        "item.content[0].type",
        None,
    ),
    (
        "user text",
        create({"type": "message", "role": "user", "content": [{"type": "text", "text": "a"}]}),
        "invalid_value",
        "item.content[0].type",
        None,
    ),
    (
        "function_call without name",
        create({"type": "function_call", "call_id": "call_1", "arguments": "{}"}),
        "missing_required_parameter",
        "item.name",
        None,
    ),
    (
        "function_call without arguments",
        create({"type": "function_call", "call_id": "call_1", "name": "f"}),
        "missing_required_parameter",
        "item.arguments",
        None,
    ),
    (
        "function_call_output without output",
        create({"type": "function_call_output", "call_id": "call_1"}),
        "missing_required_parameter",
        "item.output",
        None,
    ),
    (
        "function_call_output for an unknown call",
        create({"type": "function_call_output", "call_id": "call_1", "output": "42"}),
        "invalid_function_call_output",
        "item.call_id",
        None,
    ),
    (
        "unknown item field",
        create({**message("user", "x"), "colour": "red"}),
        "unknown_parameter",
        "item.colour",
        None,
    ),
    (
        "bad role",
        create(
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "a"}],
            }
        ),
        "invalid_value",
        "item.role",
        None,
    ),
    ("unknown event type", {"type": "conversation.item.frobnicate"}, "unknown_event", "type", None),
]


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
@pytest.mark.parametrize(
    ("event", "code", "param", "message_text"),
    [pytest.param(*case[1:], id=case[0]) for case in VALIDATION_CASES],
)
async def test_validation_rule(
    fake_azure: FakeAzureRealtimeServer,
    client: RawClient,
    event: JsonDict,
    code: str,
    param: str | None,
    message_text: str | None,
) -> None:
    event_id = await client.send(event)
    error = await client.recv()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == code
    assert error["error"]["param"] == param
    assert error["error"]["event_id"] == event_id
    if message_text is not None:
        assert error["error"]["message"] == message_text
    assert fake_azure.conversation == []
    assert [e.client_event_id for e in fake_azure.errors] == [event_id]
    assert fake_azure.errors[0].client_event is not None
    assert fake_azure.errors[0].client_event["event_id"] == event_id


async def test_typeless_creates_counted(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    await client.request(create({"id": "item_a", "role": "user"}))
    await client.request(create(message("user", "ok")))
    assert fake_azure.typeless_creates == 1


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_duplicate_id(fake_azure: FakeAzureRealtimeServer, client: RawClient) -> None:
    assert (await client.request(create(message("user", "a", "item_a"))))["type"] == (
        "conversation.item.created"
    )
    event_id = await client.send(create(message("user", "b", "item_a"), "item_unknown"))
    error = (await client.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (
        "item_create_duplicate_id",
        "item.id",
        event_id,
    )
    assert fake_azure.conversation_ids() == ["item_a"]


async def test_invalid_json(fake_azure: FakeAzureRealtimeServer, client: RawClient) -> None:
    await client.ws.send_str("{not json")
    error = await client.recv()
    assert error["error"]["code"] == "invalid_json"
    assert error["error"]["event_id"] is None
    assert fake_azure.errors[0].client_event is None


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_function_call_output_check_switchable(
    fake_azure_factory: Callable[..., Awaitable[FakeAzureRealtimeServer]],
) -> None:
    server = await fake_azure_factory(enforce_function_call_output_call_id=False)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url(), headers={"api-key": server.api_key}) as ws:
            c = RawClient(ws)
            await c.recv()
            out = {"type": "function_call_output", "call_id": "call_x", "output": "1"}
            created = await c.request(create(out))
    assert created["type"] == "conversation.item.created"
    assert server.conversation[0]["call_id"] == "call_x"
    assert_all_valid(server)


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_function_call_then_output(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}
    out = {"type": "function_call_output", "call_id": "call_1", "output": "42"}
    await client.send_batch([create(call), create(out)])
    events = [await client.recv(), await client.recv()]
    assert [e["type"] for e in events] == ["conversation.item.created"] * 2
    assert events[1]["item"] == {
        "id": events[1]["item"]["id"],
        "object": "realtime.item",
        "type": "function_call_output",
        "status": "completed",
        "call_id": "call_1",
        "output": "42",
    }
    # once the call is deleted, an output for it is refused again
    await client.request({"type": "conversation.item.delete", "item_id": events[0]["item"]["id"]})
    error = await client.request(create(out))
    assert error["error"]["code"] == "invalid_function_call_output"


# --------------------------------------------------------------------------- success paths


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_created_echo_shape(fake_azure: FakeAzureRealtimeServer, client: RawClient) -> None:
    item = {
        "id": "item_user_audio",
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "hi"},
            {"type": "input_audio", "audio": "AAAAAA==", "transcript": "said hi"},
        ],
    }
    created = await client.request(create(item))
    assert created == {
        "type": "conversation.item.created",
        "event_id": created["event_id"],
        "previous_item_id": None,
        "item": {
            "id": "item_user_audio",
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_audio", "transcript": "said hi"},
            ],
        },
    }
    # server-generated id when the client gives none
    created = await client.request(create(message("system", "TEST")))
    assert created["item"]["id"].startswith("item_")
    assert created["previous_item_id"] == "item_user_audio"


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_batch_processed_in_order(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    ids = await client.send_batch(
        [
            create(message("user", "1", "item_1")),
            create(message("assistant", "2", "item_2"), "item_1"),
            create(message("user", "3", "item_3"), "item_2"),
            create(message("system", "0", "item_0"), "root"),
            create(message("system", "1.5", "item_15"), "item_1"),
            {"type": "conversation.item.delete", "item_id": "item_3"},
            create(message("user", "4", "item_4"), "item_3"),  # chained on a deleted item
            create(message("user", "5", "item_5")),  # appended at the end
        ]
    )
    events = [await client.recv() for _ in ids]
    assert [(e["type"], e.get("previous_item_id")) for e in events[:5]] == [
        ("conversation.item.created", None),
        ("conversation.item.created", "item_1"),
        ("conversation.item.created", "item_2"),
        ("conversation.item.created", None),
        ("conversation.item.created", "item_1"),
    ]
    assert events[5] == {
        "type": "conversation.item.deleted",
        "event_id": events[5]["event_id"],
        "item_id": "item_3",
    }
    assert events[6]["error"]["code"] == "item_create_invalid_previous_item_id"
    assert events[6]["error"]["event_id"] == ids[6]
    assert events[7]["previous_item_id"] == "item_2"
    assert fake_azure.conversation_ids() == ["item_0", "item_1", "item_15", "item_2", "item_5"]


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_delete(fake_azure: FakeAzureRealtimeServer, client: RawClient) -> None:
    event_id = await client.send({"type": "conversation.item.delete", "item_id": "item_x"})
    error = (await client.recv())["error"]
    assert error == {
        "type": "invalid_request_error",
        "code": "item_delete_invalid_item_id",
        "message": "Error deleting item: the item with id 'item_x' does not exist.",
        "param": "item_id",
        "event_id": event_id,
    }
    await client.request(create(message("user", "a", "item_x")))
    deleted = await client.request({"type": "conversation.item.delete", "item_id": "item_x"})
    assert deleted["type"] == "conversation.item.deleted"
    assert fake_azure.conversation == []


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_session_update_merges(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    tool = {
        "type": "function",
        "name": "lookup",
        "description": "d",
        "parameters": {"type": "object"},
    }
    updated = await client.request(
        {
            "type": "session.update",
            "session": {
                "model": "gpt-realtime",
                "instructions": "be brief",
                "tools": [tool],
                "turn_detection": {"type": "semantic_vad", "create_response": False},
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            },
        }
    )
    assert updated["type"] == "session.updated"
    updated = await client.request({"type": "session.update", "session": {"voice": "echo"}})
    session = updated["session"]
    assert session["voice"] == "echo"
    assert session["instructions"] == "be brief"
    assert session["tools"] == [tool]
    assert session["turn_detection"] == {"type": "semantic_vad", "create_response": False}
    assert session["input_audio_transcription"] == {"model": "whisper-1", "language": "en"}
    assert session["model"] == "gpt-4o-realtime-preview-2024-10-01"
    error = await client.request({"type": "session.update", "session": {"volume": 11}})
    assert (error["error"]["code"], error["error"]["param"]) == (
        "unknown_parameter",
        "session.volume",
    )


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_input_audio_buffer(fake_azure: FakeAzureRealtimeServer, client: RawClient) -> None:
    error = await client.request({"type": "input_audio_buffer.commit"})
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    chunk = "AAAA" * 1600  # 4800 bytes = 100 ms of PCM16 at 24 kHz
    await client.send_batch([{"type": "input_audio_buffer.append", "audio": chunk}] * 2)
    await client.send({"type": "input_audio_buffer.commit"})
    committed, created = await client.recv(), await client.recv()
    assert committed["type"] == "input_audio_buffer.committed"
    assert committed["previous_item_id"] is None
    assert created["item"]["id"] == committed["item_id"]
    assert created["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    await client.send({"type": "input_audio_buffer.append", "audio": chunk})
    assert (await client.request({"type": "input_audio_buffer.clear"}))["type"] == (
        "input_audio_buffer.cleared"
    )
    error = await client.request({"type": "input_audio_buffer.append", "audio": "@@@"})
    assert error["error"]["code"] == "invalid_value"


# --------------------------------------------------------------------------- scripted turns


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_user_audio_turn_without_transcript(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    await client.request(create(message("system", "sys", "item_sys")))
    await client.request(
        {
            "type": "session.update",
            "session": {"input_audio_transcription": {"model": "whisper-1"}},
        }
    )
    item_id = await fake_azure.user_audio_turn(None, respond=False)
    events = [await client.recv() for _ in range(4)]
    assert [e["type"] for e in events] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
    ]
    assert {e.get("item_id", item_id) for e in events[:3]} == {item_id}
    assert events[3]["previous_item_id"] == "item_sys"
    assert events[3]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert fake_azure.conversation_ids() == ["item_sys", item_id]
    with pytest.raises(asyncio.TimeoutError):
        await client.recv(timeout=0.2)


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_user_audio_turn_with_transcript(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    await client.request(
        {
            "type": "session.update",
            "session": {
                "input_audio_transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "server_vad", "create_response": False},
            },
        }
    )
    started = time.monotonic()
    item_id = await fake_azure.user_audio_turn("hello there", transcript_delay=0.1)
    assert time.monotonic() - started >= 0.1
    events = await client.recv_until("conversation.item.input_audio_transcription.completed")
    assert events[-2]["type"] == "conversation.item.created"
    assert events[-1]["item_id"] == item_id
    assert events[-1]["transcript"] == "hello there"
    assert fake_azure.conversation[0]["content"] == [
        {"type": "input_audio", "transcript": "hello there"}
    ]
    assert not fake_azure.sent_events("response.created")


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_user_audio_turn_transcript_needs_transcription(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    # the default session has no input_audio_transcription, so no transcript is produced
    await fake_azure.user_audio_turn("unheard", respond=False)
    await client.recv_until("conversation.item.created")
    assert not fake_azure.sent_events("conversation.item.input_audio_transcription.completed")


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_user_audio_turn_auto_response(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    fake_azure.script(TextReply("sure thing"))
    await client.request({"type": "session.update", "session": {"modalities": ["text"]}})
    user_id = await fake_azure.user_audio_turn(None)  # default turn detection creates a response
    events = await client.recv_until("response.done")
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "text", "text": "sure thing"}]
    assert fake_azure.conversation_ids() == [user_id, done["output"][0]["id"]]


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_scripted_text_response(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    fake_azure.script(TextReply("Hello, world!"))
    await client.request(create(message("user", "hi", "item_u")))
    event_id = await client.send(
        {"type": "response.create", "response": {"metadata": {"client_event_id": "resp_ev_1"}}}
    )
    events = await client.recv_until("response.done")
    assert [e["type"] for e in events] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
        *["response.text.delta"] * 3,
        "response.text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    assert event_id not in {e.client_event_id for e in fake_azure.errors}
    assert events[0]["response"]["metadata"] == {"client_event_id": "resp_ev_1"}
    assert events[-1]["response"]["metadata"] == {"client_event_id": "resp_ev_1"}
    assert "".join(e["delta"] for e in events if e["type"] == "response.text.delta") == (
        "Hello, world!"
    )
    assert events[2]["previous_item_id"] == "item_u"
    assert events[-1]["response"]["usage"]["total_tokens"] > 0
    assert fake_azure.conversation[-1] == {
        "id": events[1]["item"]["id"],
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello, world!"}],
    }


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_scripted_audio_response_and_truncate(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    fake_azure.script(AudioReply("one two three four", chunks=4, chunk_ms=50))
    await client.send({"type": "response.create"})
    events = await client.recv_until("response.done")
    types = [e["type"] for e in events]
    assert types.count("response.audio.delta") == 4
    assert types[-5:] == [
        "response.audio.done",
        "response.audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    transcript = "".join(
        e["delta"] for e in events if e["type"] == "response.audio_transcript.delta"
    )
    assert transcript == "one two three four"
    item = events[-1]["response"]["output"][0]
    assert item["content"] == [{"type": "audio", "transcript": "one two three four"}]

    # truncation: past the audio end, wrong items, then a valid cut
    cases = [
        ({"item_id": item["id"], "content_index": 0, "audio_end_ms": 201}, "invalid_value"),
        ({"item_id": item["id"], "content_index": 1, "audio_end_ms": 10}, "invalid_value"),
        (
            {"item_id": "item_none", "content_index": 0, "audio_end_ms": 10},
            "item_truncate_invalid_item_id",
        ),
    ]
    for fields, code in cases:
        error = await client.request({"type": "conversation.item.truncate", **fields})
        assert error["error"]["code"] == code
    truncated = await client.request(
        {
            "type": "conversation.item.truncate",
            "item_id": item["id"],
            "content_index": 0,
            "audio_end_ms": 120,
        }
    )
    assert truncated["type"] == "conversation.item.truncated"
    assert truncated["audio_end_ms"] == 120
    await client.request(create(message("user", "u", "item_u")))
    error = await client.request(
        {
            "type": "conversation.item.truncate",
            "item_id": "item_u",
            "content_index": 0,
            "audio_end_ms": 0,
        }
    )
    assert error["error"]["code"] == "invalid_value"


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_scripted_function_call(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    fake_azure.script(FunctionCallReply("get_weather", {"city": "Paris"}))
    await client.send({"type": "response.create"})
    events = await client.recv_until("response.done")
    assert [e["type"] for e in events][:3] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
    ]
    done_args = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(done_args["arguments"]) == {"city": "Paris"}
    item = events[-1]["response"]["output"][0]
    assert item["type"] == "function_call"
    assert item["call_id"] == done_args["call_id"]
    assert item["call_id"].startswith("call_")
    assert item["arguments"] == done_args["arguments"]
    out = {"type": "function_call_output", "call_id": item["call_id"], "output": "sunny"}
    created = await client.request(create(out))
    assert created["previous_item_id"] == item["id"]


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_multi_output_and_default_replies(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    fake_azure.script([TextReply("let me check"), FunctionCallReply("f")])
    await client.send({"type": "response.create"})
    done = (await client.recv_until("response.done"))[-1]["response"]
    assert [i["type"] for i in done["output"]] == ["message", "function_call"]
    # empty script: audio by default (session modalities), text when asked for text only
    await client.send({"type": "response.create"})
    done = (await client.recv_until("response.done"))[-1]["response"]
    assert done["output"][0]["content"][0]["type"] == "audio"
    await client.send({"type": "response.create", "response": {"modalities": ["text"]}})
    done = (await client.recv_until("response.done"))[-1]["response"]
    assert done["output"][0]["content"][0]["type"] == "text"
    assert len(fake_azure.responses) == 3
    assert len(fake_azure.conversation) == 4


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_response_cancel(fake_azure: FakeAzureRealtimeServer, client: RawClient) -> None:
    error = await client.request({"type": "response.cancel"})
    assert error["error"]["message"].startswith("Cancellation failed")

    fake_azure.script(AudioReply("a long answer", chunks=50, chunk_delay=0.02))
    await client.send({"type": "response.create"})
    await client.recv_until("response.audio.delta")
    error = await client.request({"type": "response.create"})
    # the in-flight audio may come first
    while error["type"] != "error":
        error = await client.recv()
    assert error["error"]["code"] == "conversation_already_has_active_response"
    await client.send({"type": "response.cancel"})
    events = await client.recv_until("response.done")
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    assert fake_azure.conversation[0]["status"] == "incomplete"
    await fake_azure.wait_idle()


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_interrupt_by_user_turn(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    fake_azure.script(AudioReply("interrupted", chunks=50, chunk_delay=0.02), TextReply("next"))
    await client.send({"type": "response.create"})
    await client.recv_until("response.audio.delta")
    await fake_azure.user_audio_turn(None)
    first_done = await client.recv_until("response.done")
    assert first_done[-1]["response"]["status_details"]["reason"] == "turn_detected"
    second = await client.recv_until("response.done")
    assert second[-1]["response"]["status"] == "completed"


# --------------------------------------------------------------------------- fault injection


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_reject_next(fake_azure: FakeAzureRealtimeServer, client: RawClient) -> None:
    by_type = fake_azure.reject_next(
        "conversation.item.create", "server_error", "boom", error_type="server_error"
    )
    by_pred = fake_azure.reject_next(
        lambda e: e.get("item_id") == "item_b", "rate_limit_exceeded", "slow down", "item_id"
    )
    assert not by_type.fired
    event_id = await client.send(create(message("user", "a", "item_a")))
    error = (await client.recv())["error"]
    assert error == {
        "type": "server_error",
        "code": "server_error",
        "message": "boom",
        "param": None,
        "event_id": event_id,
    }
    assert by_type.fired and by_type.client_event is not None
    assert by_type.client_event["event_id"] == event_id
    assert fake_azure.conversation == []  # not applied
    await client.request(create(message("user", "a", "item_a")))  # one-shot: applied now
    await client.request(create(message("user", "b", "item_b")))
    error = await client.request({"type": "conversation.item.delete", "item_id": "item_b"})
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert by_pred.fired
    assert fake_azure.conversation_ids() == ["item_a", "item_b"]


@pytest.mark.protocols("preview")  # preview wire shapes; GA: test_fake_server_ga.py
async def test_drop_connections(fake_azure: FakeAzureRealtimeServer, connect: Connect) -> None:
    first = await connect()
    await first.request(create(message("user", "a", "item_a")))
    assert await fake_azure.drop_connections() == 1
    msg = await first.ws.receive(timeout=3)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    assert fake_azure.live_connections == 0
    assert [[i["id"] for i in c] for c in fake_azure.ended_conversations] == [["item_a"]]
    with pytest.raises(RuntimeError):
        await fake_azure.user_audio_turn(None)

    second = await connect()
    assert fake_azure.connections == 2
    assert fake_azure.conversation == []  # a new connection starts an empty conversation
    error = await second.request(create(message("user", "b"), "item_a"))
    assert error["error"]["code"] == "item_create_invalid_previous_item_id"
    assert {r.connection for r in fake_azure.received} == {0, 1}


# --------------------------------------------------------------------------- scale


def test_conversation_store_orders_and_indexes() -> None:
    conv = Conversation()
    assert conv.append({"id": "b", "type": "message"}) is None
    conv.insert_after(None, {"id": "a", "type": "message"})
    assert conv.append({"id": "d", "type": "function_call", "call_id": "c1"}) == "b"
    conv.insert_after("b", {"id": "c", "type": "message"})
    assert conv.ids() == ["a", "b", "c", "d"]
    assert conv.previous_id("c") == "b" and conv.last_id == "d"
    assert conv.has_function_call("c1")
    conv.delete("d")
    conv.delete("a")
    assert conv.ids() == ["b", "c"] and not conv.has_function_call("c1")
    with pytest.raises(KeyError):
        conv.insert_after("zz", {"id": "e"})
    with pytest.raises(ValueError):
        conv.append({"id": "b"})


async def test_large_conversation_throughput(
    fake_azure: FakeAzureRealtimeServer, client: RawClient
) -> None:
    n = 5000
    started = time.monotonic()
    # every item inserted at the beginning: a list-based store would be O(n) per event
    events = [create(message("user", str(i), f"item_{i}"), "root") for i in range(n)]
    events += [{"type": "conversation.item.delete", "item_id": f"item_{i}"} for i in range(0, n, 2)]
    await client.send_batch(events)
    for _ in events:
        await client.recv()
    elapsed = time.monotonic() - started
    assert fake_azure.conversation_ids() == [f"item_{i}" for i in range(n - 1, 0, -2)]
    assert not fake_azure.errors
    # 7,500 events round-trip; generous bound for a 2-core CI box
    assert elapsed < 20, elapsed


# --------------------------------------------------------------------------- real client


async def test_real_client_update_chat_ctx(fake_azure: FakeAzureRealtimeServer) -> None:
    """The unmodified client path works against the fake (not a regression test)."""
    from livekit.agents import llm

    model = make_model(fake_azure)
    sess = model.session()
    try:
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content="hello", id="item_user_1")
        ctx.add_message(role="assistant", content="hi, how can I help?", id="item_asst_1")
        await sess.update_chat_ctx(ctx)
        assert fake_azure.conversation_ids() == ["item_user_1", "item_asst_1"]
        assert fake_azure.conversation[1]["content"] == [
            wire_names(fake_azure.protocol).text_part("assistant", "hi, how can I help?")
        ]
        assert [e.code for e in fake_azure.errors] == []
        assert [i.id for i in sess.chat_ctx.items] == ["item_user_1", "item_asst_1"]
        assert fake_azure.received_types()[0] == "session.update"
    finally:
        await sess.aclose()
        await model.aclose()
    assert_all_valid(fake_azure)


async def test_real_client_reply_and_user_turn(fake_azure: FakeAzureRealtimeServer) -> None:
    """The client understands the fake's responses and user turns (not a regression test)."""
    from livekit.agents import llm

    model = make_model(fake_azure, modalities=["text"], **session_options(fake_azure.protocol))
    sess = model.session()
    transcripts: list[str] = []
    errors: list[llm.RealtimeModelError] = []
    sess.on("input_audio_transcription_completed", lambda ev: transcripts.append(ev.transcript))
    sess.on("error", errors.append)
    try:
        fake_azure.script(TextReply("Bonjour from the fake"))
        gen = await asyncio.wait_for(sess.generate_reply(), 5)
        assert gen.user_initiated  # response.metadata.client_event_id was echoed
        texts = []
        async for msg in gen.message_stream:
            texts.append("".join([t async for t in msg.text_stream]))
        assert texts == ["Bonjour from the fake"]
        await fake_azure.wait_idle()

        await fake_azure.wait_received("session.update")
        user_id = await fake_azure.user_audio_turn("what time is it")
        await fake_azure.wait_for(lambda: bool(transcripts))
        assert transcripts == ["what time is it"]
        assert fake_azure.conversation_ids()[-1] == user_id
        assert fake_azure.conversation[-1]["content"][0]["transcript"] == "what time is it"
        assert not fake_azure.errors and not errors
    finally:
        await sess.aclose()
        await model.aclose()
    assert_all_valid(fake_azure)


async def test_real_client_reconnects_after_drop(fake_azure: FakeAzureRealtimeServer) -> None:
    """A dropped connection makes the client reconnect and replay its context on a fresh one."""
    from livekit.agents import llm

    model = make_model(fake_azure)
    sess = model.session()
    try:
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content="hello", id="item_user_1")
        ctx.add_message(role="assistant", content="hi", id="item_asst_1")
        await sess.update_chat_ctx(ctx)
        assert await fake_azure.drop_connections() == 1
        await fake_azure.wait_connected(2)
        await fake_azure.wait_for(lambda: len(fake_azure.conversation) == 2)
        assert fake_azure.conversation_ids() == ["item_user_1", "item_asst_1"]
        assert [[i["id"] for i in c] for c in fake_azure.ended_conversations] == [
            ["item_user_1", "item_asst_1"]
        ]
        assert not fake_azure.errors
    finally:
        await sess.aclose()
        await model.aclose()
    assert_all_valid(fake_azure)
