"""Helpers shared by the build-pipeline tests (subprocesses, venvs, git URLs)."""

from __future__ import annotations

import hashlib
import html
import http.server
import os
import re
import subprocess
import sys
import threading
import venv
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PLUGIN_SUBDIR = "livekit-plugins/livekit-plugins-openai"


def _fork_version() -> str:
    text = (Path(__file__).resolve().parents[2] / PLUGIN_SUBDIR / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, flags=re.M)
    assert match is not None, "no version in the packaging pyproject.toml"
    return match.group(1)


FORK_VERSION = _fork_version()
"""the version the packaging directory builds (``[project] version``)"""


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
    env: Mapping[str, str | None] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> Run:
    """Run ``cmd``; with ``check``, fail the test (showing the output) on a non-zero exit.

    ``env`` entries override the inherited environment; a ``None`` value removes the variable.
    The backend's sdist cache is off unless ``env`` turns it on (see :func:`isolated_env`).
    """
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
    for var in ("LK_OPENAI_FORK_SDIST", "LK_OPENAI_FORK_CACHE_DIR", "SOURCE_DATE_EPOCH"):
        full_env.pop(var, None)
    full_env["LK_OPENAI_FORK_NO_CACHE"] = "1"
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
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


def isolated_env(cache: Path | None = None, **settings: str) -> dict[str, str | None]:
    """Environment overrides with no pip/uv settings but ``settings`` (e.g. ``PIP_INDEX_URL``).

    Every inherited ``PIP_*``/``UV_*`` variable is removed and pip's and uv's config files are
    ignored, so the only index a build can see is the one given here. With ``cache``, the
    backend caches the sdist there.
    """
    env: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("PIP_", "UV_")) and k != "UV_PYTHON"
    }
    env.update(PIP_CONFIG_FILE=os.devnull, UV_NO_CONFIG="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if cache is not None:
        env.update(LK_OPENAI_FORK_CACHE_DIR=str(cache), LK_OPENAI_FORK_NO_CACHE=None)
    env.update(settings)
    return env


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_of(filename: str) -> str:
    stem = filename.removesuffix(".tar.gz").removesuffix(".whl")
    return _normalize(stem.split("-", 1)[0])


@dataclass
class LocalIndex:
    """A PEP 503 simple index in a directory (``simple/<project>/index.html``, ``files/``).

    :meth:`serve` serves it on 127.0.0.1 from a thread; requests are recorded in ``requests``
    and a project in ``blocked`` answers 503 (an index that is down, for that project only).
    """

    root: Path
    requests: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    url: str = ""

    def add(self, path: Path) -> None:
        """Copy ``path`` (a wheel or sdist) into the index and rewrite its project page."""
        files = self.root / "files"
        files.mkdir(parents=True, exist_ok=True)
        (files / path.name).write_bytes(path.read_bytes())
        project = _project_of(path.name)
        page = self.root / "simple" / project
        page.mkdir(parents=True, exist_ok=True)
        links = []
        for f in sorted(files.iterdir()):
            if _project_of(f.name) == project:
                digest = hashlib.sha256(f.read_bytes()).hexdigest()
                href = html.escape(f"../../files/{f.name}#sha256={digest}")
                links.append(f'<a href="{href}">{html.escape(f.name)}</a><br>')
        body = "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
        (page / "index.html").write_text(body)

    @property
    def file_url(self) -> str:
        """The index as a ``file://`` URL."""
        return (self.root / "simple").as_uri() + "/"

    def requests_for(self, project: str) -> list[str]:
        """Recorded request paths that concern ``project`` (its page or its files)."""
        project = _normalize(project)
        return [r for r in self.requests if self._project_of_path(r) == project]

    @staticmethod
    def _project_of_path(path: str) -> str:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if len(parts) >= 2 and parts[0] == "simple":
            return _normalize(parts[1])
        if len(parts) >= 2 and parts[0] == "files":
            return _project_of(parts[1])
        return ""

    def serve(self) -> Generator[str, None, None]:
        """Serve the index on 127.0.0.1 while the generator is suspended; yields its URL."""
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(index.root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                index.requests.append(self.path)
                if index._project_of_path(self.path) in index.blocked:
                    self.send_error(503, "index unavailable (test)")
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            self.url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
            yield self.url
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
