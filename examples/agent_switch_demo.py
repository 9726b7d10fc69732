"""Agent switches on Azure OpenAI Realtime (preview and GA protocol), a system message per switch.

The flow of the user report this fork fixes: an ``AgentSession`` on
``openai.realtime.RealtimeModel.with_azure(...)`` whose agents hand over to each other through a
function tool, and every agent's ``on_enter`` adds a system message to its chat context with
``update_chat_ctx``. For each switch the demo prints the client events it cost (by type), the
errors the service answered and the time it took, then one summary line per protocol. The exit
code is 1 when the service reported an error (or a switch failed) on any protocol, 0 otherwise.

Protocols (``--protocol preview|ga|both``): ``with_azure()`` with an ``api_version`` gives the
preview protocol (``RealtimeModelBeta``), without one the GA protocol (``RealtimeModel`` on
``/openai/v1/realtime``).

Two targets:

* ``--fake`` (the default without Azure settings): the strict fake Azure realtime server of this
  repository's tests, started in-process on 127.0.0.1, once per protocol (default ``both``).
  The simulated caller speaks twice (audio turns), once while an agent switch is in progress.
* ``--azure`` (the default when ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY`` and a
  deployment, ``AZURE_OPENAI_DEPLOYMENT`` or ``--deployment``, are set): a real deployment. The
  protocol follows ``with_azure()``: preview when ``OPENAI_API_VERSION`` (or ``--api-version``)
  is set, GA otherwise; ``--protocol`` overrides that, and the demo says which one it chose and
  why. The caller's turns are text; an agent that does not call the transfer tool in time is
  switched directly (and the demo says so).

Run ``python examples/agent_switch_demo.py`` (or ``python3 dev.py demo`` against the built
wheel; arguments go after it, e.g. ``python3 dev.py demo --protocol ga``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from openai.types.beta.realtime.session import InputAudioTranscription

from livekit.agents import Agent, AgentSession, function_tool, llm
from livekit.plugins import openai

AGENTS = ("greeter", "billing", "support")
TRANSFER_TOOL = "transfer_to_next"
AZURE_ENV = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY")
DEPLOYMENT_ENV = "AZURE_OPENAI_DEPLOYMENT"
API_VERSION_ENV = "OPENAI_API_VERSION"
# the fake's deployment names, one per protocol (any name works on the fake)
FAKE_DEPLOYMENT = {"preview": "gpt-4o-realtime-preview", "ga": "gpt-realtime"}
# how long a real model gets to call the transfer tool before the demo switches directly
AZURE_TOOL_WAIT_S = 20.0
FLOW_TIMEOUT_S = {"fake": 30.0, "azure": 180.0}
# errors the plugin itself ignores (a response.cancel that found no active response)
IGNORED_ERROR_PREFIX = "Cancellation failed"

Mode = Literal["fake", "azure"]
Protocol = Literal["preview", "ga"]
PROTOCOLS: tuple[Protocol, ...] = ("preview", "ga")
PROTOCOL_LABEL = {"preview": "preview", "ga": "GA"}


def system_note(name: str) -> str:
    return f"NOTE: the caller was transferred to the {name} agent."


@dataclass
class Switch:
    """One agent activation: what its realtime session sent and was answered until it settled."""

    number: int
    agent: str
    came_from: str | None
    via: str
    requested_at: float
    entered_at: float | None = None
    settled: bool = False
    sync_s: float | None = None
    switch_s: float | None = None
    sync_error: str | None = None
    connected: bool = False
    """the service sent the switch's realtime session any event (its connection was up)"""
    confirmed: bool = False
    """the service confirmed the create of the switch's system message (item created/added)"""
    events: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lost_audio: list[str] = field(default_factory=list)
    """audio items of the caller the sync deleted from the service (fake mode checks this)"""


