"""Opt-in live check: one short real Azure OpenAI Realtime session per protocol.

Like upstream's live realtime tests, it runs only when the service is configured and is skipped
otherwise. It needs ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY`` and
``AZURE_OPENAI_DEPLOYMENT`` (or ``--endpoint``, ``--api-key``, ``--deployment``); when any is
missing it prints one line naming what is missing and exits 0. CI sets none of them.

When configured it runs, through ``openai.realtime.RealtimeModel.with_azure(...)``:

* the GA protocol, always (``with_azure`` without ``api_version``: the GA ``RealtimeModel`` on
  ``/openai/v1/realtime?model=<deployment>``);
* the preview protocol only when ``OPENAI_API_VERSION`` (or ``--api-version``) is set
  (``RealtimeModelBeta`` on ``/openai/realtime?api-version=…&deployment=…``; Azure deprecated it
  on 2026-04-30 and retired the preview models on 2026-03-24). ``AZURE_OPENAI_PREVIEW_DEPLOYMENT``
  (or ``--preview-deployment``) names its deployment when it differs.

Each session, in text modality: connect; sync the first agent's context (a user and an assistant
message); sync the context of an agent switch (an ``AgentHandoff``, an ``AgentConfigUpdate`` and
a system message added, new instructions); sync a user text message and ask for a reply
(``generate_reply``). It prints what the service answered: the server and client events by type,
every error with its code and param, the reply text and the time of each step, then one
``live (<protocol>): …`` line per protocol. Exit code 1 when a step failed or the service sent
an error, 0 otherwise (also when skipped).

``--protocol ga`` or ``preview`` runs only that one. ``--endpoint http://127.0.0.1:PORT`` aims
the check at a local server such as the fake of ``tests/fake_azure`` (``tests/test_live_check.py``
does so); nothing else differs from a real run.

Run ``python3 dev.py live`` (the built wheel in its own venv) or ``python tools/live_check.py``
where the fork is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from livekit.agents import llm

ENDPOINT_ENV = "AZURE_OPENAI_ENDPOINT"
API_KEY_ENV = "AZURE_OPENAI_API_KEY"
DEPLOYMENT_ENV = "AZURE_OPENAI_DEPLOYMENT"
PREVIEW_DEPLOYMENT_ENV = "AZURE_OPENAI_PREVIEW_DEPLOYMENT"
API_VERSION_ENV = "OPENAI_API_VERSION"
REQUIRED = (
    (ENDPOINT_ENV, "--endpoint"),
    (API_KEY_ENV, "--api-key"),
    (DEPLOYMENT_ENV, "--deployment"),
)
# errors the plugin itself ignores (a response.cancel that found no active response)
IGNORED_ERROR_PREFIX = "Cancellation failed"

Protocol = Literal["ga", "preview"]
LABEL = {"ga": "GA", "preview": "preview"}

GREETER = "You are the greeter agent of a short test. Answer in one short sentence."
BILLING = (
    "You are the billing agent of a short test. Answer in one short sentence and say that you "
    "are the billing agent."
)
SWITCH_NOTE = "NOTE: the caller was transferred to the billing agent."
QUESTION = "Which agent am I talking to now? Answer in one short sentence."


@dataclass
class Settings:
    endpoint: str
    api_key: str
    deployment: str
    preview_deployment: str
    api_version: str | None


@dataclass
class Step:
    name: str
    seconds: float | None = None
    error: str | None = None


@dataclass
class Run:
    """What one protocol's session sent, was answered and how long each step took."""

    protocol: Protocol
    why: str
    url: str
    model_class: str = ""
    steps: list[Step] = field(default_factory=list)
    server_events: Counter[str] = field(default_factory=Counter)
    client_events: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    session_errors: list[str] = field(default_factory=list)
    reply: str = ""
    first_text_s: float | None = None
    reply_s: float | None = None
    response_status: str | None = None
    """``response.done``'s status (and status_details when not completed)"""

    @property
    def failed(self) -> bool:
        return bool(self.errors or any(s.error for s in self.steps) or not self.reply)


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings | list[str]:
    """The settings, or the environment variables of the missing ones."""
    endpoint = args.endpoint or environ.get(ENDPOINT_ENV)
    api_key = args.api_key or environ.get(API_KEY_ENV)
    deployment = args.deployment or environ.get(DEPLOYMENT_ENV)
    given = {ENDPOINT_ENV: endpoint, API_KEY_ENV: api_key, DEPLOYMENT_ENV: deployment}
    missing = [env for env, _ in REQUIRED if not given[env]]
    if missing or not endpoint or not api_key or not deployment:
        return missing
    return Settings(
        endpoint=endpoint,
        api_key=api_key,
        deployment=deployment,
        preview_deployment=(
            args.preview_deployment or environ.get(PREVIEW_DEPLOYMENT_ENV) or deployment
        ),
        api_version=args.api_version or environ.get(API_VERSION_ENV) or None,
    )


