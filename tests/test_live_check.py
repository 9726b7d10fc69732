"""tools/live_check.py: its skip line without Azure settings, and its run against the fake.

The live check is opt-in (``python3 dev.py live``) and never reaches Azure here: the skip path
runs as a subprocess with the Azure variables removed; the happy path runs in-process against
the fake server of each protocol, reached with ``--endpoint http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fake_azure import DEFAULT_API_VERSION, FakeAzureRealtimeServer

REPO = Path(os.environ.get("FORK_REPO_ROOT") or Path(__file__).resolve().parents[1])
SCRIPT = REPO / "tools" / "live_check.py"
AZURE_VARS = (
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_DEPLOYMENT",
    "AZURE_OPENAI_PREVIEW_DEPLOYMENT",
    "OPENAI_API_VERSION",
)


def _load() -> ModuleType:
    if "live_check" in sys.modules:
        return sys.modules["live_check"]
    spec = importlib.util.spec_from_file_location("live_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules
    sys.modules["live_check"] = module
    spec.loader.exec_module(module)
    return module


def _run_script(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in AZURE_VARS}
    clean.update(env)
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_skips_with_one_line_without_settings() -> None:
    proc = _run_script()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("live check skipped: ")
    for name in AZURE_VARS[:3]:
        assert name in lines[0]
    assert proc.stderr == ""


def test_skip_line_names_only_what_is_missing() -> None:
    proc = _run_script(AZURE_OPENAI_ENDPOINT="https://x.openai.azure.com", AZURE_OPENAI_API_KEY="k")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    missing = line.split(" not set", 1)[0]
    assert "AZURE_OPENAI_DEPLOYMENT" in missing
    assert "AZURE_OPENAI_ENDPOINT" not in missing
    assert "AZURE_OPENAI_API_KEY" not in missing


def test_plan_runs_preview_only_with_an_api_version() -> None:
    live_check = _load()
    base = {"endpoint": "https://x", "api_key": "k", "deployment": "d", "preview_deployment": "d"}
    ga_only = live_check.Settings(**base, api_version=None)
    both = live_check.Settings(**base, api_version="2024-10-01-preview")
    assert [p for p, _ in live_check.plan(ga_only, None)] == ["ga"]
    assert [p for p, _ in live_check.plan(both, None)] == ["ga", "preview"]
    assert live_check.plan(ga_only, "preview") == []
    assert live_check.url_of(both, "ga") == "wss://x/openai/v1/realtime?model=d"


async def test_runs_against_the_fake(
    fake_azure: FakeAzureRealtimeServer,
    protocol: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in AZURE_VARS:
        monkeypatch.delenv(name, raising=False)
    live_check = _load()
    argv = [
        *("--endpoint", fake_azure.endpoint),
        *("--api-key", fake_azure.api_key),
        *("--deployment", fake_azure.deployment),
        *("--protocol", protocol),
        *("--timeout", "10"),
    ]
    if protocol == "preview":
        argv += ["--api-version", DEFAULT_API_VERSION]
    code = await live_check.run(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    label = "GA" if protocol == "ga" else "preview"
    assert f"live ({label}): ok, 0 server errors, 0 failed steps" in out
    assert "reply: 'This is the fake Azure server.'" in out
    # the switch reached the service: the system message, and nothing of the handoff items
    texts = [
        part.get("text")
        for item in fake_azure.conversation
        for part in item.get("content") or []
        if isinstance(part, dict)
    ]
    assert live_check.SWITCH_NOTE in texts
    assert live_check.QUESTION in texts
    assert fake_azure.errors == []


async def test_reports_a_rejection_with_code_and_param(
    fake_azure: FakeAzureRealtimeServer,
    protocol: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in AZURE_VARS:
        monkeypatch.delenv(name, raising=False)
    live_check = _load()
    fake_azure.reject_next(
        lambda ev: (
            ev.get("type") == "conversation.item.create"
            and (ev.get("item") or {}).get("role") == "system"
        ),
        "missing_required_parameter",
        "Missing required parameter: 'item.type'.",
        "item.type",
    )
    argv = [
        *("--endpoint", fake_azure.endpoint),
        *("--api-key", fake_azure.api_key),
        *("--deployment", fake_azure.deployment),
        *("--protocol", protocol),
        *("--timeout", "10"),
    ]
    if protocol == "preview":
        argv += ["--api-version", DEFAULT_API_VERSION]
    code = await live_check.run(argv)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "missing_required_parameter (param item.type" in out
    assert "update_chat_ctx: agent switch" in out and "FAILED" in out
    label = "GA" if protocol == "ga" else "preview"
    assert f"live ({label}): FAILED, 1 server errors" in out
