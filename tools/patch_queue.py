#!/usr/bin/env python3
"""Edit ``patches/`` as git commits: lay the series out as a work tree, export it back.

``tree`` makes ``.work/agents``: the pinned sdist laid out as the livekit/agents monorepo, one
commit (tagged ``upstream``), then one commit per patch of ``patches/series`` (``git am``). Edit,
commit, ``git rebase -i upstream`` (or re-cut the history from ``upstream``); then ``export``
writes the commits back as ``patches/`` files numbered 0001..N in commit order: a patch keeps
its name while its subject stays (or, reworded, while it keeps its position), only the files
whose bytes changed are rewritten, a new commit becomes a new patch, a patch no commit is left
for is removed, and ``patches/series`` is rewritten in the tree's order. ``--check`` only
reports what would change (CI uses it to show that the committed series is what an export of it
produces).

The sdist has no monorepo ``makefile``, which a test patch may touch: the tree gets one made of
that hunk's own context lines (at their line numbers, the lines before them blank), enough for
``git am`` and ``git format-patch`` to reproduce the hunk. The export leaves out the ``index``
lines (blob ids): ``git am`` does not need them, and a change to one patch would otherwise
rewrite the ids of every later patch that touches the same file.

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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches"
DEFAULT_DIR = ROOT / ".work" / "agents"
PLUGIN_DIR = "livekit-plugins/livekit-plugins-openai"
sys.path.insert(0, str(ROOT / PLUGIN_DIR / "_build"))
import lk_fork_backend  # noqa: E402
import lk_fork_patch  # noqa: E402

BASE_TAG = "upstream"
# stable bytes: no commit ids, no version trailer, `[PATCH]` subjects (the export drops the
# `index` lines, so no blob ids either)
FORMAT_PATCH = (
    "format-patch",
    "-q",
    "--zero-commit",
    "--no-signature",
    "--no-numbered",
    # a new or reworded commit's file name is its whole subject (git cuts it at 64 by default)
    "--filename-max-length=200",
)
_MAKEFILE = "makefile"
_SECTION_RE = re.compile(r"^diff --git a/(\S+) b/\S+$", re.MULTILINE)
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@ ?(.*)$")
_NUMBER_RE = re.compile(r"^\d{4}-")
_INDEX_RE = re.compile(r"^index [0-9a-f]+\.\.[0-9a-f]+(?: [0-7]+)?\n", re.MULTILINE)
_SUBJECT_PREFIX_RE = re.compile(r"^Subject: (\[PATCH[^\]]*\] )?")


class QueueError(Exception):
    """The tree or the export cannot be made; ``str(err)`` is one line."""


@dataclass(frozen=True)
class Export:
    """What an export found: the series' names and the files that differ or are new."""

    names: list[str]
    changed: list[str]
    added: list[str]
    renamed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


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
    # the recipe's own commits (`git commit --fixup`) need an identity, global or not
    _git(work, "config", "user.name", "patch queue")
    _git(work, "config", "user.email", "queue@localhost")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "livekit-plugins-openai (upstream sdist)")
    _git(work, "tag", BASE_TAG)
    if names:
        _git(work, "am", "-q", *(str(PATCHES / n) for n in names))
    return len(names)


def _slug(exported_name: str) -> str:
    return _NUMBER_RE.sub("", exported_name)


def _subject(patch: str) -> str:
    """The commit subject of a ``git format-patch`` text (its folded ``Subject:`` header)."""
    lines = patch.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Subject: ")), None)
    if start is None:
        return ""
    folded = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith((" ", "\t")):
            break
        folded.append(line)
    return _SUBJECT_PREFIX_RE.sub("", " ".join(ln.strip() for ln in folded))