def skip_line(missing: Sequence[str]) -> str:
    """One line: what is missing, and what the check would do with it."""
    one = len(missing) == 1
    names = missing[0] if one else f"{', '.join(missing[:-1])} and {missing[-1]}"
    flags = "/".join(flag for _, flag in REQUIRED)
    return (
        f"live check skipped: {names} {'is' if one else 'are'} not set (set "
        f"{'it' if one else 'them'}, or pass {flags}, to run one short Azure session per protocol; {API_VERSION_ENV} adds "
        "the preview one)"
    )


def plan(settings: Settings, only: Protocol | None) -> list[tuple[Protocol, str]]:
    """The protocols to run, each with why; an empty list when ``only`` cannot run."""
    runs: list[tuple[Protocol, str]] = []
    if only in (None, "ga"):
        runs.append(("ga", "always run: with_azure() without api_version"))
    if only in (None, "preview") and settings.api_version:
        runs.append(("preview", f"{API_VERSION_ENV}/--api-version is {settings.api_version}"))
    return runs


def url_of(settings: Settings, protocol: Protocol) -> str:
    base = settings.endpoint.rstrip("/").replace("http", "ws", 1)
    if protocol == "ga":
        return f"{base}/openai/v1/realtime?model={settings.deployment}"
    return (
        f"{base}/openai/realtime?api-version={settings.api_version}"
        f"&deployment={settings.preview_deployment}"
    )


@contextlib.contextmanager
def without_env(name: str) -> Iterator[None]:
    """Hide an environment variable (``with_azure`` falls back to ``OPENAI_API_VERSION``)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def make_model(settings: Settings, protocol: Protocol) -> llm.RealtimeModel:
    """``with_azure()`` for ``protocol``: text only, no transcription, no server VAD."""
    from livekit.plugins import openai

    with without_env(API_VERSION_ENV):
        if protocol == "ga":
            return openai.realtime.RealtimeModel.with_azure(
                azure_deployment=settings.deployment,
                azure_endpoint=settings.endpoint,
                api_key=settings.api_key,
                modalities=["text"],
                input_audio_transcription=None,
                turn_detection=None,
            )
        return openai.realtime.RealtimeModel.with_azure(
            azure_deployment=settings.preview_deployment,
            azure_endpoint=settings.endpoint,
            api_key=settings.api_key,
            api_version=settings.api_version,
            modalities=["text"],
            input_audio_transcription=None,
            turn_detection=None,
        )


def describe_error(e: BaseException) -> str:
    """The error, its code/param/event_id if it has them, and its causes (e.g. an HTTP 401)."""
    text = f"{type(e).__name__}: {e}"
    details = [
        f"{name}={getattr(e, name)}"
        for name in ("code", "param", "event_id")
        if getattr(e, name, None) is not None
    ]
    text += f" ({', '.join(details)})" if details else ""
    cause, seen = e.__cause__, 0
    while cause is not None and seen < 3:
        text += f" <- {type(cause).__name__}: {cause}"
        cause, seen = cause.__cause__, seen + 1
    return text


class _ShortFormatter(logging.Formatter):
    """Log lines without tracebacks (the check reports the errors itself); ``-v`` keeps them."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return super().format(record)


