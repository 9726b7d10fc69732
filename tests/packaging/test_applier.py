"""Unit tests of the strict patch applier and the safe sdist extraction (fast, in-process)."""

from __future__ import annotations

import io
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from pipeline_support import PLUGIN_SUBDIR

P = f"{PLUGIN_SUBDIR}/"


@pytest.fixture(scope="module")
def build_modules(repo_root: Path) -> Iterator[tuple[ModuleType, ModuleType]]:
    """The backend modules from the repository under test (build tooling, not the plugin)."""
    build_dir = str(repo_root / PLUGIN_SUBDIR / "_build")
    sys.path.insert(0, build_dir)
    try:
        import lk_fork_backend
        import lk_fork_patch

        yield lk_fork_patch, lk_fork_backend
    finally:
        sys.path.remove(build_dir)


def _diff(path: str, hunks: str, new_file: bool = False) -> str:
    head = f"diff --git a/{path} b/{path}\n"
    if new_file:
        head += f"new file mode 100644\n--- /dev/null\n+++ b/{path}\n"
    else:
        head += f"--- a/{path}\n+++ b/{path}\n"
    return head + hunks


ORIGINAL = "".join(f"line {i}\n" for i in range(1, 11))
HUNK_AT_4 = "@@ -4,3 +4,3 @@\n line 4\n-line 5\n+LINE FIVE\n line 6\n"


def _apply(mods: tuple[ModuleType, ModuleType], tmp_path: Path, patch_text: str) -> Path:
    patch_mod, _ = mods
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    (root / "pkg" / "f.py").write_text(ORIGINAL)
    patches = tmp_path / "patches"
    patches.mkdir(exist_ok=True)
    (patches / "0001-x.patch").write_text(
        "Subject: [PATCH] x\n\n---\n" + patch_text + "-- \n2.39\n"
    )
    (patches / "series").write_text("# comment\n0001-x.patch\n")
    patch_mod.apply_series(root, patches)
    return root


def test_exact_hunk_applies(build_modules: tuple[ModuleType, ModuleType], tmp_path: Path) -> None:
    root = _apply(build_modules, tmp_path, _diff(P + "pkg/f.py", HUNK_AT_4))
    assert (root / "pkg" / "f.py").read_text() == ORIGINAL.replace("line 5\n", "LINE FIVE\n")


def test_offset_is_refused(build_modules: tuple[ModuleType, ModuleType], tmp_path: Path) -> None:
    """`patch`/`git apply` would find this hunk one line down; the strict applier must not."""
    shifted = HUNK_AT_4.replace("@@ -4,3 +4,3 @@", "@@ -3,3 +3,3 @@")
    with pytest.raises(build_modules[0].PatchError) as err:
        _apply(build_modules, tmp_path, _diff(P + "pkg/f.py", shifted))
    msg = str(err.value)
    assert msg.startswith("error: patch 0001-x.patch does not apply")
    assert "pkg/f.py hunk #1 (@@ -3,3 +3,3 @@)" in msg
    assert (tmp_path / "tree" / "pkg" / "f.py").read_text() == ORIGINAL  # untouched


def test_new_file_and_tests_skipped(
    build_modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    text = _diff(P + "pkg/new.py", "@@ -0,0 +1,2 @@\n+a\n+b\n", new_file=True)
    text += _diff("tests/test_x.py", "@@ -0,0 +1 @@\n+x\n", new_file=True)
    root = _apply(build_modules, tmp_path, text)
    assert (root / "pkg" / "new.py").read_text() == "a\nb\n"
    assert not (root / "tests").exists()


def test_upstream_makefile_skipped(
    build_modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    """The backport's test patch lists its test in the monorepo makefile's unit-tests target."""
    text = _diff("makefile", "@@ -1 +1,2 @@\n unit-tests:\n+\ttests/test_x.py\n")
    text += _diff(P + "pkg/f.py", HUNK_AT_4)
    root = _apply(build_modules, tmp_path, text)
    assert not (root / "makefile").exists()
    assert (root / "pkg" / "f.py").read_text() == ORIGINAL.replace("line 5\n", "LINE FIVE\n")


def test_path_outside_plugin_is_refused(
    build_modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    text = _diff("livekit-agents/livekit/agents/llm/utils.py", HUNK_AT_4)
    with pytest.raises(build_modules[0].PatchError, match="outside"):
        _apply(build_modules, tmp_path, text)


def test_traversal_is_refused(build_modules: tuple[ModuleType, ModuleType], tmp_path: Path) -> None:
    with pytest.raises(build_modules[0].PatchError, match="unsafe path"):
        _apply(build_modules, tmp_path, _diff(P + "../../escape.py", HUNK_AT_4))


def _tarball(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, link, data in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "member",
    [("pkg-1.0/../evil.py", None, b"x"), ("/abs.py", None, b"x"), ("pkg-1.0/l", b"/etc", b"")],
)
def test_unsafe_sdist_is_refused(
    build_modules: tuple[ModuleType, ModuleType],
    tmp_path: Path,
    member: tuple[str, bytes | None, bytes],
) -> None:
    backend = build_modules[1]
    sdist = _tarball(tmp_path / "pkg-1.0.tar.gz", [("pkg-1.0/ok.py", None, b"ok"), member])
    (tmp_path / "out").mkdir()
    with pytest.raises(backend.ForkBuildError, match=r"^error: pkg-1.0.tar.gz: (unsafe|refusing)"):
        backend.safe_extract(sdist, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()