class Demo:
    """Runs the flow and keeps the account of every switch."""

    def __init__(
        self, mode: Mode, protocol: Protocol, model: llm.RealtimeModel, fake: Any = None
    ) -> None:
        self.mode = mode
        self.protocol = protocol
        self.model = model
        self.fake = fake  # the fake server in --fake mode
        self.switches: list[Switch] = []
        self.late_errors: list[str] = []
        self.done = asyncio.Event()
        self.flow_error: str | None = None
        self.fatal_error: str | None = None
        """why the agent session closed itself (e.g. a refused connection), if it did"""
        self._tasks: set[asyncio.Task[None]] = set()
        # each agent activity opens its own realtime session: watch every one from its start
        new_session = model.session

        def session_with_probe() -> llm.RealtimeSession:
            rt_session = new_session()
            self._watch(rt_session, self.switches[-1])
            return rt_session

        setattr(model, "session", session_with_probe)  # noqa: B010

    def _watch(self, rt_session: llm.RealtimeSession, switch: Switch) -> None:
        def on_client_event(event: dict[str, Any]) -> None:
            if not switch.settled:
                switch.events[str(event.get("type"))] += 1

        def on_server_event(event: dict[str, Any]) -> None:
            switch.connected = True
            if event.get("type") in ("conversation.item.created", "conversation.item.added"):
                item = event.get("item") or {}
                texts = [part.get("text") for part in item.get("content") or []]
                if item.get("role") == "system" and system_note(switch.agent) in texts:
                    switch.confirmed = True
            if event.get("type") != "error":
                return
            error = event.get("error") or {}
            text = f"{error.get('code')}: {error.get('message')}"
            if str(error.get("message", "")).startswith(IGNORED_ERROR_PREFIX):
                switch.ignored.append(text)
            else:
                switch.errors.append(text)

        rt_session.on("openai_client_event_queued", on_client_event)
        rt_session.on("openai_server_event_received", on_server_event)

    def request_switch(self, agent: str, came_from: str | None, via: str) -> None:
        self.switches.append(
            Switch(len(self.switches) + 1, agent, came_from, via, time.perf_counter())
        )

    def spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as e:  # reported in the account, the demo goes on to its end
                self.fail(f"{type(e).__name__}: {e}")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def fail(self, reason: str) -> None:
        self.flow_error = self.flow_error or reason
        self.done.set()

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


