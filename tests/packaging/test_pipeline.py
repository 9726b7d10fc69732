"""End-to-end tests of the build pipeline: git URL installs, refusals, and source fidelity."""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
import venv
import zipfile
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
    venv_python,
)

CHECK_SCRIPT = """
import asyncio, os, sys
from importlib import metadata
import livekit.plugins.openai as m
from livekit.plugins.openai import realtime
from livekit.plugins.openai.realtime.realtime_model_beta import RealtimeModelBeta

async def main() -> None:
    model = realtime.RealtimeModel.with_azure(
        azure_deployment="d", azure_endpoint="http://127.0.0.1:9", api_key="k",
        api_version="2024-10-01-preview",
    )
    assert isinstance(model, RealtimeModelBeta), type(model)
    await model.aclose()
    # without api_version (and without OPENAI_API_VERSION): the GA protocol
    os.environ.pop("OPENAI_API_VERSION", None)
    ga = realtime.RealtimeModel.with_azure(
        azure_deployment="d", azure_endpoint="http://127.0.0.1:9", api_key="k",
    )
    assert type(ga) is realtime.RealtimeModel, type(ga)
    await ga.aclose()

asyncio.run(main())
print("VERSION", metadata.version("livekit-plugins-openai"))
print("FILE", m.__file__)
"""


def _installed_package_dir(python: Path) -> Path:
    out = run([python, "-c", CHECK_SCRIPT]).output
    assert f"VERSION {FORK_VERSION}" in out, out
    (file_line,) = [ln for ln in out.splitlines() if ln.startswith("FILE ")]
    return Path(file_line[5:]).parent


def _reference_tree(clone: Path, sdist: Path, dest: Path) -> Path:
    """Upstream sdist + series applied independently of our applier, with `git apply`."""
    repo = dest / "ref"
    plugin = repo / PLUGIN_SUBDIR
    plugin.parent.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(dest / "x", filter="data")
        else:  # the pinned, hash-verified upstream archive
            tar.extractall(dest / "x")
    (top,) = (dest / "x").iterdir()
    shutil.move(str(top), plugin)
    run(["git", "init", "-q"], cwd=repo)
    patches = clone / "patches"
    names = [
        ln.split("#", 1)[0].strip()
        for ln in (patches / "series").read_text().splitlines()
        if ln.split("#", 1)[0].strip()
    ]
    assert names, "empty series"
    for name in names:
        # the monorepo's tests/ and root makefile are not part of the plugin sdist
        run(["git", "apply", "--exclude=tests/*", "--exclude=makefile", patches / name], cwd=repo)
    # the fork's own modules are added whole from src/ (not patches)
    src = clone / "src"
    for module in sorted(src.rglob("*.py")) if src.is_dir() else []:
        target = plugin / module.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module, target)
    # the build says the fork's version in version.py (the series leaves upstream's alone)
    version_py = plugin / "livekit" / "plugins" / "openai" / "version.py"
    text = version_py.read_text()
    assert text.count('__version__ = "1.4.6"') == 1
    version_py.write_text(text.replace('"1.4.6"', f'"{FORK_VERSION}"'))
    return plugin / "livekit" / "plugins" / "openai"


def _py_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _assert_one_line_error(result: Run, *needles: str) -> str:
    assert result.returncode != 0, result.output
    lines = result.error_lines()
    ours = [ln for ln in lines if all(n in ln for n in needles)]
    assert ours, f"no 'error: ...' line containing {needles} in:\n{result.output[-4000:]}"
    return ours[0]


