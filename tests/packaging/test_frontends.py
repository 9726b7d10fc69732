"""The fork builds under every common frontend, from a local index only, reproducibly.

Each build sees a single index (``PIP_INDEX_URL`` or ``UV_INDEX_URL``): a simple index on
127.0.0.1 holding the pinned upstream sdist and the pinned build requirements. No pip or uv
config file and no other ``PIP_*``/``UV_*`` variable is visible, so a build that succeeds proves
that the backend fetched the sdist through that variable (the server logs the request).
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pipeline_support import (
    FORK_VERSION,
    PLUGIN_SUBDIR,
    LocalIndex,
    Run,
    git_url,
    isolated_env,
    run,
)

UPSTREAM = "livekit-plugins-openai"
SDIST_NAME = "livekit_plugins_openai-1.4.6.tar.gz"


def _wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _one_wheel(out: Path) -> Path:
    wheels = sorted(out.glob("*.whl"))
    assert [w.name for w in wheels] == [f"livekit_plugins_openai-{FORK_VERSION}-py3-none-any.whl"]
    return wheels[0]


def _installed(python: Path) -> dict[str, bytes]:
    """Files of the installed fork (as in its wheel: livekit/... and the dist-info metadata)."""
    # no import of the plugin: a --no-deps install lacks its dependencies
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run([python, "-c", code]).output.strip())
    files = {
        str(p.relative_to(site)): p.read_bytes()
        for p in sorted((site / "livekit").rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    (info,) = site.glob("livekit_plugins_openai-*.dist-info")
    for name in ("METADATA", "licenses/LICENSE", "licenses/NOTICE"):
        files[f"{info.name}/{name}"] = (info / name).read_bytes()
    return files


def _wheel_payload(wheel: Path) -> dict[str, bytes]:
    keep = ("METADATA", "licenses/LICENSE", "licenses/NOTICE")
    return {
        n: b
        for n, b in _wheel_files(wheel).items()
        if n.startswith("livekit/") or n.split("/", 1)[-1] in keep
    }


def _python_venv(tmp_path: Path, uv: str) -> Path:
    env_dir = tmp_path / "target"
    run([uv, "venv", "-q", "--python", sys.executable, env_dir])
    return env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _frontend(
    kind: str,
    *,
    clone: Path,
    tmp_path: Path,
    pip_oldest: Path,
    pip_newest: Path,
    uv: str,
) -> tuple[Callable[[dict[str, str | None]], Run], Path | None, bool]:
    """(build function taking env overrides, python of the target venv or None, uses uv)."""
    plugin = clone / PLUGIN_SUBDIR
    out = tmp_path / "out"
    cmd: list[str | Path]
    if kind in ("pip-oldest", "pip-newest"):
        python = pip_oldest if kind == "pip-oldest" else pip_newest
        target = tmp_path / "target"
        cmd = [python, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--target", target]

        def install(env: dict[str, str | None]) -> Run:
            return run([*cmd, git_url(clone)], env=env, check=False)

        return install, None, False
    if kind == "pip-wheel":
        cmd = [pip_newest, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", out, plugin]
        return (lambda env: run(cmd, env=env, check=False)), None, False
    if kind == "build":
        cmd = [pip_newest, "-m", "build", "--wheel", "--outdir", out, plugin]
        return (lambda env: run(cmd, env=env, check=False)), None, False
    if kind == "uv-pip-install":
        target_py = _python_venv(tmp_path, uv)
        cmd = [uv, "pip", "install", "--no-deps", "--no-cache", "--python", target_py]
        return (lambda env: run([*cmd, git_url(clone)], env=env, check=False)), target_py, True
    if kind == "uv-build":
        cmd = [uv, "build", "--wheel", "--no-cache", "--out-dir", out, plugin]
        return (lambda env: run(cmd, env=env, check=False)), None, True
    raise AssertionError(kind)


FRONTENDS = ["pip-oldest", "pip-newest", "pip-wheel", "build", "uv-pip-install", "uv-build"]


@pytest.fixture(scope="module")
def reference_wheel(
    clone: Path, local_index: LocalIndex, pip_newest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The wheel `pip wheel` (newest pip) builds from the local index; the others must equal it."""
    out = tmp_path_factory.mktemp("reference")
    env = isolated_env(PIP_INDEX_URL=local_index.url)
    cmd: list[str | Path] = [
        pip_newest,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-cache-dir",
        "-w",
        out,
    ]
    run([*cmd, clone / PLUGIN_SUBDIR], env=env)
    return _one_wheel(out)