class SwitchAgent(Agent):
    """Agent ``index`` of the flow: notes itself in the context on entry, then hands over."""

    def __init__(self, demo: Demo, index: int, chat_ctx: llm.ChatContext | None = None) -> None:
        self.demo = demo
        self.index = index
        self.agent_name = AGENTS[index]
        self.last = index == len(AGENTS) - 1
        self.transferring = False
        super().__init__(
            instructions=(
                f"You are the {self.agent_name} agent of a short demo. Answer in one sentence."
                + ("" if self.last else f" When asked to transfer, call {TRANSFER_TOOL}.")
            ),
            chat_ctx=chat_ctx,
        )

    @property
    def switch(self) -> Switch:
        return self.demo.switches[-1]

    async def on_enter(self) -> None:
        demo, switch = self.demo, self.switch
        switch.entered_at = time.perf_counter()
        caller: asyncio.Task[str] | None = None
        if demo.mode == "fake" and self.agent_name == "support":
            # the caller talks while the switch is in progress: the service holds their audio
            # turn before the new agent's context knows it (its transcript comes later)
            caller = await self._start_user_audio("and please check my last payment", 0.3)

        ctx = self.chat_ctx.copy()
        ctx.add_message(role="system", content=system_note(self.agent_name))
        started = time.perf_counter()
        try:
            await self.update_chat_ctx(ctx)
        except llm.RealtimeError as e:
            switch.sync_error = f"{type(e).__name__}: {e}"
        switch.sync_s = time.perf_counter() - started
        if switch.sync_error:
            switch.settled = True
            demo.fail(f"update_chat_ctx raised on switch {switch.number}")  # no use going on
            return
        # the switch: the framework's handover up to on_enter, then the sync (not the caller)
        switch.switch_s = switch.entered_at - switch.requested_at + switch.sync_s
        switch.settled = True
        if caller is not None:
            pending = not caller.done()
            item_id = await caller
            switch.notes.append(
                f"caller spoke during the switch (audio item {item_id}, transcript "
                f"{'still pending' if pending else 'already in'} at update_chat_ctx)"
            )
            if item_id not in demo.fake.conversation_ids():
                switch.lost_audio.append(item_id)

        if demo.mode == "fake" and self.agent_name == "billing":
            item_id = await (await self._start_user_audio("I have a question about my bill", 0.0))
            switch.notes.append(f"caller spoke after the switch (audio item {item_id})")

        if self.last:
            if demo.fake is not None:
                from fake_azure import AudioReply

                demo.fake.script(AudioReply("Support here. Your payment went through."))
            handle = self.session.generate_reply(
                instructions="Tell the caller their last payment went through."
            )
            handle.add_done_callback(lambda _: demo.done.set())
            return

        if demo.fake is not None:
            from fake_azure import FunctionCallReply

            demo.fake.script(FunctionCallReply(TRANSFER_TOOL))
            self.session.generate_reply()
        else:
            self.session.generate_reply(
                user_input="Please transfer me to the next agent.", tool_choice="required"
            )
            demo.spawn(self._switch_if_no_tool_call())

    async def _start_user_audio(self, words: str, transcript_delay: float) -> asyncio.Task[str]:
        """Start a caller's audio turn on the fake server; return once the agent's realtime
        session holds its item (the transcript follows after ``transcript_delay``)."""
        rt_session = self.realtime_llm_session
        before = {item.id for item in rt_session.chat_ctx.items}
        turn = asyncio.create_task(
            self.demo.fake.user_audio_turn(words, transcript_delay=transcript_delay, respond=False)
        )
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not turn.done():
            if any(item.id not in before for item in rt_session.chat_ctx.items):
                break
            await asyncio.sleep(0.005)
        return turn

    async def _switch_if_no_tool_call(self) -> None:
        await asyncio.sleep(AZURE_TOOL_WAIT_S)
        if not self.transferring:
            self.transferring = True
            self.demo.request_switch(
                AGENTS[self.index + 1], self.agent_name, "direct (the model did not call the tool)"
            )
            self.session.update_agent(SwitchAgent(self.demo, self.index + 1, self.chat_ctx))

    @function_tool
    async def transfer_to_next(self) -> Agent | None:
        """Transfer the caller to the next agent."""
        if self.last or self.transferring:
            return None
        self.transferring = True
        self.demo.request_switch(AGENTS[self.index + 1], self.agent_name, f"tool {TRANSFER_TOOL}")
        return SwitchAgent(self.demo, self.index + 1, chat_ctx=self.chat_ctx)


