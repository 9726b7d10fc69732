"""Shared fixtures: the fake Azure realtime server (both protocols) and a leaked-task check.

``tests/`` has no ``__init__.py``: pytest's default (rootdir-based) import mode puts it on
``sys.path``, which is what makes ``fake_azure`` importable. Nothing here imports livekit at
module level, so the same fixtures run against the fork and against pristine upstream.

Every test using ``fake_azure`` (or ``fake_azure_factory``, or ``protocol``) runs once per
protocol, ids ``preview`` and ``ga``; ``FORK_PROTOCOLS=preview`` (a comma list) restricts the
run. ``@pytest.mark.protocols("preview")`` limits one test to the protocols it names. While the
installed plugin has no Azure GA route (``RealtimeModel.with_azure`` without ``api_version``
raises), the plugin's GA session is the pristine 1.4.6 one: GA runs of the behaviour tests are
then a non-strict xfail (issue 10's plugin patch brings the fixes); the fake's own self-tests
(``test_fake_server*.py``) are not marked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fake_azure import (
    FakeAzureRealtimeServer,
    ga_route_available,
    make_model,
    selected_protocols,
)

__all__ = ["make_model"]

GA_XFAIL_REASON = "GA session: issue 10 plugin patch"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "protocols(*names): run the test only on the named fake Azure protocols"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ga_xfail = None
    for item in items:
        callspec = getattr(item, "callspec", None)
        protocol = callspec.params.get("protocol") if callspec is not None else None
        if protocol is None:
            continue
        only = item.get_closest_marker("protocols")
        if only is not None and protocol not in only.args:
            item.add_marker(pytest.mark.skip(reason=f"not a {protocol} test"))
            continue
        if protocol != "ga" or item.path.name.startswith("test_fake_server"):
            continue
        # a regression run's judge needs the plain outcome (as for `issue_9_xfail`); it judges
        # the GA runs too (see noxfile `_judge_regressions`)
        if os.environ.get("FORK_REGRESSION_REPORT"):
            continue
        if ga_xfail is None:
            ga_xfail = not ga_route_available()
        if ga_xfail:
            item.add_marker(pytest.mark.xfail(strict=False, reason=GA_XFAIL_REASON))


@pytest.fixture(params=selected_protocols(), ids=lambda p: str(p))
def protocol(request: pytest.FixtureRequest) -> str:
    """The fake Azure protocol of this test run: ``"preview"`` or ``"ga"``."""
    name: str = request.param
    return name


@pytest.fixture
async def fake_azure(protocol: str) -> AsyncIterator[FakeAzureRealtimeServer]:
    """A started fake Azure OpenAI Realtime server on 127.0.0.1, stopped at teardown."""
    server = FakeAzureRealtimeServer(protocol=protocol)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@pytest.fixture
async def fake_azure_factory(
    protocol: str,
) -> AsyncIterator[Callable[..., Awaitable[FakeAzureRealtimeServer]]]:
    """Factory for extra or differently configured servers: ``await factory(**options)``.

    The servers speak the test's protocol unless ``protocol=`` is given.
    """
    servers: list[FakeAzureRealtimeServer] = []

    async def _make(**options: Any) -> FakeAzureRealtimeServer:
        options.setdefault("protocol", protocol)
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
