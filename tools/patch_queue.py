#!/usr/bin/env python3
"""Edit ``patches/`` as git commits: lay the series out as a work tree, export it back.

``tree`` makes ``.work/agents``: the pinned sdist laid out as the livekit/agents monorepo, one
commit (tagged ``upstream``), then one commit per patch of ``patches/series`` (``git am``). Edit,
commit, ``git rebase -i upstream``; then ``export`` writes the commits back as ``patches/``
files: only the files whose bytes changed are rewritten, a commit beyond the listed ones becomes
a new patch appended to ``patches/series``, and ``--check`` only reports what would change (CI
uses it to show that the committed series is what an export of it produces).

The sdist has no monorepo ``makefile``, which a test patch may touch: the tree gets one made of
that hunk's own context lines (at their line numbers, the lines before them blank), enough for
``git am`` and ``git format-patch`` to reproduce the hunk, and the export puts the committed
``index`` line of ``makefile`` back (the blob ids of upstream's real file).

Usage:
    python3 tools/patch_queue.py tree --sdist SDIST [--dir DIR] [--force]
    python3 tools/patch_queue.py export [--dir DIR] [--check]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches"
DEFAULT_DIR = ROOT / ".work" / "agents"
PLUGIN_DIR = "livekit-plugins/livekit-plugins-openai"
sys.path.insert(0, str(ROOT / PLUGIN_DIR / "_build"))
import lk_fork_backend  # noqa: E402
import lk_fork_patch  # noqa: E402

BASE_TAG = "upstream"
# stable bytes: no commit ids, no version trailer, `[PATCH]` subjects, 7-digit blob ids
FORMAT_PATCH = (
    "-c",
    "core.abbrev=7",
    "format-patch",
    "-q",
    "--zero-commit",
    "--no-signature",
    "--no-numbered",
)
_MAKEFILE = "makefile"
_SECTION_RE = re.compile(r"^diff --git a/(\S+) b/\S+$", re.MULTILINE)
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@ ?(.*)$")
_NUMBER_RE = re.compile(r"^\d{4}-")


class QueueError(Exception):
    """The tree or the export cannot be made; ``str(err)`` is one line."""


@dataclass(frozen=True)
class Export:
    """What an export found: the series' names and the files that differ or are new."""

    names: list[str]
    changed: list[str]
    added: list[str]


def _git_env(home: Path) -> dict[str, str]:
    # a fixed committer and no user or system config: the same tree on every machine
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "patch queue",
        "GIT_AUTHOR_EMAIL": "queue@localhost",
        "GIT_COMMITTER_NAME": "patch queue",
        "GIT_COMMITTER_EMAIL": "queue@localhost",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": str(home),
    }


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        env=_git_env(repo),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        command = next(a for a in args if not a.startswith("-") and "=" not in a)
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise QueueError(f"git {command} failed: {detail[0] if detail else done.returncode}")
    return done.stdout


def sections(patch: str) -> dict[str, str]:
    """The ``diff --git`` sections of a patch by path (each up to the next section)."""
    starts = [(m.start(), m.group(1)) for m in _SECTION_RE.finditer(patch)]
    ends = [s for s, _ in starts[1:]] + [len(patch)]
    return {path: patch[start:end] for (start, path), end in zip(starts, ends, strict=True)}


def makefile_preimage(section: str) -> str:
    """A ``makefile`` on which ``section``'s hunks apply at their line numbers: each hunk's
    context and removed lines in place, the line its header names (git's function context)
    just before it, every other line blank."""
    lines: list[str] = []
    hunk_start: int | None = None
    for line in section.splitlines():
        m = _HUNK_RE.match(line)
        if m:
            hunk_start = int(m.group(1))
            lines.extend([""] * (hunk_start - 1 - len(lines)))
            if m.group(2) and hunk_start > 1 and not lines[-1]:
                lines[-1] = m.group(2)
            continue
        if hunk_start is None or line.startswith("+") or line.startswith("\\"):
            continue
        if line.startswith((" ", "-")) or line == "":
            lines.append(line[1:])
    return "".join(f"{line}\n" for line in lines)