def _series_text(old: str, names: list[str], renamed: dict[str, str]) -> str:
    """The series file listing ``names``: ``old``'s header (its lines before the first entry)
    kept, and the comment lines right above an entry of ``old`` kept above it (renamed entries
    by their new name)."""
    header: list[str] = []
    above: dict[str, list[str]] = {}
    pending: list[str] = []
    first = True
    for raw in old.splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            (header if first else pending).append(raw)
            continue
        first = False
        above[renamed.get(entry, entry)] = pending
        pending = []
    out = [*header]
    for name in names:
        out.extend(above.get(name, []))
        out.append(name)
    return "".join(f"{line}\n" for line in out)


def export(work: Path, *, check: bool) -> Export:
    """Write the commits of ``work`` after ``upstream`` back into ``patches/`` (or, with
    ``check``, only report what differs).

    Commit ``N`` after ``upstream`` becomes ``NNNN-<slug>.patch``, ``NNNN`` its position: the
    slug of the committed patch with the same subject, else (a reworded commit) that of the
    committed patch at its position if no commit has that patch's subject, else the one
    ``git format-patch`` gives for the whole subject.
    So a re-cut (commits reordered, merged, split, dropped) numbers the series 0001..N in order,
    keeps the names of the patches it keeps, removes the files no commit is left for and rewrites
    ``patches/series`` in the tree's order; an unchanged tree rewrites nothing.
    """
    if not (work / ".git").is_dir():
        raise QueueError(f"{work} is not a patch tree: make it with `tree` first")
    names = lk_fork_patch.read_series(PATCHES)
    committed = {n: (PATCHES / n).read_text(encoding="utf-8") for n in names}
    by_subject: dict[str, str] = {}
    for name in names:
        by_subject.setdefault(_subject(committed[name]), name)
    plan: list[tuple[str, str, str | None]] = []  # (name, text, the committed patch it was)
    with tempfile.TemporaryDirectory() as tmp:
        _git(work, *FORMAT_PATCH, "-o", tmp, f"{BASE_TAG}..HEAD")
        exported = sorted(Path(tmp).glob("*.patch"))
        texts = [path.read_text(encoding="utf-8") for path in exported]
        claimed = {by_subject[s] for s in map(_subject, texts) if s in by_subject}
        for index, (path, text) in enumerate(zip(exported, texts, strict=True)):
            old = by_subject.get(_subject(text))
            if old is None and index < len(names) and names[index] not in claimed:
                # a reworded commit keeps the name of the patch it replaces at its position
                old = names[index]
                claimed.add(old)
            name = f"{index + 1:04d}-{_slug(old if old is not None else path.name)}"
            if any(name == n for n, _, _ in plan):
                raise QueueError(f"two commits of the tree export as {name}: reword one")
            plan.append((name, _INDEX_RE.sub("", text), old))  # no blob ids
    changed: list[str] = []
    added: list[str] = []
    renamed: dict[str, str] = {}
    for name, text, old in plan:
        if old is not None and old != name:
            renamed[old] = name
        if old == name and text == committed[name]:
            continue
        (added if old is None else changed).append(name)
        if not check:
            (PATCHES / name).write_text(text, encoding="utf-8")
    new_names = [name for name, _, _ in plan]
    if not check:
        for name in names:
            if name not in new_names:
                (PATCHES / name).unlink()
        series = PATCHES / "series"
        old_series = series.read_text(encoding="utf-8")
        new_series = _series_text(old_series, new_names, renamed)
        if new_series != old_series:
            series.write_text(new_series, encoding="utf-8")
    return Export(
        names=names,
        changed=changed,
        added=added,
        renamed=sorted(renamed.items()),
        removed=[n for n in names if n not in new_names and n not in renamed],
    )


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
    for old, new in done.renamed:
        print(f"patch_queue: {old} {'would be renamed' if args.check else 'renamed'} {new}")
    for name in done.removed:
        print(f"patch_queue: {name} {'would be removed' if args.check else 'removed'}")
    drift = done.changed or done.added or done.renamed or done.removed
    if not drift:
        print(f"patch_queue: all {len(done.names)} patch(es) are what the tree exports")
    return 1 if args.check and drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
