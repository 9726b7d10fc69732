"""A strict fake of Azure OpenAI's Realtime websocket: the protocol-neutral engine.

The server listens on 127.0.0.1 only and speaks one of Azure's two realtime protocols on its
real route: ``protocol="preview"`` (``GET /openai/realtime?api-version=...&deployment=...``,
``preview.py``) or ``protocol="ga"`` (``GET /openai/v1/realtime?model=...``, ``ga.py``). This
module holds what both share: connections, the conversation of each (``conversation.py``),
scripted replies, audio turns, rejections and drops. It emits neutral events that the protocol
layer translates into its own names and shapes, and it keeps one authoritative, ordered
conversation per websocket connection. Client events are processed strictly in order and
validated with the error codes the real service uses; every guess about Azure's behaviour is
marked "guess" (or "inferred") in a comment. Tests drive server-side turns (user speech, scripted
responses, network drops, injected rejections) through the async methods of
:class:`FakeAzureRealtimeServer`.

Observed on Azure (from a user's report): ``missing_required_parameter`` on ``item.type`` and
``item_create_invalid_previous_item_id`` with their messages, ``empty_array`` on
``item.content``, error events echoing the client ``event_id``, client item ids of at most 32
characters, in-order processing. Event shapes and sequences follow the protocol's openai types
and OpenAI's documented event order; that Azure emits exactly these is assumed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestServer

from . import conversation as c, protocol as p
from .conversation import Conversation, JsonDict
from .ga import GaProtocol
from .preview import DEFAULT_API_VERSION, PreviewProtocol
from .script import (
    AudioReply,
    FunctionCallReply,
    PlannedResponse,
    Reply,
    TextReply,
    pcm16_chunk_b64,
    split_text,
)

__all__ = ["DEFAULT_API_VERSION", "FakeAzureRealtimeServer"]

DEFAULT_API_KEY = "fake-azure-api-key"
DEFAULT_DEPLOYMENT = "gpt-4o-realtime-preview"
PROTOCOLS = ("preview", "ga")

# Guess: Azure documents no frame limit; OpenAI's is around 15 MiB. Large enough for the
# base64 `input_audio` parts a client may send when restoring a chat context.
MAX_MESSAGE_SIZE = 15 * 1024 * 1024

Predicate = Callable[[JsonDict], bool]


@dataclass
class ReceivedEvent:
    """A client event as the server parsed it, with the index of its connection (0-based)."""

    connection: int
    event: JsonDict


@dataclass
class SentEvent:
    """A server event that was sent (or attempted) on a connection."""

    connection: int
    event: JsonDict


@dataclass
class ErrorRecord:
    """An ``error`` event the server sent and the client event that caused it.

    ``client_event`` is ``None`` when the frame could not be parsed into a JSON object.
    """

    connection: int
    event: JsonDict
    client_event: JsonDict | None

    @property
    def code(self) -> str | None:
        code: str | None = self.event["error"]["code"]
        return code

    @property
    def message(self) -> str:
        message: str = self.event["error"]["message"]
        return message

    @property
    def param(self) -> str | None:
        param: str | None = self.event["error"]["param"]
        return param

    @property
    def client_event_id(self) -> str | None:
        event_id: str | None = self.event["error"]["event_id"]
        return event_id


@dataclass
class Rejection:
    """A one-shot injected rejection, see :meth:`FakeAzureRealtimeServer.reject_next`."""

    match: str | Predicate
    error: p.ErrorSpec | None
    """The error to answer with; ``None``: no answer at all (see ``lose_next``)."""
    client_event: JsonDict | None = None
    """The client event that was rejected, once it happened."""
    echo_event_id: bool = True
    """Whether the error names the client event's ``event_id``."""

    @property
    def fired(self) -> bool:
        return self.client_event is not None

    def matches(self, event: JsonDict) -> bool:
        if isinstance(self.match, str):
            return event.get("type") == self.match
        return bool(self.match(event))


@dataclass
class _ActiveResponse:
    response: JsonDict
    out_of_band: bool
    output: list[JsonDict] = field(default_factory=list)
    open_item: JsonDict | None = None
    task: asyncio.Task[None] | None = None
    cancelled: bool = False


class _Connection:
    def __init__(
        self, index: int, ws: web.WebSocketResponse, request: web.Request, session: JsonDict
    ) -> None:
        self.index = index
        self.ws = ws
        self.request = request
        self.conversation = Conversation()
        self.session: JsonDict = session
        self.audio_buffer_bytes = 0
        self.audio_clock_ms = 0
        self.assistant_audio_ms: dict[str, int] = {}
        self.active: _ActiveResponse | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.finished = asyncio.Event()
        # False once the server stops reading the socket (``stop_reading``)
        self.reading = True