@pytest.mark.parametrize("kind", FRONTENDS)
def test_frontend_builds_from_index_variable_only(
    kind: str,
    clone: Path,
    local_index: LocalIndex,
    pip_oldest: Path,
    pip_newest: Path,
    uv_bin: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """pip (oldest, newest), pip wheel, python -m build, uv pip install, uv build all succeed.

    The only index setting is PIP_INDEX_URL (pip, build) or UV_INDEX_URL (uv); the backend
    downloads the sdist from it, caches it, and every frontend gives the reference wheel's bytes.
    """
    build, target_py, uses_uv = _frontend(
        kind, clone=clone, tmp_path=tmp_path, pip_oldest=pip_oldest, pip_newest=pip_newest,
        uv=uv_bin,
    )  # fmt: skip
    var = "UV_INDEX_URL" if uses_uv else "PIP_INDEX_URL"
    cache = tmp_path / "cache"
    before = len(local_index.requests)
    result = build(isolated_env(cache, **{var: local_index.url}))
    assert result.returncode == 0, result.output[-6000:]
    fetched = [r for r in local_index.requests[before:] if r.endswith(SDIST_NAME)]
    assert fetched, f"the backend did not download the sdist from {var}"
    (cached,) = (cache / "sdist").glob("*/*.tar.gz")
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == cached.parent.name

    reference_wheel: Path = request.getfixturevalue("reference_wheel")
    if kind in ("pip-wheel", "build", "uv-build"):
        assert _one_wheel(tmp_path / "out").read_bytes() == reference_wheel.read_bytes()
    elif target_py is not None:
        assert _installed(target_py) == _wheel_payload(reference_wheel)
    else:
        target = tmp_path / "target"
        files = {
            str(p.relative_to(target)): p.read_bytes()
            for p in sorted(target.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
        want = _wheel_payload(reference_wheel)
        assert {k: files.get(k) for k in want} == want


def _pip_wheel(pip_newest: Path, clone: Path, out: Path, env: dict[str, str | None]) -> Run:
    cmd: list[str | Path] = [
        pip_newest,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-deps",
        "--no-cache-dir",
        "-w",
        out,
    ]
    return run([*cmd, clone / PLUGIN_SUBDIR], env=env, check=False)


def test_file_index_url(
    clone: Path, local_index: LocalIndex, reference_wheel: Path, pip_newest: Path, tmp_path: Path
) -> None:
    """A ``file://`` simple index in PIP_INDEX_URL works too (hatchling and the sdist)."""
    env = isolated_env(PIP_INDEX_URL=local_index.file_url)
    result = _pip_wheel(pip_newest, clone, tmp_path / "out", env)
    assert result.returncode == 0, result.output[-6000:]
    assert _one_wheel(tmp_path / "out").read_bytes() == reference_wheel.read_bytes()


def test_cache_is_used_when_the_index_is_down(
    clone: Path, local_index: LocalIndex, reference_wheel: Path, pip_newest: Path, tmp_path: Path
) -> None:
    """The second build takes the verified sdist from the cache; both wheels are identical."""
    cache = tmp_path / "cache"
    env = isolated_env(cache, PIP_INDEX_URL=local_index.url)
    first = _pip_wheel(pip_newest, clone, tmp_path / "a", env)
    assert first.returncode == 0, first.output[-6000:]
    local_index.blocked.add(UPSTREAM)
    try:
        before = len(local_index.requests_for(UPSTREAM))
        second = _pip_wheel(pip_newest, clone, tmp_path / "b", env)
        assert second.returncode == 0, second.output[-6000:]
        assert local_index.requests_for(UPSTREAM)[before:] == []
    finally:
        local_index.blocked.discard(UPSTREAM)
    assert "using cached" in second.output
    wheel_a, wheel_b = _one_wheel(tmp_path / "a"), _one_wheel(tmp_path / "b")
    assert wheel_a.read_bytes() == wheel_b.read_bytes() == reference_wheel.read_bytes()


def test_corrupt_cache_file_is_refused_and_fetched_again(
    clone: Path, local_index: LocalIndex, pip_newest: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = isolated_env(cache, PIP_INDEX_URL=local_index.url)
    assert _pip_wheel(pip_newest, clone, tmp_path / "a", env).returncode == 0
    (cached,) = (cache / "sdist").glob("*/*.tar.gz")
    good = cached.read_bytes()
    cached.write_bytes(good[:1000] + b"corrupt" + good[1007:])
    before = len(local_index.requests_for(UPSTREAM))
    result = _pip_wheel(pip_newest, clone, tmp_path / "b", env)
    assert result.returncode == 0, result.output[-6000:]
    assert "discarding corrupt cached file" in result.output
    assert any(r.endswith(".tar.gz") for r in local_index.requests_for(UPSTREAM)[before:])
    assert cached.read_bytes() == good


@pytest.mark.parametrize("kind", ["pip-wheel", "build"])
def test_download_failure_names_the_offline_variable(
    kind: str, clone: Path, local_index: LocalIndex, pip_newest: Path, tmp_path: Path
) -> None:
    """With the index down and no cache: one error line, the real reason, the offline route."""
    env = isolated_env(PIP_INDEX_URL=local_index.url)
    out = tmp_path / "out"
    cmd: list[str | Path]
    if kind == "build":
        cmd = [pip_newest, "-m", "build", "--wheel", "--outdir", out, clone / PLUGIN_SUBDIR]
    else:
        cmd = [pip_newest, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", out,
               clone / PLUGIN_SUBDIR]  # fmt: skip
    local_index.blocked.add(UPSTREAM)
    try:
        result = run(cmd, env=env, check=False)
    finally:
        local_index.blocked.discard(UPSTREAM)
    assert result.returncode != 0
    lines = [ln for ln in result.error_lines() if "could not download" in ln]
    assert lines, result.output[-6000:]
    line = lines[0]
    assert "LK_OPENAI_FORK_SDIST=" in line, line
    assert "503" in line and local_index.url in line, line
    assert "see above" not in line.lower(), line
    assert not out.exists() or not list(out.glob("*.whl"))


def test_wheel_metadata_license_and_dates(clone: Path, reference_wheel: Path) -> None:
    """LiveKit stays the author, the fork is the maintainer, LICENSE/NOTICE ship, dates are fixed."""
    files = _wheel_files(reference_wheel)
    info = f"livekit_plugins_openai-{FORK_VERSION}.dist-info"
    meta = files[f"{info}/METADATA"].decode()
    assert "Author-email: LiveKit <hello@livekit.io>" in meta.splitlines()
    assert "Maintainer: livekit-plugins-openai fork maintainers" in meta.splitlines()
    assert "License-Expression: Apache-2.0" in meta.splitlines()
    for name in ("LICENSE", "NOTICE"):
        assert f"License-File: {name}" in meta.splitlines()
        assert files[f"{info}/licenses/{name}"] == (clone / name).read_bytes()
    assert b"Apache License" in files[f"{info}/licenses/LICENSE"]
    with zipfile.ZipFile(reference_wheel) as zf:
        # [tool.lk-fork] upstream-release-date, as SOURCE_DATE_EPOCH
        assert {i.date_time for i in zf.infolist()} == {(2026, 3, 16, 0, 0, 0)}


# written so that the pattern does not match itself
LOCAL_PATHS = "(" + "|".join(["/" + "work/", "/tmp/[a-z]", "/" + "root/", "/home/[a-z]"]) + ")"


def test_no_machine_local_paths_in_the_repository(clone: Path) -> None:
    found = run(
        ["git", "grep", "-n", "-E", LOCAL_PATHS],
        cwd=clone,
        check=False,
    )
    assert found.returncode == 1 and not found.output.strip(), found.output