def test_pip_install_from_git_url(clone: Path, upstream_sdist: Path, tmp_path: Path) -> None:
    """The README's pip line: clone HEAD via git+file, pinned sdist fetched by pip itself."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = venv_python(env_dir)
    run([python, "-m", "pip", "install", "-q", git_url(clone)])
    run([python, "-m", "pip", "check"])
    pkg = _installed_package_dir(python)
    assert env_dir.resolve() in pkg.resolve().parents

    reference = _reference_tree(clone, upstream_sdist, tmp_path)
    installed = _py_files(pkg)
    expected = _py_files(reference)
    assert installed.keys() == expected.keys()
    assert (
        installed["realtime/realtime_model_beta.py"] == expected["realtime/realtime_model_beta.py"]
    )
    assert installed == expected
    # version.py says the distribution's version
    assert f'__version__ = "{FORK_VERSION}"'.encode() in installed["version.py"]


def test_uv_install_from_git_url(clone: Path, upstream_sdist: Path, tmp_path: Path) -> None:
    """The README's uv line, offline for the upstream sdist via LK_OPENAI_FORK_SDIST."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    env_dir = tmp_path / "venv"
    run([uv, "venv", "-q", "--python", sys.executable, env_dir])
    python = venv_python(env_dir)
    run(
        [uv, "pip", "install", "-q", "--python", python, "--refresh-package",
         "livekit-plugins-openai", git_url(clone)],
        env={"LK_OPENAI_FORK_SDIST": str(upstream_sdist)},
    )  # fmt: skip
    run([uv, "pip", "check", "--python", python])
    _installed_package_dir(python)


def _pip_wheel(pip_cmd: list[str], repo: Path, out: Path, sdist: Path | None) -> Run:
    env = {"LK_OPENAI_FORK_SDIST": str(sdist)} if sdist else {}
    return run(
        [*pip_cmd, "wheel", "--no-deps", "--no-cache-dir", "-w", out, repo / PLUGIN_SUBDIR],
        env=env,
        check=False,
    )


def _set_pin_hash(repo: Path, new_hash: str) -> None:
    pin = repo / "patches" / "upstream.txt"
    text, count = re.subn(r"sha256:[0-9a-f]{64}", f"sha256:{new_hash}", pin.read_text())
    assert count == 1
    pin.write_text(text)


def test_tampered_hash_is_refused_offline(
    work_clone: Path, upstream_sdist: Path, pip_cmd: list[str], tmp_path: Path
) -> None:
    _set_pin_hash(work_clone, "0" * 64)
    out = tmp_path / "wheels"
    result = _pip_wheel(pip_cmd, work_clone, out, upstream_sdist)
    line = _assert_one_line_error(result, "sha256 mismatch", "expected " + "0" * 64)
    assert re.search(r"got [0-9a-f]{64}$", line), line
    assert not list(out.glob("*")) if out.exists() else True


def test_tampered_hash_is_refused_by_the_index_download(
    work_clone: Path, local_index: LocalIndex, pip_cmd: list[str], tmp_path: Path
) -> None:
    """Same refusal when the sdist comes from an index (which lists the real file's hash)."""
    _set_pin_hash(work_clone, "1" * 64)
    out = tmp_path / "wheels"
    result = run(
        [*pip_cmd, "wheel", "--no-deps", "--no-cache-dir", "-w", out, work_clone / PLUGIN_SUBDIR],
        env=isolated_env(PIP_INDEX_URL=local_index.url),
        check=False,
    )
    _assert_one_line_error(result, "sha256 mismatch", "expected " + "1" * 64)
    assert not out.exists() or not list(out.iterdir())


PLUGIN_PREFIX = "livekit-plugins/livekit-plugins-openai/"