async def check(settings: Settings, protocol: Protocol, why: str, timeout: float) -> Run:
    """One short session on ``protocol``; never raises for what the service did."""
    from livekit.agents import llm

    run = Run(protocol, why, url_of(settings, protocol))
    try:
        model = make_model(settings, protocol)
    except Exception as e:  # e.g. a with_azure() without the GA route
        run.steps.append(Step("with_azure()", error=describe_error(e)))
        return run
    run.model_class = type(model).__name__
    connected = asyncio.Event()
    response_done = asyncio.Event()

    def on_server_event(event: dict[str, Any]) -> None:
        kind = str(event.get("type"))
        run.server_events[kind] += 1
        if kind in ("session.created", "session.updated"):
            connected.set()
        elif kind == "response.done":
            response = event.get("response") or {}
            run.response_status = str(response.get("status"))
            if response.get("status") != "completed" and response.get("status_details"):
                run.response_status += f" {response.get('status_details')}"
            response_done.set()
        elif kind == "error":
            error = event.get("error") or {}
            text = (
                f"{error.get('code')} (param {error.get('param')}, event_id "
                f"{error.get('event_id')}): {error.get('message')}"
            )
            if str(error.get("message", "")).startswith(IGNORED_ERROR_PREFIX):
                run.ignored.append(text)
            else:
                run.errors.append(text)

    def on_client_event(event: dict[str, Any]) -> None:
        run.client_events[str(event.get("type"))] += 1

    def on_error(event: Any) -> None:
        run.session_errors.append(describe_error(getattr(event, "error", event)))

    async def step(name: str, work: Awaitable[object]) -> bool:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError:
            run.steps.append(
                Step(name, time.perf_counter() - started, f"no answer in {timeout:g}s")
            )
            return False
        except Exception as e:
            run.steps.append(Step(name, time.perf_counter() - started, describe_error(e)))
            return False
        run.steps.append(Step(name, time.perf_counter() - started))
        return True

    session = model.session()
    session.on("openai_server_event_received", on_server_event)
    session.on("openai_client_event_queued", on_client_event)
    session.on("error", on_error)
    try:
        if not await step("connect (until session.created)", connected.wait()):
            return run
        # the first agent
        await step("update_instructions (greeter)", session.update_instructions(GREETER))
        ctx = llm.ChatContext()
        ctx.add_message(role="user", content="Hi, I have a question about my bill.")
        ctx.add_message(role="assistant", content="Hello, I will transfer you to billing.")
        await step("update_chat_ctx: greeter's context", session.update_chat_ctx(ctx))
        # the switch, as AgentSession makes it: handoff-style items and a system message
        ctx = ctx.copy()
        ctx.items.append(llm.AgentHandoff(old_agent_id="greeter", new_agent_id="billing"))
        ctx.items.append(llm.AgentConfigUpdate(instructions=BILLING))
        ctx.add_message(role="system", content=SWITCH_NOTE)
        await step("update_instructions (billing)", session.update_instructions(BILLING))
        await step("update_chat_ctx: agent switch", session.update_chat_ctx(ctx))
        # one text turn
        ctx = ctx.copy()
        ctx.add_message(role="user", content=QUESTION)
        await step("update_chat_ctx: user text message", session.update_chat_ctx(ctx))
        await step("generate_reply (text)", reply(session, run, timeout))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(response_done.wait(), timeout)
    finally:
        with contextlib.suppress(Exception):
            await session.aclose()
        with contextlib.suppress(Exception):
            await model.aclose()
    return run


async def reply(session: llm.RealtimeSession, run: Run, timeout: float) -> None:
    started = time.perf_counter()
    generation = await session.generate_reply()
    parts: list[str] = []
    async for message in generation.message_stream:
        async for text in message.text_stream:
            if run.first_text_s is None:
                run.first_text_s = time.perf_counter() - started
            parts.append(str(text))
    run.reply = "".join(parts)
    run.reply_s = time.perf_counter() - started
    if not run.reply:
        raise RuntimeError("the response held no text")


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def counted(events: Counter[str]) -> str:
    by_type = ", ".join(f"{n} {t}" for t, n in sorted(events.items())) or "none"
    return f"{sum(events.values())} ({by_type})"


