"""Shared fixtures: the fake Azure realtime server and a leaked-task check.

``tests/`` has no ``__init__.py``: pytest's default (rootdir-based) import mode puts it on
``sys.path``, which is what makes ``fake_azure`` importable. Nothing here imports livekit at
module level, so the same fixtures run against the fork and against pristine upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fake_azure import FakeAzureRealtimeServer, make_model

__all__ = ["make_model"]


@pytest.fixture
async def fake_azure() -> AsyncIterator[FakeAzureRealtimeServer]:
    """A started fake Azure OpenAI Realtime server on 127.0.0.1, stopped at teardown."""
    server = FakeAzureRealtimeServer()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@pytest.fixture
async def fake_azure_factory() -> AsyncIterator[Callable[..., Awaitable[FakeAzureRealtimeServer]]]:
    """Factory for extra or differently configured servers: ``await factory(**options)``."""
    servers: list[FakeAzureRealtimeServer] = []

    async def _make(**options: Any) -> FakeAzureRealtimeServer:
        server = FakeAzureRealtimeServer(**options)
        await server.start()
        servers.append(server)
        return server

    try:
        yield _make
    finally:
        for server in servers:
            await server.aclose()


def _coro_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__name__


def _ignorable(task: asyncio.Task[Any]) -> bool:
    """Tasks that belong to the test machinery rather than to the code under test."""
    try:
        name = _coro_name(task)
        # created by the interpreter while finalising async generators
        if "async_generator_athrow" in name or "aclose" in name:
            return True
        return any("pytest" in f.f_code.co_filename for f in task.get_stack())
    except Exception:
        return False


def _describe(task: asyncio.Task[Any]) -> str:
    frame = getattr(task.get_coro(), "cr_frame", None)
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "?"
    return f"- {task.get_name()} ({_coro_name(task)}) at {where}"


@pytest.fixture(autouse=True)
async def fail_on_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after its fixtures are torn down."""
    before = asyncio.all_tasks()
    yield
    # let tasks that were just cancelled or completed finish their last step
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and not _ignorable(t)]
    if leaked:
        pytest.fail("test leaked asyncio tasks:\n" + "\n".join(_describe(t) for t in leaked))