def _series(repo: Path) -> list[str]:
    lines = (repo / "patches" / "series").read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def test_broken_patch_is_refused_naming_patch_file_and_hunk(
    work_clone: Path, upstream_sdist: Path, pip_cmd: list[str], tmp_path: Path
) -> None:
    # the last patch that modifies a plugin file (a test-only patch has nothing to break)
    name = [
        n
        for n in _series(work_clone)
        if f"--- a/{PLUGIN_PREFIX}" in (work_clone / "patches" / n).read_text()
    ][-1]
    patch = work_clone / "patches" / name
    lines = patch.read_text().splitlines(keepends=True)
    # break the first context line of the second hunk of a modified plugin file if there is one,
    # else of the first
    hunk_starts = [i for i, ln in enumerate(lines) if ln.startswith("@@ ")]
    plugin_hunks = [
        i
        for i in hunk_starts
        if [ln for ln in lines[:i] if ln.startswith("--- ")][-1].startswith(
            f"--- a/{PLUGIN_PREFIX}"
        )
    ]
    start = plugin_hunks[1] if len(plugin_hunks) > 1 else plugin_hunks[0]
    file_line = [ln for ln in lines[:start] if ln.startswith("+++ b/")][-1]
    target = file_line[len("+++ b/") :].strip()
    # the hunk number counts within its file diff
    diff_start = max(i for i, ln in enumerate(lines[:start]) if ln.startswith("diff --git "))
    hunk_no = sum(1 for i in hunk_starts if diff_start < i <= start)
    ctx = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(" "))
    lines[ctx] = " BROKEN" + lines[ctx][1:]
    patch.write_text("".join(lines))
    out = tmp_path / "wheels"
    result = _pip_wheel(pip_cmd, work_clone, out, upstream_sdist)
    _assert_one_line_error(result, f"patch {name} does not apply", target, f"hunk #{hunk_no}")
    assert not out.exists() or not list(out.iterdir())


def test_series_naming_a_missing_patch_is_refused(
    work_clone: Path, upstream_sdist: Path, pip_cmd: list[str], tmp_path: Path
) -> None:
    series = work_clone / "patches" / "series"
    series.write_text(series.read_text() + "0999-not-there.patch\n")
    out = tmp_path / "wheels"
    result = _pip_wheel(pip_cmd, work_clone, out, upstream_sdist)
    _assert_one_line_error(result, "series names 0999-not-there.patch", "does not exist")
    assert not out.exists() or not list(out.iterdir())


def test_missing_pin_is_refused(
    work_clone: Path, upstream_sdist: Path, pip_cmd: list[str], tmp_path: Path
) -> None:
    (work_clone / "patches" / "upstream.txt").unlink()
    out = tmp_path / "wheels"
    result = _pip_wheel(pip_cmd, work_clone, out, upstream_sdist)
    _assert_one_line_error(result, "upstream pin not found")
    assert not out.exists() or not list(out.iterdir())


def test_fork_sdist_builds_the_same_wheel(
    clone: Path, upstream_sdist: Path, pip_cmd: list[str], tmp_path: Path
) -> None:
    """build_sdist carries packaging + patches + pin; its wheel equals the repo's wheel."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    env = {"LK_OPENAI_FORK_SDIST": str(upstream_sdist)}
    sdist_dir = tmp_path / "sdist"
    run([uv, "build", "-q", "--sdist", "--out-dir", sdist_dir, clone / PLUGIN_SUBDIR], env=env)
    (sdist,) = sdist_dir.glob("*.tar.gz")
    assert sdist.name == f"livekit_plugins_openai-{FORK_VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {
        "pyproject.toml",
        "LICENSE",
        "NOTICE",
        "patches/series",
        "patches/upstream.txt",
    } <= names
    assert {f"patches/{n}" for n in _series(clone)} <= names
    assert not any(n.startswith("livekit/") for n in names), "upstream sources in the sdist"

    from_sdist = run(
        [*pip_cmd, "wheel", "--no-deps", "--no-cache-dir", "-w", tmp_path / "a", sdist], env=env
    )
    from_repo = _pip_wheel(pip_cmd, clone, tmp_path / "b", upstream_sdist)
    assert from_sdist.returncode == 0 and from_repo.returncode == 0, from_repo.output
    (wa,) = (tmp_path / "a").glob("*.whl")
    (wb,) = (tmp_path / "b").glob("*.whl")
    with zipfile.ZipFile(wa) as za, zipfile.ZipFile(wb) as zb:
        assert {n: za.read(n) for n in za.namelist()} == {n: zb.read(n) for n in zb.namelist()}
