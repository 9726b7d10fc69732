"""Helpers shared by the build-pipeline tests (subprocesses, venvs, git URLs)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN_SUBDIR = "livekit-plugins/livekit-plugins-openai"


@dataclass
class Run:
    """Result of a subprocess: return code and combined output."""

    returncode: int
    output: str

    def error_lines(self) -> list[str]:
        """Lines of the output that start with ``error: `` (after stripping indentation)."""
        return [ln.strip() for ln in self.output.splitlines() if ln.strip().startswith("error: ")]


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> Run:
    """Run ``cmd``; with ``check``, fail the test (showing the output) on a non-zero exit."""
    full_env = dict(os.environ)
    full_env.update(
        {
            "GIT_AUTHOR_NAME": "pipeline-test",
            "GIT_AUTHOR_EMAIL": "pipeline-test@localhost",
            "GIT_COMMITTER_NAME": "pipeline-test",
            "GIT_COMMITTER_EMAIL": "pipeline-test@localhost",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    full_env.pop("LK_OPENAI_FORK_SDIST", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    result = Run(proc.returncode, proc.stdout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return result


def venv_python(path: Path) -> Path:
    """The interpreter of the virtual environment at ``path``."""
    sub = "Scripts/python.exe" if sys.platform == "win32" else "bin/python"
    return path / sub


_TOOL_VENV: list[Path] = []


def tool_pip_cmd(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``python -m pip`` of a stdlib venv (the nox venv may come from uv and lack pip)."""
    if not _TOOL_VENV:
        path = tmp_path_factory.mktemp("toolvenv") / "venv"
        venv.EnvBuilder(with_pip=True).create(path)
        _TOOL_VENV.append(path)
    return [str(venv_python(_TOOL_VENV[0])), "-m", "pip"]


def git_url(repo: Path) -> str:
    """The pip/uv requirement installing the plugin from ``repo``'s HEAD."""
    # file://localhost/...: pip < 24 rejects an empty netloc in a PEP 508 URL
    return f"livekit-plugins-openai @ git+file://localhost{repo}#subdirectory={PLUGIN_SUBDIR}"