async def run_flow(demo: Demo) -> None:
    session: AgentSession[None] = AgentSession(llm=demo.model)
    closed = asyncio.Event()

    def on_close(ev: Any) -> None:
        if ev.error is not None:  # the session ended itself: the cause is the demo's outcome
            demo.fatal_error = str(getattr(ev.error, "error", ev.error))
            demo.fail(f"the agent session closed: {demo.fatal_error}")
        closed.set()
        demo.done.set()

    session.on("close", on_close)
    demo.request_switch(AGENTS[0], None, "session start")
    try:
        await session.start(SwitchAgent(demo, 0))
        try:
            await asyncio.wait_for(demo.done.wait(), FLOW_TIMEOUT_S[demo.mode])
        except asyncio.TimeoutError:
            demo.fail(f"the flow did not finish within {FLOW_TIMEOUT_S[demo.mode]:g}s")
        if demo.fake is not None:
            await demo.fake.wait_idle()
    finally:
        await demo.cancel_tasks()
        if not closed.is_set():
            # drain: aclose() alone interrupts, i.e. sends a response.cancel to an idle session
            session.shutdown(drain=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closed.wait(), 10.0)
        await session.aclose()


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def report(demo: Demo) -> tuple[int, str, str | None]:
    """Print the account of every switch; return the exit code and the summary line."""
    for s in demo.switches:
        origin = f"{s.came_from} -> " if s.came_from else "-> "
        print(f"switch {s.number}: {origin}{s.agent} (via {s.via})")
        if s.sync_s is None:
            print("  never entered")
            continue
        by_type = ", ".join(f"{n} {t}" for t, n in sorted(s.events.items())) or "none"
        print(f"  events sent:   {sum(s.events.values())} ({by_type})")
        print(f"  server errors: {len(s.errors)}")
        for text in s.errors:
            print(f"    - {text}")
        if s.ignored:
            print(
                f'  ignored:       {len(s.ignored)} "{IGNORED_ERROR_PREFIX}" error(s): a '
                "response.cancel found no active response (the plugin ignores these)"
            )
        if s.sync_error:
            print(f"  update_chat_ctx raised: {s.sync_error}")
        if not s.connected:
            # nothing was verified: the session never heard from the service
            print("  verified:      nothing (the realtime session never connected)")
            print(f"  time:          switch {ms(s.switch_s)}, update_chat_ctx {ms(s.sync_s)}")
            continue
        checks = [
            "no item.type / previous_item_id error"
            if not s.errors
            else "FAILED: the service returned errors",
            "the system message's create confirmed by the service"
            if s.confirmed
            else "NOT confirmed: the service announced no system message item",
        ]
        print(f"  verified:      {'; '.join(checks)}")
        print(f"  time:          switch {ms(s.switch_s)}, update_chat_ctx {ms(s.sync_s)}")
        for note in s.notes:
            print(f"  {note}")
        for item_id in s.lost_audio:
            print(f"  LOST: update_chat_ctx deleted the caller's audio item {item_id}")

    entered = [s for s in demo.switches if s.sync_s is not None]
    errors = sum(len(s.errors) for s in demo.switches)
    events = sum(sum(s.events.values()) for s in demo.switches)
    max_switch = max((s.switch_s or 0.0 for s in entered), default=0.0)
    max_sync = max((s.sync_s or 0.0 for s in entered), default=0.0)
    if demo.flow_error:
        print(f"flow failed: {demo.flow_error}")
    summary = (
        f"summary ({PROTOCOL_LABEL[demo.protocol]}, {demo.mode}): {len(entered)} switches, "
        f"{errors} server errors, {events} events sent, max switch {ms(max_switch)} "
        f"(update_chat_ctx max {ms(max_sync)})"
    )
    failed = (
        errors
        or demo.flow_error
        or len(entered) < len(AGENTS)
        or any(s.sync_error or s.lost_audio or not s.confirmed for s in entered)
    )
    return (1 if failed else 0), summary + (" FAILED" if failed else ""), demo.fatal_error