def make_tree(sdist: Path, work: Path, *, force: bool = False) -> int:
    """Lay the series out in ``work`` (see the module docstring); returns the patch count."""
    if work.exists():
        if not force:
            raise QueueError(f"{work} exists: export or remove it first (or pass --force)")
        shutil.rmtree(work)
    names = lk_fork_patch.read_series(PATCHES)
    plugin = work / PLUGIN_DIR
    plugin.parent.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(lk_fork_backend.safe_extract(sdist, Path(tmp)), plugin)
    for name in names:
        section = sections((PATCHES / name).read_text(encoding="utf-8")).get(_MAKEFILE)
        if section is not None and not (work / _MAKEFILE).exists():
            (work / _MAKEFILE).write_text(makefile_preimage(section), encoding="utf-8")
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "livekit-plugins-openai (upstream sdist)")
    _git(work, "tag", BASE_TAG)
    if names:
        _git(work, "am", "-q", *(str(PATCHES / n) for n in names))
    return len(names)


def _slug(exported_name: str) -> str:
    return _NUMBER_RE.sub("", exported_name)


def _with_committed_makefile_index(new: str, committed: str | None) -> str:
    """``new`` with the ``makefile`` section's ``index`` line taken from ``committed``."""
    if committed is None:
        return new
    old_section = sections(committed).get(_MAKEFILE)
    new_section = sections(new).get(_MAKEFILE)
    if old_section is None or new_section is None:
        return new
    old_index = next((ln for ln in old_section.splitlines() if ln.startswith("index ")), None)
    new_index = next((ln for ln in new_section.splitlines() if ln.startswith("index ")), None)
    if old_index is None or new_index is None:
        return new
    return new.replace(new_section, new_section.replace(new_index, old_index, 1), 1)


def export(work: Path, *, check: bool) -> Export:
    """Write the commits of ``work`` after ``upstream`` back into ``patches/`` (or, with
    ``check``, only report what differs)."""
    if not (work / ".git").is_dir():
        raise QueueError(f"{work} is not a patch tree: make it with `tree` first")
    names = lk_fork_patch.read_series(PATCHES)
    with tempfile.TemporaryDirectory() as tmp:
        _git(work, *FORMAT_PATCH, "-o", tmp, f"{BASE_TAG}..HEAD")
        exported = sorted(Path(tmp).glob("*.patch"))
        if len(exported) < len(names):
            raise QueueError(
                f"the tree has {len(exported)} commits after `{BASE_TAG}`, patches/series lists "
                f"{len(names)}: a dropped patch is removed from patches/series by hand"
            )
        changed: list[str] = []
        added: list[str] = []
        for index, path in enumerate(exported):
            name = names[index] if index < len(names) else f"{index + 1:04d}-{_slug(path.name)}"
            target = PATCHES / name
            committed = target.read_text(encoding="utf-8") if target.exists() else None
            text = _with_committed_makefile_index(path.read_text(encoding="utf-8"), committed)
            if text == committed:
                continue
            (added if index >= len(names) else changed).append(name)
            if not check:
                target.write_text(text, encoding="utf-8")
        if added and not check:
            with (PATCHES / "series").open("a", encoding="utf-8") as f:
                f.writelines(f"{name}\n" for name in added)
    return Export(names=names, changed=changed, added=added)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tree_p = sub.add_parser("tree", help="lay patches/series out as git commits")
    tree_p.add_argument("--sdist", type=Path, required=True)
    tree_p.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    tree_p.add_argument("--force", action="store_true", help="replace an existing tree")
    export_p = sub.add_parser("export", help="write the tree's commits back into patches/")
    export_p.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    export_p.add_argument("--check", action="store_true", help="report only; exit 1 on change")
    args = parser.parse_args(argv)
    try:
        if args.command == "tree":
            count = make_tree(args.sdist, args.dir, force=args.force)
            print(f"patch_queue: {args.dir}: {count} patch(es) as commits after `{BASE_TAG}`")
            return 0
        done = export(args.dir, check=args.check)
    except (QueueError, lk_fork_patch.PatchError, lk_fork_backend.ForkBuildError) as e:
        print(f"patch_queue: {e}", file=sys.stderr)
        return 1
    verb = "differs from its export" if args.check else "rewritten"
    for name in done.changed:
        print(f"patch_queue: {name} {verb}")
    for name in done.added:
        print(f"patch_queue: {name} {'would be added' if args.check else 'added to series'}")
    if not done.changed and not done.added:
        print(f"patch_queue: all {len(done.names)} patch(es) are what the tree exports")
    return 1 if args.check and (done.changed or done.added) else 0


if __name__ == "__main__":
    raise SystemExit(main())
