"""Fixtures for the build-pipeline tests.

These tests drive the real pipeline (pip, uv, git) in subprocesses against a clone of the
repository, so they need its location: ``nox`` passes ``FORK_REPO_ROOT`` (the tests themselves run
against the installed wheel, from a temp directory). ``FORK_UPSTREAM_SDIST`` points at the pinned
upstream sdist nox already downloaded, so most builds can run offline via ``LK_OPENAI_FORK_SDIST``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_support import run, tool_pip_cmd

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