class FakeAzureRealtimeServer:
    """Fake Azure OpenAI Realtime server, see the module docstring.

    Args:
        protocol: ``"preview"`` or ``"ga"`` (or a protocol layer instance): the protocol and
            route the server speaks. A request on the other protocol's route gets a 404.
        legacy_event_names: GA only, see ``GaProtocol``.
        api_key: key expected in the ``api-key`` header (or as ``Authorization: Bearer``, an
            Entra token, until :meth:`rotate_token` sets the token apart).
        deployment: the only deployment name that exists.
        enforce_function_call_output_call_id: reject a ``function_call_output`` whose
            ``call_id`` matches no ``function_call`` in the conversation. Guess: OpenAI documents
            this check, unknown whether Azure's preview enforces it; hence switchable.
        reject_unknown_parameters: reject client fields the typed models do not declare with
            ``unknown_parameter`` (OpenAI does; assumed for Azure).
        validate_outgoing: validate every server event against the protocol's openai types
            before sending it (raises in the server on a mismatch; for debugging the fake).
    """

    def __init__(
        self,
        *,
        protocol: str | p.WireProtocol = "preview",
        legacy_event_names: bool = False,
        api_key: str = DEFAULT_API_KEY,
        deployment: str = DEFAULT_DEPLOYMENT,
        enforce_function_call_output_call_id: bool = True,
        reject_unknown_parameters: bool = True,
        validate_outgoing: bool = False,
    ) -> None:
        if isinstance(protocol, p.WireProtocol):
            self.wire: p.WireProtocol = protocol
        elif protocol == "preview":
            if legacy_event_names:
                raise ValueError("legacy_event_names is a GA option")
            self.wire = PreviewProtocol()
        elif protocol == "ga":
            self.wire = GaProtocol(legacy_event_names=legacy_event_names)
        else:
            raise ValueError(f"unknown protocol {protocol!r}, expected one of {PROTOCOLS}")
        self.api_key = api_key
        self.deployment = deployment
        self.enforce_function_call_output_call_id = enforce_function_call_output_call_id
        self.reject_unknown_parameters = reject_unknown_parameters
        self.validate_outgoing = validate_outgoing

        self.received: list[ReceivedEvent] = []
        self.sent: list[SentEvent] = []
        self.errors: list[ErrorRecord] = []
        self.responses: list[JsonDict] = []
        """The ``response`` object of every ``response.done`` sent, in order."""
        self.ended_conversations: list[list[JsonDict]] = []
        """The final conversation of every connection that ended, in order of ending."""
        self.handshake_failures: list[int] = []
        """HTTP status of every rejected websocket handshake."""
        self.bearer_tokens: set[str] = {api_key}
        """The ``Authorization: Bearer`` tokens accepted (Entra tokens), see :meth:`rotate_token`."""
        self.handshake_bearers: list[str | None] = []
        """The bearer token of every websocket handshake (``None``: none), in order."""
        self._refusals: deque[tuple[int, str | None]] = deque()
        self.typeless_creates = 0
        """Number of ``conversation.item.create`` events whose item had no ``type``."""
        self.connections = 0
        """Number of websocket connections accepted so far."""

        self._conns: list[_Connection] = []
        self._live: list[_Connection] = []
        self._script: deque[tuple[Reply, ...]] = deque()
        self._rejections: list[Rejection] = []
        self._drop_when: Callable[[int, JsonDict], bool] | None = None
        self._observers: list[Callable[[ReceivedEvent], None]] = []
        self.create_delay = 0.0
        """Seconds the server waits before handling each ``conversation.item.create``: a slow
        service (events are still processed in order; server-side turns go on meanwhile)."""
        self._received_counts: dict[str, int] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._test_server: TestServer | None = None
        self._handlers: dict[str, Callable[[_Connection, JsonDict], Awaitable[p.ErrorSpec | None]]]
        self._handlers = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_audio_append,
            "input_audio_buffer.commit": self._on_audio_commit,
            "input_audio_buffer.clear": self._on_audio_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening on 127.0.0.1 with an ephemeral port."""
        app = web.Application()
        app.router.add_get(self.wire.path, self._handle_realtime)
        for other in (PreviewProtocol.path, GaProtocol.path):
            if other != self.wire.path:
                app.router.add_get(other, self._handle_other_protocol)
        self._test_server = TestServer(app, host="127.0.0.1", port=None)
        await self._test_server.start_server()

    async def aclose(self) -> None:
        """Close every live connection (close code 1001) and stop the server."""
        for conn in list(self._live):
            if not conn.reading:
                self._abort(conn)  # no close handshake on a socket nobody reads
            conn.closed = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=WSCloseCode.GOING_AWAY), 1.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(conn.finished.wait(), 2.0)
        if self._test_server is not None:
            await self._test_server.close()
            self._test_server = None

    async def __aenter__(self) -> FakeAzureRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        if self._test_server is None or self._test_server.port is None:
            raise RuntimeError("server not started")
        return self._test_server.port

    @property
    def endpoint(self) -> str:
        """The ``azure_endpoint`` to give the client, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def protocol(self) -> str:
        """``"preview"`` or ``"ga"``."""
        return self.wire.name

    def ws_url(self, **query: str | None) -> str:
        """Websocket URL of the realtime route (for raw clients).

        Preview: ``api_version`` (default :data:`DEFAULT_API_VERSION`) and ``deployment``
        (default the server's); GA: ``model`` (default the server's deployment). ``None`` or
        ``""`` omits a parameter; other keywords are added to the query as they are.
        """
        return self.wire.ws_url(f"ws://127.0.0.1:{self.port}", self.deployment, **query)

    # ------------------------------------------------------------------ inspection

    @property
    def conversation(self) -> list[JsonDict]:
        """Items of the most recent connection's conversation, in order (live or ended), in the
        protocol's server shape (GA assistant content: ``output_text`` / ``output_audio``)."""
        if not self._conns:
            return []
        return [self.wire.render_item(i) for i in self._conns[-1].conversation]

    def conversation_ids(self) -> list[str]:
        """Item ids of :attr:`conversation`, in order."""
        return self._conns[-1].conversation.ids() if self._conns else []

    @property
    def session(self) -> JsonDict:
        """The session configuration of the most recent connection."""
        return self._conns[-1].session if self._conns else {}

    @property
    def live_connections(self) -> int:
        return len(self._live)

    def received_types(self, connection: int | None = None) -> list[str]:
        """Types of the received client events, optionally of one connection only."""
        return [
            r.event.get("type", "")
            for r in self.received
            if connection is None or r.connection == connection
        ]

    def sent_events(self, type_: str | None = None) -> list[JsonDict]:
        """Server events sent so far, optionally only those of one type."""
        return [s.event for s in self.sent if type_ is None or s.event.get("type") == type_]

    def received_count(self, event_type: str) -> int:
        return self._received_counts.get(event_type, 0)

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        if not self._waiters:
            return
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds.

        It is re-checked after every server state change, and every 10 ms: a predicate on the
        client's state (a transcript the client received) can become true after the server's
        last change.

        Raises:
            asyncio.TimeoutError: if it does not hold within ``timeout`` seconds of free event
                loop (time the loop was held, by a long callback or a gc pause, is not counted:
                nothing could have happened then).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                raise asyncio.TimeoutError
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.add(fut)
            started = loop.time()
            await asyncio.wait({fut}, timeout=0.01)
            self._waiters.discard(fut)
            if not fut.done():
                deadline += max(0.0, loop.time() - started - 0.01)

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` connections were accepted and one is live."""
        await self.wait_for(lambda: self.connections >= count and bool(self._live), timeout)

    async def wait_received(self, event_type: str, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` client events of ``event_type`` were processed (all connections)."""
        await self.wait_for(lambda: self.received_count(event_type) >= count, timeout)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no response is being generated on any live connection."""
        await self.wait_for(lambda: all(c.active is None for c in self._live), timeout)

    # ------------------------------------------------------------------ test controls

    def script(self, *responses: Reply | Sequence[Reply]) -> None:
        """Queue planned responses, consumed one per response (client or automatic).

        Each argument is one response: a single reply, or a sequence of replies for a response
        with several output items. With an empty queue a default reply is played: audio with a
        transcript if the session's (or ``response.create``'s) modalities include audio, else
        text.
        """
        for r in responses:
            if isinstance(r, (TextReply, AudioReply, FunctionCallReply)):
                self._script.append((r,))
            else:
                self._script.append(tuple(r))

    @property
    def pending_script(self) -> int:
        return len(self._script)

    def reject_next(
        self,
        match: str | Predicate,
        code: str,
        message: str,
        param: str | None = None,
        *,
        error_type: str = "invalid_request_error",
        echo_event_id: bool = True,
    ) -> Rejection:
        """Reject the next client event matching ``match`` (a type or a predicate) once.

        The event is answered with an error echoing its ``event_id`` and is not applied.
        ``echo_event_id=False`` leaves the error's ``event_id`` out (a simulated fault: an
        error that names no client event, e.g. a ``server_error``).
        """
        rej = Rejection(
            match=match,
            error=p.ErrorSpec(code, message, param, error_type),
            echo_event_id=echo_event_id,
        )
        self._rejections.append(rej)
        return rej

    def lose_next(self, match: str | Predicate) -> Rejection:
        """Neither apply nor answer the next client event matching ``match``, once.

        A simulated fault: the event's answer is lost (the service never reports it). The
        returned record's ``client_event`` is the event, once it happened.
        """
        rej = Rejection(match=match, error=None)
        self._rejections.append(rej)
        return rej

    async def answer_late(self, lost: Rejection) -> None:
        """Apply and answer now, on the current connection, the event ``lose_next`` held back
        (``lost`` must have fired): a service that answers long after the request."""
        assert lost.error is None and lost.client_event is not None, "nothing was held back"
        conn = self._current()
        event = lost.client_event
        handler = self._handlers[event["type"]]
        try:
            if spec := await handler(conn, event):
                await self._send_error(conn, spec, event)
        finally:
            self._notify()

    def observe(self, callback: Callable[[ReceivedEvent], None]) -> None:
        """Call ``callback`` with every client event as it arrives, before it is applied."""
        self._observers.append(callback)

    def rotate_token(self, token: str) -> None:
        """Accept only ``token`` as bearer token from now on: earlier ones expired (a 401).

        Live connections stay up (guess: Azure checks the token at the handshake only)."""
        self.bearer_tokens = {token}

    def refuse_handshakes(
        self, status: int, count: int = 1, *, retry_after: str | None = None
    ) -> None:
        """Answer the next ``count`` websocket handshakes with HTTP ``status`` (before checking
        credentials), with a ``Retry-After`` header when given: a busy or failing service."""
        self._refusals.extend([(status, retry_after)] * count)

    def drop_when(self, match: Callable[[int, JsonDict], bool]) -> None:
        """Drop the connection (as ``drop_connections`` does) on the next client event that
        ``match(connection_index, event)`` accepts, before applying it: a network drop in the
        middle of a burst of events, at a point a test chooses. One shot."""
        self._drop_when = match

    def stop_reading(self) -> None:
        """Stop reading the live connections' sockets: a service that no longer reads (a stalled
        peer). What the client sends stays in the TCP buffers, and once they are full its writes
        block; nothing that had not reached the server yet is received or answered. ``drop_connections`` and ``aclose``
        end such a connection by aborting it."""
        for conn in self._live:
            conn.reading = False
            transport = conn.request.transport
            if transport is not None:
                # the transport itself, not aiohttp's flow control, which resumes once read
                transport.pause_reading()

    def _abort(self, conn: _Connection) -> None:
        conn.closed = True
        transport = conn.request.transport
        if transport is not None:
            transport.abort()

    async def drop_connections(self, timeout: float = 5.0) -> int:
        """Abort every live connection's TCP transport (no close frame), like a network drop.

        Returns:
            the number of connections dropped.
        """
        conns = list(self._live)
        for conn in conns:
            self._abort(conn)
        for conn in conns:
            await asyncio.wait_for(conn.finished.wait(), timeout)
        return len(conns)

    async def user_audio_turn(
        self,
        transcript: str | None,
        transcript_delay: float = 0.0,
        respond: bool | None = None,
        *,
        speech_ms: int = 1000,
    ) -> str:
        """Play a user speech turn detected by server VAD on the current connection.

        Emits ``input_audio_buffer.speech_started`` / ``speech_stopped`` / ``committed`` and
        ``conversation.item.created`` (a user message with one ``input_audio`` part whose
        transcript is ``null``), appended at the end. If ``transcript`` is not ``None`` and the
        session has ``input_audio_transcription``, ``...input_audio_transcription.completed``
        follows after ``transcript_delay`` seconds (concurrently with the response). A response
        is played if ``respond`` is true, or if it is ``None`` and turn detection has
        ``create_response`` on. An active response is cancelled first when turn detection has
        ``interrupt_response`` on.

        Returns:
            the id of the user item.
        """
        conn = self._current()
        td = self.wire.turn_detection(conn.session)
        # Guess: an absent create_response/interrupt_response means on (OpenAI's default).
        if conn.active is not None and td and td.get("interrupt_response", True):
            await self._cancel_response(conn, "turn_detected")

        item_id = p.new_item_id()
        start_ms = conn.audio_clock_ms
        conn.audio_clock_ms += speech_ms
        conn.audio_buffer_bytes = 0
        await self._emit(
            conn,
            "input_audio_buffer.speech_started",
            {
                "audio_start_ms": start_ms,
                "item_id": item_id,
            },
        )
        await self._emit(
            conn,
            "input_audio_buffer.speech_stopped",
            {
                "audio_end_ms": conn.audio_clock_ms,
                "item_id": item_id,
            },
        )
        await self._commit_user_audio(conn, item_id)

        waits: list[asyncio.Task[None]] = []
        if transcript is not None and self.wire.transcription_on(conn.session):
            waits.append(
                self._spawn(conn, self._transcribe(conn, item_id, transcript, transcript_delay))
            )

        if respond is None:
            respond = td is not None and bool(td.get("create_response", True))
        if respond:
            if conn.active is not None:
                # Guess: without interruption the new response starts after the current one
                await self._wait_response_done(conn)
            if not conn.closed:
                active = await self._start_response(conn, None, None)
                if active is not None and active.task is not None:
                    waits.append(active.task)
        if waits:
            await asyncio.wait(waits)
        return item_id

    # ------------------------------------------------------------------ http / websocket

    async def _handle_realtime(self, request: web.Request) -> web.StreamResponse:
        # Guess: the order Azure checks things in (auth first) and the exact error bodies.
        bearer = request.headers.get("Authorization", "")
        token = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None
        self.handshake_bearers.append(token)
        if self._refusals:
            status, retry_after = self._refusals.popleft()
            # Guess: the body of a throttled (429) or failing (5xx) handshake
            headers = {"Retry-After": retry_after} if retry_after is not None else None
            return self._http_error(status, str(status), "Refused by the test.", headers)
        if request.headers.get("api-key") != self.api_key and token not in self.bearer_tokens:
            return self._http_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                "to provide a valid key for an active subscription and use a correct regional "
                "API endpoint for your resource.",
            )
        if rejected := self.wire.handshake_error(
            dict(request.query), request.headers, self.deployment
        ):
            return self._http_error(*rejected)

        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_SIZE, compress=False, timeout=1.0)
        if not ws.can_prepare(request).ok:
            return self._http_error(400, "BadRequest", "Expected a websocket upgrade request.")
        await ws.prepare(request)

        conn = _Connection(len(self._conns), ws, request, self.wire.default_session())
        self._conns.append(conn)
        self._live.append(conn)
        self.connections += 1
        try:
            await self._emit(
                conn,
                "session.created",
                {
                    "session": dict(conn.session),
                },
            )
            self._notify()
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_frame(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    # Guess: binary frames are refused like unparseable JSON
                    await self._send_error(
                        conn,
                        p.ErrorSpec("invalid_json", "Binary frames are not supported."),
                        None,
                    )
                else:
                    break
        except ConnectionResetError:
            pass
        finally:
            await self._end_connection(conn)
        return ws

    async def _handle_other_protocol(self, request: web.Request) -> web.StreamResponse:
        # Guess: a deployment of one protocol is not served on the other protocol's route
        return self._http_error(404, "404", "Resource not found")

    def _http_error(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.handshake_failures.append(status)
        self._notify()
        return web.json_response(
            {"error": {"code": code, "message": message}}, status=status, headers=headers
        )

    async def _end_connection(self, conn: _Connection) -> None:
        conn.closed = True
        conn.active = None
        tasks = [t for t in conn.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if conn in self._live:
            self._live.remove(conn)
        self.ended_conversations.append([self.wire.render_item(i) for i in conn.conversation])
        conn.finished.set()
        self._notify()

    def _current(self) -> _Connection:
        if not self._live:
            raise RuntimeError("no client is connected to the fake Azure server")
        return self._live[-1]

    def _spawn(self, conn: _Connection, coro: Awaitable[None]) -> asyncio.Task[None]:
        async def _run() -> None:
            await coro

        task = asyncio.create_task(_run(), name="fake_azure_task")
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)
        return task

    async def _emit(self, conn: _Connection, event_type: str, fields: JsonDict) -> None:
        """Send the protocol's events for the neutral event ``event_type`` with ``fields``."""
        for wire_type, wire_fields in self.wire.translate(event_type, fields):
            await self._send(conn, {"type": wire_type, "event_id": p.new_event_id(), **wire_fields})

    async def _send(self, conn: _Connection, event: JsonDict) -> None:
        if conn.closed or conn.ws.closed:
            return
        if self.validate_outgoing:
            self.wire.validate_server_event(event)
        self.sent.append(SentEvent(conn.index, event))
        try:
            await conn.ws.send_str(json.dumps(event))
        except (ConnectionResetError, RuntimeError):
            conn.closed = True
        self._notify()

    async def _send_error(
        self,
        conn: _Connection,
        spec: p.ErrorSpec,
        client_event: JsonDict | None,
        *,
        echo_event_id: bool = True,
    ) -> None:
        """Send an error about ``client_event``, naming its ``event_id`` if ``echo_event_id``."""
        event_id = (
            client_event.get("event_id") if client_event is not None and echo_event_id else None
        )
        ev = p.error_event(spec, event_id if isinstance(event_id, str) else None)
        self.errors.append(ErrorRecord(conn.index, ev, client_event))
        await self._send(conn, ev)

    async def _on_frame(self, conn: _Connection, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError as e:
            # Guess: code and wording for an unparseable frame
            await self._send_error(
                conn, p.ErrorSpec("invalid_json", f"Invalid JSON in client event: {e}."), None
            )
            return
        if not isinstance(event, dict):
            await self._send_error(
                conn,
                p.invalid_type("event", "expected an object"),
                None,  # guess
            )
            return

        self.received.append(ReceivedEvent(conn.index, event))
        etype = event.get("type")
        if isinstance(etype, str):
            self._received_counts[etype] = self._received_counts.get(etype, 0) + 1
        if etype == "conversation.item.create":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") is None:
                self.typeless_creates += 1

        for observer in self._observers:
            observer(self.received[-1])

        if self._drop_when is not None and self._drop_when(conn.index, event):
            self._drop_when = None
            self._abort(conn)
            return

        try:
            for i, rej in enumerate(self._rejections):
                if rej.matches(event):
                    del self._rejections[i]
                    rej.client_event = event
                    if rej.error is not None:
                        await self._send_error(
                            conn, rej.error, event, echo_event_id=rej.echo_event_id
                        )
                    return

            if etype is None:
                # guess: code/param for an event without `type`
                await self._send_error(conn, p.missing_param("type"), event)
                return
            handler = self._handlers.get(etype) if isinstance(etype, str) else None
            if handler is None:
                # `unknown_event` is inferred. OpenAI may instead answer `invalid_value` with
                # param `type` ("Invalid value: '...'. Supported values are: ...").
                await self._send_error(
                    conn,
                    p.ErrorSpec(
                        "unknown_event",
                        f"Invalid value: '{etype}'. Supported values are: "
                        + ", ".join(f"'{t}'" for t in self._handlers)
                        + ".",
                        "type",
                    ),
                    event,
                )
                return
            if spec := await handler(conn, event):
                await self._send_error(conn, spec, event)
        finally:
            self._notify()

    # ------------------------------------------------------------------ session / audio

    async def _on_session_update(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.apply_session_update(conn.session, ev, self.reject_unknown_parameters):
            return spec
        await self._emit(conn, "session.updated", {"session": dict(conn.session)})
        return None

    async def _on_audio_append(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        try:
            n = len(base64.b64decode(ev["audio"], validate=True))
        except (binascii.Error, ValueError):
            # Guess: code and wording for non-base64 audio
            return p.ErrorSpec("invalid_value", "Invalid 'audio': expected base64 data.", "audio")
        conn.audio_buffer_bytes += n
        conn.audio_clock_ms += n // self.wire.bytes_per_ms(conn.session)
        # Note: the fake does not run VAD on appended audio; speech turns are scripted with
        # `user_audio_turn`.
        return None

    async def _on_audio_commit(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        buffered_ms = conn.audio_buffer_bytes / self.wire.bytes_per_ms(conn.session)
        if buffered_ms < 100:
            # code and wording as OpenAI sends them (believed identical on Azure)
            return p.ErrorSpec(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        conn.audio_buffer_bytes = 0
        # Guess: a manual commit does not trigger a response, and no transcript is produced
        # (the fake cannot transcribe client audio).
        await self._commit_user_audio(conn, p.new_item_id())
        return None

    async def _on_audio_clear(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        conn.audio_buffer_bytes = 0
        await self._emit(conn, "input_audio_buffer.cleared", {})
        return None

    async def _commit_user_audio(self, conn: _Connection, item_id: str) -> None:
        item: JsonDict = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = conn.conversation.append(item)
        await self._emit(
            conn,
            "input_audio_buffer.committed",
            {
                "item_id": item_id,
                "previous_item_id": previous,
            },
        )
        await self._item_stages(conn, item, "conversation.item.added", "conversation.item.done")

    async def _item_stages(self, conn: _Connection, item: JsonDict, *stages: str) -> None:
        """Announce ``item`` (stored in the conversation) at the neutral ``stages``.

        Preview: ``conversation.item.created`` for the "added" stage. GA:
        ``conversation.item.added`` (the item as added) and ``conversation.item.done`` (the
        final item). Guess: for user audio and client creates both come at once, the audio
        item's transcript following in ``...input_audio_transcription.completed``.
        """
        for stage in stages:
            previous = (
                conn.conversation.previous_id(item["id"])
                if item["id"] in conn.conversation
                else None
            )
            await self._emit(conn, stage, {"previous_item_id": previous, "item": c.copy_item(item)})

    async def transcribe(self, item_id: str, transcript: str) -> None:
        """Complete the transcription of the user turn ``item_id`` now, on the current
        connection (for a turn played with ``transcript=None``, at a moment a test chooses)."""
        await self._transcribe(self._current(), item_id, transcript, 0.0)

    async def _transcribe(
        self, conn: _Connection, item_id: str, transcript: str, delay: float
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if (item := conn.conversation.get(item_id)) is not None:
            item["content"][0]["transcript"] = transcript
        # Guess: Azure's preview sends no usage; the typed model requires one, so a
        # duration-based usage (whisper-style) is sent.
        await self._emit(
            conn,
            "conversation.item.input_audio_transcription.completed",
            {
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
                "usage": {"type": "duration", "seconds": 1.0},
            },
        )

    # ------------------------------------------------------------------ conversation items

    async def _on_item_create(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        conv = conn.conversation
        if spec := c.precheck_create(ev):
            return spec
        # types, literals and unknown fields (OpenAI's schema errors; assumed for Azure)
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        checked = c.check_create(
            conv,
            ev,
            allowed_content=self.wire.allowed_content,
            to_neutral=self.wire.to_neutral,
            enforce_function_call_output_call_id=self.enforce_function_call_output_call_id,
        )
        if isinstance(checked, p.ErrorSpec):
            return checked
        item, previous = checked
        if previous is None:  # absent (guess: or `null`): append at the end
            previous = conv.append(item)
        elif previous == "root":  # at the beginning
            conv.insert_after(None, item)
            previous = None
        else:
            conv.insert_after(previous, item)
        await self._item_stages(conn, item, "conversation.item.added", "conversation.item.done")
        return None

    async def _on_item_delete(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        item_id = ev["item_id"]
        if item_id not in conn.conversation:
            # code inferred; message follows the known "Error adding item" wording; param guessed
            return p.ErrorSpec(
                "item_delete_invalid_item_id",
                f"Error deleting item: the item with id '{item_id}' does not exist.",
                "item_id",
            )
        conn.conversation.delete(item_id)
        conn.assistant_audio_ms.pop(item_id, None)
        await self._emit(conn, "conversation.item.deleted", {"item_id": item_id})
        return None

    async def _on_item_truncate(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        item_id, content_index, end_ms = ev["item_id"], ev["content_index"], ev["audio_end_ms"]
        item = conn.conversation.get(item_id)
        if item is None:
            # code and message inferred (patterned on the delete error)
            return p.ErrorSpec(
                "item_truncate_invalid_item_id",
                f"Error truncating item: the item with id '{item_id}' does not exist.",
                "item_id",
            )
        # Guess: codes/messages below (OpenAI only documents that assistant audio can be cut)
        if item.get("type") != "message" or item.get("role") != "assistant":
            return p.ErrorSpec(
                "invalid_value", "Only assistant messages can be truncated.", "item_id"
            )
        content = item.get("content") or []
        if not 0 <= content_index < len(content) or content[content_index]["type"] != "audio":
            return p.ErrorSpec(
                "invalid_value",
                f"Invalid 'content_index': no audio content at index {content_index}.",
                "content_index",
            )
        audio_ms = conn.assistant_audio_ms.get(item_id, 0)
        if end_ms < 0 or end_ms > audio_ms:
            return p.ErrorSpec(
                "invalid_value",
                f"Audio content of {audio_ms}ms is already shorter than {end_ms}ms",
                "audio_end_ms",
            )
        conn.assistant_audio_ms[item_id] = end_ms
        # OpenAI documents that truncation deletes the server-side transcript (so no text
        # the user did not hear stays in context); assumed for Azure.
        content[content_index]["transcript"] = ""
        await self._emit(
            conn,
            "conversation.item.truncated",
            {
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": end_ms,
            },
        )
        return None

    async def _on_item_retrieve(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        item = conn.conversation.get(ev["item_id"])
        if item is None:
            # code and message inferred; also a guess that the preview has this event at all
            return p.ErrorSpec(
                "item_retrieve_invalid_item_id",
                f"Error retrieving item: the item with id '{ev['item_id']}' does not exist.",
                "item_id",
            )
        await self._emit(
            conn,
            "conversation.item.retrieved",
            {
                "item": c.copy_item(item),
            },
        )
        return None

    # ------------------------------------------------------------------ responses

    async def _on_response_create(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        if conn.active is not None:
            # OpenAI's code and wording (believed identical on Azure)
            return p.ErrorSpec(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{conn.active.response['id']}. Wait until the response is finished before "
                "creating a new one.",
            )
        params = ev.get("response") or {}
        await self._start_response(conn, params, params.get("metadata"))
        return None

    async def _on_response_cancel(self, conn: _Connection, ev: JsonDict) -> p.ErrorSpec | None:
        if spec := self.wire.check_event(ev, self.reject_unknown_parameters):
            return spec
        rid = ev.get("response_id")
        if conn.active is None or (rid is not None and rid != conn.active.response["id"]):
            # OpenAI's code and wording (believed identical on Azure); the client ignores
            # errors starting with "Cancellation failed"
            return p.ErrorSpec(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
            )
        await self._cancel_response(conn, "client_cancelled")
        return None

    def _next_plan(self, modalities: list[str]) -> tuple[Reply, ...]:
        if self._script:
            return self._script.popleft()
        if "audio" in modalities:
            return (AudioReply("This is the fake Azure server speaking."),)
        return (TextReply("This is the fake Azure server."),)

    async def _start_response(
        self, conn: _Connection, params: JsonDict | None, metadata: Any
    ) -> _ActiveResponse | None:
        params = params or {}
        wanted, out_of_band = self.wire.response_params(params)
        modalities = wanted or self.wire.output_modalities(conn.session)
        plan = self._next_plan(modalities)
        response: JsonDict = {
            "id": p.new_response_id(),
            "object": "realtime.response",
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "usage": None,
            "metadata": metadata,
            "modalities": list(modalities),
        }
        # Guess: `conversation: "none"` (out-of-band) responses are not stored; other
        # `response.create` options (instructions, tools, input) only affect generation.
        active = _ActiveResponse(response=response, out_of_band=out_of_band)
        conn.active = active
        await self._emit(conn, "response.created", {"response": dict(response)})
        if active.cancelled or conn.closed:
            return None
        active.task = self._spawn(conn, self._run_response(conn, active, plan))
        return active

    async def _wait_response_done(self, conn: _Connection) -> None:
        while conn.active is not None and not conn.closed:
            task = conn.active.task
            if task is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([task])

    async def _run_response(
        self, conn: _Connection, active: _ActiveResponse, plan: PlannedResponse
    ) -> None:
        for reply in plan:
            if isinstance(reply, FunctionCallReply):
                await self._play_function_call(conn, active, reply)
            else:
                await self._play_message(conn, active, reply)
        usage = self._usage(conn, active)
        if conn.active is active:
            conn.active = None
        await self._finish_response(conn, active, "completed", None, usage)

    def _usage(self, conn: _Connection, active: _ActiveResponse) -> JsonDict:
        text_out = audio_out = 0
        for item in active.output:
            for part in item.get("content") or []:
                text_out += len(part.get("text") or part.get("transcript") or "") // 4 + 1
            if item["type"] == "function_call":
                text_out += len(item.get("arguments") or "") // 4 + 1
            audio_out += conn.assistant_audio_ms.get(item["id"], 0) // 50
        text_in = 10 * len(conn.conversation) + 20
        return {
            "total_tokens": text_in + text_out + audio_out,
            "input_tokens": text_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {"cached_tokens": 0, "text_tokens": text_in, "audio_tokens": 0},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    async def _finish_response(
        self,
        conn: _Connection,
        active: _ActiveResponse,
        status: str,
        details: JsonDict | None,
        usage: JsonDict | None,
    ) -> None:
        response = active.response
        response.update(
            status=status,
            status_details=details,
            output=[c.copy_item(i) for i in active.output],
            usage=usage,
        )
        self.responses.append(response)
        await self._emit(conn, "response.done", {"response": dict(response)})

    async def _cancel_response(self, conn: _Connection, reason: str) -> None:
        active = conn.active
        if active is None:
            return
        conn.active = None
        active.cancelled = True
        if active.task is not None and not active.task.done():
            active.task.cancel()
            await asyncio.wait([active.task])
        # Guess: the partially generated item is closed with status "incomplete" and stays in
        # the conversation with what was generated so far.
        if (item := active.open_item) is not None:
            item["status"] = "incomplete"
            active.open_item = None
            await self._emit(
                conn,
                "response.output_item.done",
                {
                    "response_id": active.response["id"],
                    "output_index": len(active.output) - 1,
                    "item": c.copy_item(item),
                },
            )
            if not active.out_of_band:
                await self._item_stages(conn, item, "conversation.item.done")
        await self._finish_response(
            conn, active, "cancelled", {"type": "cancelled", "reason": reason}, None
        )

    async def _add_output_item(
        self, conn: _Connection, active: _ActiveResponse, item: JsonDict
    ) -> int:
        index = len(active.output)
        active.output.append(item)
        active.open_item = item
        rid = active.response["id"]
        await self._emit(
            conn,
            "response.output_item.added",
            {
                "response_id": rid,
                "output_index": index,
                "item": c.copy_item(item),
            },
        )
        if not active.out_of_band:
            conn.conversation.append(item)
            await self._item_stages(conn, item, "conversation.item.added")
        return index

    async def _close_output_item(
        self, conn: _Connection, active: _ActiveResponse, index: int, item: JsonDict
    ) -> None:
        item["status"] = "completed"
        active.open_item = None
        await self._emit(
            conn,
            "response.output_item.done",
            {
                "response_id": active.response["id"],
                "output_index": index,
                "item": c.copy_item(item),
            },
        )
        if not active.out_of_band:
            await self._item_stages(conn, item, "conversation.item.done")

    async def _play_message(
        self, conn: _Connection, active: _ActiveResponse, reply: TextReply | AudioReply
    ) -> None:
        rid = active.response["id"]
        item: JsonDict = {
            "id": p.new_item_id(),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        index = await self._add_output_item(conn, active, item)
        ids = {"response_id": rid, "item_id": item["id"], "output_index": index, "content_index": 0}
        is_audio = isinstance(reply, AudioReply)
        part: JsonDict = (
            {"type": "audio", "transcript": ""} if is_audio else {"type": "text", "text": ""}
        )
        item["content"].append(part)
        await self._emit(
            conn,
            "response.content_part.added",
            {
                **ids,
                "part": dict(part),
            },
        )
        if isinstance(reply, AudioReply):
            conn.assistant_audio_ms[item["id"]] = 0
            deltas = split_text(reply.transcript, max(1, reply.chunks))
            chunk = pcm16_chunk_b64(reply.chunk_ms)
            for i in range(max(len(deltas), reply.chunks)):
                if i < reply.chunks:
                    await self._emit(
                        conn,
                        "response.audio.delta",
                        {
                            **ids,
                            "delta": chunk,
                        },
                    )
                    conn.assistant_audio_ms[item["id"]] += reply.chunk_ms
                if i < len(deltas):
                    part["transcript"] += deltas[i]
                    await self._emit(
                        conn,
                        "response.audio_transcript.delta",
                        {
                            **ids,
                            "delta": deltas[i],
                        },
                    )
                if reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
            await self._emit(conn, "response.audio.done", {**ids})
            await self._emit(
                conn,
                "response.audio_transcript.done",
                {
                    **ids,
                    "transcript": reply.transcript,
                },
            )
        else:
            await self._stream_text(
                conn, "response.text", ids, part, "text", reply.text, reply.chunk_delay
            )
        await self._emit(
            conn,
            "response.content_part.done",
            {
                **ids,
                "part": dict(part),
            },
        )
        await self._close_output_item(conn, active, index, item)

    async def _stream_text(
        self,
        conn: _Connection,
        event_prefix: str,
        ids: JsonDict,
        target: JsonDict,
        key: str,
        text: str,
        chunk_delay: float,
        done_fields: JsonDict | None = None,
    ) -> None:
        """Stream ``text`` as ``<event_prefix>.delta`` events, then ``<event_prefix>.done``.

        Each delta is also appended to ``target[key]`` (the content part or the item being
        built), and the done event carries the whole text under ``key``.
        """
        for delta in split_text(text):
            target[key] += delta
            await self._emit(conn, f"{event_prefix}.delta", {**ids, "delta": delta})
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
        await self._emit(conn, f"{event_prefix}.done", {**ids, **(done_fields or {}), key: text})

    async def _play_function_call(
        self, conn: _Connection, active: _ActiveResponse, reply: FunctionCallReply
    ) -> None:
        call_id = reply.call_id or p.new_call_id()
        arguments = reply.arguments_json
        item: JsonDict = {
            "id": p.new_item_id(),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": reply.name,
            "call_id": call_id,
            "arguments": "",
        }
        index = await self._add_output_item(conn, active, item)
        ids = {
            "response_id": active.response["id"],
            "item_id": item["id"],
            "output_index": index,
            "call_id": call_id,
        }
        await self._stream_text(
            conn,
            "response.function_call_arguments",
            ids,
            item,
            "arguments",
            arguments,
            reply.chunk_delay,
            # GA's done event carries the function name (the preview layer drops it)
            done_fields={"name": reply.name},
        )
        await self._close_output_item(conn, active, index, item)