@contextlib.contextmanager
def without_env(name: str) -> Iterator[None]:
    """Hide an environment variable (``with_azure`` falls back to ``OPENAI_API_VERSION``)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


async def run_fake(protocol: Protocol) -> tuple[int, str, str | None]:
    tests_dir = str(Path(__file__).resolve().parents[1] / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from fake_azure import FakeAzureRealtimeServer, make_model, session_options

    async with FakeAzureRealtimeServer(
        protocol=protocol, deployment=FAKE_DEPLOYMENT[protocol]
    ) as server:
        with without_env(API_VERSION_ENV):
            # preview: api_version given; GA: none (session_options: that protocol's types)
            model = make_model(server, **session_options(protocol, create_response=False))
        print(
            f"target: fake Azure OpenAI Realtime server at {server.endpoint} (in-process), "
            f"{PROTOCOL_LABEL[protocol]} protocol, {type(model).__name__} on "
            f"{server.wire.path}"
        )
        demo = Demo("fake", protocol, model, fake=server)
        try:
            await run_flow(demo)
        finally:
            await model.aclose()
    return report(demo)


@dataclass
class AzureTarget:
    endpoint: str
    api_key: str
    deployment: str
    api_version: str | None


async def run_azure(target: AzureTarget, protocol: Protocol) -> tuple[int, str, str | None]:
    with without_env(API_VERSION_ENV):
        if protocol == "preview":
            model: llm.RealtimeModel = openai.realtime.RealtimeModel.with_azure(
                azure_deployment=target.deployment,
                azure_endpoint=target.endpoint,
                api_key=target.api_key,
                api_version=target.api_version,
                input_audio_transcription=InputAudioTranscription(model="whisper-1", language="en"),
            )
        else:
            # the caller's turns are text: no transcription (on GA its model is a deployment)
            model = openai.realtime.RealtimeModel.with_azure(
                azure_deployment=target.deployment,
                azure_endpoint=target.endpoint,
                api_key=target.api_key,
                input_audio_transcription=None,
            )
    print(
        f"target: Azure deployment {target.deployment} at {target.endpoint}, "
        f"{PROTOCOL_LABEL[protocol]} protocol ({type(model).__name__})"
    )
    demo = Demo("azure", protocol, model)
    try:
        await run_flow(demo)
    finally:
        await model.aclose()
    return report(demo)


def choose_azure_protocols(
    requested: str | None, api_version: str | None
) -> tuple[list[Protocol], str]:
    """The protocols to run on Azure and why; raises ``ValueError`` on an impossible request."""
    if requested is None:
        if api_version:
            return ["preview"], (
                f"{API_VERSION_ENV}/--api-version is set ({api_version}), so with_azure() "
                "returns RealtimeModelBeta (deprecated by Azure on 2026-04-30)"
            )
        return ["ga"], (
            f"no {API_VERSION_ENV} or --api-version, so with_azure() returns the GA "
            "RealtimeModel (/openai/v1/realtime)"
        )
    wanted = list(PROTOCOLS) if requested == "both" else [cast(Protocol, requested)]
    if "preview" in wanted and not api_version:
        raise ValueError(
            f"--protocol {requested} on Azure needs {API_VERSION_ENV} or --api-version "
            "for the preview protocol"
        )
    why = f"--protocol {requested}"
    if "ga" in wanted and api_version:
        why += f" (the GA run ignores {API_VERSION_ENV}/--api-version)"
    return wanted, why


async def run_all(runs: list[Callable[[], Awaitable[tuple[int, str, str | None]]]]) -> int:
    code, summaries, causes = 0, [], []
    for run in runs:
        run_code, summary, cause = await run()
        print()
        code = max(code, run_code)
        summaries.append(summary)
        if cause:
            causes.append(cause)
    for summary in summaries:
        print(summary)
    for cause in causes:  # why a run could not even start: the last line(s)
        print(f"error: {cause}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--fake", action="store_true", help="use the in-process fake server")
    target.add_argument("--azure", action="store_true", help="use a real Azure deployment")
    parser.add_argument(
        "--protocol",
        choices=("preview", "ga", "both"),
        help="fake: default both; Azure: default preview if OPENAI_API_VERSION is set, else GA",
    )
    parser.add_argument(
        "--deployment", help=f"Azure deployment (default: ${DEPLOYMENT_ENV})", default=None
    )
    parser.add_argument(
        "--api-version", help=f"preview api-version (default: ${API_VERSION_ENV})", default=None
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the plugin's info")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    deployment = args.deployment or os.environ.get(DEPLOYMENT_ENV)
    api_version = args.api_version or os.environ.get(API_VERSION_ENV) or None
    configured = all(os.environ.get(n) for n in AZURE_ENV) and bool(deployment)
    runs: list[Callable[[], Awaitable[tuple[int, str, str | None]]]] = []
    print(f"plugin: livekit-plugins-openai {openai.__version__}")
    if args.azure or (configured and not args.fake):
        missing = [n for n in AZURE_ENV if not os.environ.get(n)]
        if not deployment:
            missing.append(f"{DEPLOYMENT_ENV} (or --deployment)")
        if missing:
            print(f"error: --azure needs {', '.join(missing)}", file=sys.stderr)
            return 2
        assert deployment is not None
        azure = AzureTarget(
            os.environ["AZURE_OPENAI_ENDPOINT"],
            os.environ["AZURE_OPENAI_API_KEY"],
            deployment,
            api_version,
        )
        try:
            protocols, why = choose_azure_protocols(args.protocol, api_version)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"protocol: {', '.join(PROTOCOL_LABEL[p] for p in protocols)}, because {why}")
        runs = [functools.partial(run_azure, azure, p) for p in protocols]
    else:
        protocols = (
            list(PROTOCOLS) if args.protocol in (None, "both") else [cast(Protocol, args.protocol)]
        )
        runs = [functools.partial(run_fake, p) for p in protocols]
    return asyncio.run(run_all(runs))


if __name__ == "__main__":
    sys.exit(main())