def report(run: Run) -> str:
    """Print the account of one run; return its ``live (…)`` line."""
    print(f"{LABEL[run.protocol]} protocol ({run.why}): {run.model_class or '-'} on {run.url}")
    width = max((len(s.name) for s in run.steps), default=0)
    for s in run.steps:
        outcome = f"FAILED {s.error}" if s.error else "ok"
        print(f"  {s.name.ljust(width)}  {ms(s.seconds):>8}  {outcome}")
    if run.reply or run.first_text_s is not None:
        print(f"  reply: {run.reply!r} (first text {ms(run.first_text_s)}, all {ms(run.reply_s)})")
    if run.response_status is not None:
        print(f"  response.done status: {run.response_status}")
    print(f"  server events: {counted(run.server_events)}")
    print(f"  client events: {counted(run.client_events)}")
    print(f"  server errors: {len(run.errors)}")
    for text in run.errors:
        print(f"    - {text}")
    if run.ignored:
        print(f'  ignored: {len(run.ignored)} "{IGNORED_ERROR_PREFIX}" error(s)')
    for text, n in Counter(run.session_errors).items():
        print(f"  session error event{f' ({n}x)' if n > 1 else ''}: {text}")
    syncs = [s.seconds or 0.0 for s in run.steps if s.name.startswith("update_chat_ctx")]
    failed = [s.name for s in run.steps if s.error]
    return (
        f"live ({LABEL[run.protocol]}): {'FAILED' if run.failed else 'ok'}, "
        f"{len(run.errors)} server errors, {len(failed)} failed steps"
        + (f" ({'; '.join(failed)})" if failed else "")
        + f", update_chat_ctx max {ms(max(syncs, default=None))}, reply {ms(run.reply_s)}, "
        f"{len(run.reply)} chars"
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--endpoint", help=f"Azure endpoint (default: ${ENDPOINT_ENV})")
    ap.add_argument("--api-key", help=f"API key (default: ${API_KEY_ENV})")
    ap.add_argument("--deployment", help=f"realtime deployment (default: ${DEPLOYMENT_ENV})")
    ap.add_argument(
        "--preview-deployment",
        help=f"deployment of the preview run (default: ${PREVIEW_DEPLOYMENT_ENV}, else --deployment)",
    )
    ap.add_argument(
        "--api-version", help=f"preview api-version (default: ${API_VERSION_ENV}); adds preview"
    )
    ap.add_argument(
        "--protocol",
        choices=("ga", "preview"),
        help="run only this protocol (default: GA, and preview when an api-version is set)",
    )
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per step (default 20)")
    ap.add_argument(
        "-v", "--verbose", action="store_true", help="log the plugin's info, tracebacks"
    )
    return ap


async def run(argv: Sequence[str] | None = None) -> int:
    """The check: returns the exit code (0 also when skipped)."""
    args = parser().parse_args(argv)
    settings = settings_from(args, dict(os.environ))
    if isinstance(settings, list):
        print(skip_line(settings))
        return 0
    handler = logging.StreamHandler()
    handler.setFormatter(
        (logging.Formatter if args.verbose else _ShortFormatter)(
            "%(levelname)s %(name)s: %(message)s"
        )
    )
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    runs = plan(settings, args.protocol)
    if not runs:
        print(
            f"error: --protocol {args.protocol} needs {API_VERSION_ENV} or --api-version",
            file=sys.stderr,
        )
        return 2
    if args.protocol is None and not settings.api_version:
        print(
            f"preview protocol not run: {API_VERSION_ENV} is not set (Azure deprecated the "
            "preview protocol on 2026-04-30)"
        )
    done = [await check(settings, protocol, why, args.timeout) for protocol, why in runs]
    lines = []
    for result in done:
        lines.append(report(result))
        print()
    for line in lines:
        print(line)
    return 1 if any(result.failed for result in done) else 0


def main() -> int:
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
