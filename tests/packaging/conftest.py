"""Fixtures for the build-pipeline tests.

These tests drive the real pipeline (pip, uv, git) in subprocesses against a clone of the
repository, so they need its location: ``nox`` passes ``FORK_REPO_ROOT`` (the tests themselves run
against the installed wheel, from a temp directory). ``FORK_UPSTREAM_SDIST`` points at the pinned
upstream sdist nox already downloaded, so most builds can run offline via ``LK_OPENAI_FORK_SDIST``.
"""

from __future__ import annotations

import os
import shutil
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_support import PLUGIN_SUBDIR, LocalIndex, run, tool_pip_cmd, venv_python

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# the oldest pip the README supports, and the newest from the index
PIP_OLDEST = "23.2.1"

if os.environ.get("FORK_UNDER_TEST") == "upstream":
    collect_ignore_glob = ["test_*.py"]  # the pipeline is not part of pristine upstream


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository under test (``FORK_REPO_ROOT``)."""
    root = os.environ.get("FORK_REPO_ROOT")
    if not root:
        if os.environ.get("NOX_CURRENT_SESSION"):
            pytest.fail("FORK_REPO_ROOT is not set although running under nox")
        pytest.skip("FORK_REPO_ROOT not set: run the pipeline tests through `nox -s tests`")
    path = Path(root).resolve()
    assert (path / "patches" / "series").is_file(), path
    return path


@pytest.fixture(scope="session")
def clone(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local clone of the repository's HEAD (what a git URL install would see)."""
    dest = tmp_path_factory.mktemp("clone") / "repo"
    run(["git", "clone", "-q", repo_root, dest])
    return dest


@pytest.fixture(scope="session")
def upstream_sdist(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned upstream sdist: nox's cached copy, else downloaded (hash-checked) by pip."""
    cached = os.environ.get("FORK_UPSTREAM_SDIST")
    if cached and Path(cached).is_file():
        return Path(cached)
    dest = tmp_path_factory.mktemp("upstream")
    run(
        [
            *tool_pip_cmd(tmp_path_factory),
            *("download", "--no-deps", "--no-binary", "livekit-plugins-openai"),
            *("--require-hashes", "-r", clone / "patches" / "upstream.txt", "-d", dest),
        ]
    )
    (sdist,) = dest.glob("*.tar.gz")
    return sdist


@pytest.fixture(scope="session")
def pip_cmd(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``python -m pip`` usable for ``pip wheel`` / ``pip download``."""
    return tool_pip_cmd(tmp_path_factory)


@pytest.fixture
def work_clone(clone: Path, tmp_path: Path) -> Iterator[Path]:
    """A disposable copy of the clone, free to break."""
    dest = tmp_path / "repo"
    shutil.copytree(clone, dest, symlinks=True)
    yield dest


@pytest.fixture(scope="session")
def build_requirements(clone: Path) -> list[str]:
    """The backend's pinned ``build-system.requires``."""
    data = tomllib.loads((clone / PLUGIN_SUBDIR / "pyproject.toml").read_text())
    reqs = data["build-system"]["requires"]
    assert all("==" in r for r in reqs), reqs
    return [str(r) for r in reqs]


@pytest.fixture(scope="session")
def local_index(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_sdist: Path,
    build_requirements: list[str],
    pip_cmd: list[str],
) -> Iterator[LocalIndex]:
    """A simple index on 127.0.0.1 with the pinned sdist and the pinned build requirements.

    The wheels are downloaded once (with the machine's own pip settings); every build test then
    sees only this index, through ``PIP_INDEX_URL`` / ``UV_INDEX_URL``.
    """
    wheels = tmp_path_factory.mktemp("build-req-wheels")
    run([*pip_cmd, "download", "-q", "--only-binary", ":all:", "--no-deps", "-d", wheels,
         *build_requirements])  # fmt: skip
    index = LocalIndex(tmp_path_factory.mktemp("index"))
    for wheel in sorted(wheels.iterdir()):
        index.add(wheel)
    index.add(upstream_sdist)
    server = index.serve()
    next(server)
    yield index
    server.close()


def _frontend_venv(tmp_path_factory: pytest.TempPathFactory, name: str, *pkgs: str) -> Path:
    path = tmp_path_factory.mktemp(name) / "venv"
    venv.EnvBuilder(with_pip=True).create(path)
    python = venv_python(path)
    run([python, "-m", "pip", "install", "-q", *pkgs])
    return python


@pytest.fixture(scope="session")
def pip_oldest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a venv holding the oldest supported pip."""
    return _frontend_venv(tmp_path_factory, "pip-oldest", f"pip=={PIP_OLDEST}")


@pytest.fixture(scope="session")
def pip_newest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a venv holding the newest pip and pypa/build."""
    return _frontend_venv(tmp_path_factory, "pip-newest", "-U", "pip", "build")


@pytest.fixture(scope="session")
def uv_bin() -> str:
    """The uv executable (nox puts the pinned one on PATH)."""
    uv = shutil.which("uv")
    if uv is None:
        if os.environ.get("NOX_CURRENT_SESSION"):
            pytest.fail("uv is not on PATH although running under nox")
        pytest.skip("uv not installed")
    return uv
