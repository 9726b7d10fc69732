"""The patch queue (``tools/patch_queue.py``): ``patches/`` laid out as git commits and back.

Exporting an unchanged tree writes nothing; a one-line edit of one patch's commit rewrites only
that patch; a new commit becomes a new patch at the end of the series, named by its whole
subject; a re-cut renumbers the series, keeps names by subject and removes dropped patches; a
reworded commit keeps its patch's name and the series comment above it; the ``makefile`` hunk of
the test patch survives the round trip though the sdist has no ``makefile``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(os.environ.get("FORK_REPO_ROOT", Path(__file__).resolve().parent.parent))
SDIST = os.environ.get("FORK_UPSTREAM_SDIST", "")

pytestmark = pytest.mark.skipif(
    not SDIST or shutil.which("git") is None, reason="needs FORK_UPSTREAM_SDIST (nox) and git"
)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def _load(patches: Path) -> ModuleType:
    """The tool, pointed at a copy of ``patches/`` (the repository's stays untouched)."""
    spec = importlib.util.spec_from_file_location("patch_queue", REPO / "tools" / "patch_queue.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("patch_queue", module)
    spec.loader.exec_module(module)
    setattr(module, "PATCHES", patches)  # noqa: B010  (the module reads its global)
    return module


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo)}
    return subprocess.run(
        ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def queue(tmp_path: Path) -> tuple[ModuleType, Path, Path]:
    patches = tmp_path / "patches"
    shutil.copytree(REPO / "patches", patches)
    tool = _load(patches)
    tree = tmp_path / "agents"
    tool.make_tree(Path(SDIST), tree)
    return tool, patches, tree


def test_unchanged_tree_exports_the_committed_patches(
    queue: tuple[ModuleType, Path, Path],
) -> None:
    tool, patches, tree = queue
    before = {p.name: p.read_bytes() for p in patches.iterdir() if p.is_file()}
    done = tool.export(tree, check=False)
    assert (done.changed, done.added) == ([], [])
    assert {p.name: p.read_bytes() for p in patches.iterdir() if p.is_file()} == before


def test_one_line_edit_rewrites_only_its_patch(queue: tuple[ModuleType, Path, Path]) -> None:
    tool, patches, tree = queue
    names = tool.lk_fork_patch.read_series(patches)
    # the first patch (the openai cap) edits pyproject.toml: change one of its added lines
    pyproject = tree / tool.PLUGIN_DIR / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    assert '"openai' in text
    pyproject.write_text(text.replace('"openai', '"openai ', 1), encoding="utf-8")
    first = _git(tree, "rev-list", "--reverse", "upstream..HEAD").split()[0]
    _git(tree, "commit", "-qam", "fixup! " + _git(tree, "log", "-1", "--format=%s", first).strip())
    _git(tree, "-c", "sequence.editor=:", "rebase", "-q", "-i", "--autosquash", "upstream")
    done = tool.export(tree, check=True)
    assert (done.changed, done.added) == ([names[0]], [])


def test_new_commit_becomes_a_new_patch(queue: tuple[ModuleType, Path, Path]) -> None:
    tool, patches, tree = queue
    names = tool.lk_fork_patch.read_series(patches)
    (tree / tool.PLUGIN_DIR / "NEWS.md").write_text("news\n", encoding="utf-8")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-qm", "docs(openai): add a news file")
    done = tool.export(tree, check=False)
    added = f"{len(names) + 1:04d}-docs-openai-add-a-news-file.patch"
    assert (done.changed, done.added) == ([], [added])
    assert tool.lk_fork_patch.read_series(patches)[-1] == added
    assert "+news" in (patches / added).read_text(encoding="utf-8")


def test_makefile_preimage_puts_the_hunk_at_its_lines() -> None:
    tool = _load(REPO / "patches")
    section = (
        "diff --git a/makefile b/makefile\n"
        "index 1234567..89abcde 100644\n"
        "--- a/makefile\n"
        "+++ b/makefile\n"
        "@@ -4,3 +4,4 @@ unit-tests:\n"
        " \ta \\\n"
        "-\tb \\\n"
        "+\tb2 \\\n"
        "+\tc \\\n"
        " \td\n"
    )
    assert tool.makefile_preimage(section) == "\n\nunit-tests:\n\ta \\\n\tb \\\n\td\n"


def test_a_recut_renumbers_keeps_names_by_subject_and_removes_dropped_patches(
    queue: tuple[ModuleType, Path, Path],
) -> None:
    tool, patches, tree = queue
    names = tool.lk_fork_patch.read_series(patches)
    assert len(names) >= 3
    # re-cut: drop the first patch's commit, keep the others in order
    commits = _git(tree, "rev-list", "--reverse", "upstream..HEAD").split()
    _git(tree, "reset", "-q", "--hard", "upstream")
    for commit in commits[1:]:
        _git(tree, "cherry-pick", commit)
    done = tool.export(tree, check=False)
    expected = [f"{i:04d}-{tool._slug(n)}" for i, n in enumerate(names[1:], start=1)]
    assert tool.lk_fork_patch.read_series(patches) == expected
    assert done.removed == [names[0]]
    assert done.renamed == sorted(zip(names[1:], expected, strict=True))
    assert not (patches / names[0]).exists()
    # a second export of the same tree rewrites nothing
    again = tool.export(tree, check=True)
    assert (again.changed, again.added, again.renamed, again.removed) == ([], [], [], [])


def _amend(tree: Path, position: int, edit: Callable[[], None], *amend_args: str) -> None:
    """Amend the commit at ``position`` (0-based, after ``upstream``) in place: check it out,
    run ``edit``, ``git commit --amend -a *amend_args``, then replay the commits after it."""
    commits = _git(tree, "rev-list", "--reverse", "upstream..HEAD").split()
    _git(tree, "reset", "-q", "--hard", commits[position])
    edit()
    _git(tree, "commit", "-q", "--amend", "-a", *amend_args)
    for commit in commits[position + 1 :]:
        _git(tree, "cherry-pick", commit)


def _reword(tree: Path, position: int, subject: str) -> None:
    """Give the commit at ``position`` the subject ``subject``."""
    commits = _git(tree, "rev-list", "--reverse", "upstream..HEAD").split()
    body = _git(tree, "log", "-1", "--format=%b", commits[position])
    _amend(tree, position, lambda: None, "-m", subject, "-m", body)


def test_a_reworded_commit_keeps_its_patch_name_and_series_comment(
    queue: tuple[ModuleType, Path, Path],
) -> None:
    tool, patches, tree = queue
    names = tool.lk_fork_patch.read_series(patches)
    series = (patches / "series").read_text(encoding="utf-8")
    last = len(names) - 1
    comment = series.splitlines()[series.splitlines().index(names[last]) - 1]
    assert comment.startswith("#"), "the last entry of patches/series has a comment above it"
    _reword(tree, last, "feat(openai): a much longer reworded subject that git would cut short")
    done = tool.export(tree, check=False)
    assert (done.changed, done.added, done.renamed, done.removed) == ([names[last]], [], [], [])
    assert tool.lk_fork_patch.read_series(patches) == names
    assert (patches / "series").read_text(encoding="utf-8") == series
    assert "a much longer reworded subject that git would cut short" in " ".join(
        (patches / names[last]).read_text(encoding="utf-8").split()
    )


def test_a_new_commit_is_named_by_its_whole_subject(queue: tuple[ModuleType, Path, Path]) -> None:
    tool, patches, tree = queue
    names = tool.lk_fork_patch.read_series(patches)
    (tree / tool.PLUGIN_DIR / "NEWS.md").write_text("news\n", encoding="utf-8")
    _git(tree, "add", "-A")
    subject = "docs(openai): add a news file that says what changed in each release of the fork"
    _git(tree, "commit", "-qm", subject)
    done = tool.export(tree, check=False)
    slug = "docs-openai-add-a-news-file-that-says-what-changed-in-each-release-of-the-fork"
    assert done.added == [f"{len(names) + 1:04d}-{slug}.patch"]


def test_an_edit_rewrites_only_its_patch_though_later_ones_touch_the_same_file(
    queue: tuple[ModuleType, Path, Path],
) -> None:
    """A one-line edit (same line count) of a file that later patches edit too rewrites only the
    patch of the commit edited: the export carries no blob ids that the later patches would
    change with it."""
    tool, patches, tree = queue
    names = tool.lk_fork_patch.read_series(patches)
    marker = "# not an event (logged): one bad frame does not end the connection"
    second = next(i for i, n in enumerate(names) if marker in (patches / n).read_text("utf-8"))
    touched = "livekit/plugins/openai/realtime/realtime_model_beta.py"
    later = [n for n in names[second + 1 :] if touched in (patches / n).read_text("utf-8")]
    assert later, "a later patch edits the same file (else the test shows nothing)"
    path = tree / tool.PLUGIN_DIR / touched

    def _edit() -> None:
        text = path.read_text(encoding="utf-8")
        assert marker in text
        path.write_text(text.replace(marker, marker + " (edited)", 1), encoding="utf-8")

    _amend(tree, second, _edit, "--no-edit")
    done = tool.export(tree, check=True)
    assert (done.changed, done.added, done.renamed, done.removed) == ([names[second]], [], [], [])
