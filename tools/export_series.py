#!/usr/bin/env python3
"""Write the complete backport series: ``patches/series`` plus one patch per module of ``src/``.

The wheel is built from the pinned sdist, the edits in ``patches/`` and the fork's own modules
copied whole from ``src/``. Upstream takes a series of commits instead, so this writes one:
``git format-patch`` files plus a ``series`` file naming them in order, which ``git am`` applies
onto a livekit/agents checkout at ``livekit-agents@1.4.6`` (or onto the pinned sdist laid out at
``livekit-plugins/livekit-plugins-openai/``, as ``nox -s patches`` does).

Each module is added whole by its own patch (``feat(openai): add realtime/<module>.py``, body:
the first paragraph of the module's docstring), placed just before the first edit patch that
imports it (its added lines name the module: ``from .connection import``, ``from . import
connection``, ``realtime.connection``), after the modules it imports itself; modules are taken in
the order of their imports of each other, ties by name. So every commit of the series imports only
what is already there, and a module lands right before its first user. A module that no edit
imports is an error (nothing would use it). The module patch comes with its unit tests: ``tests/upstream/
test_openai_realtime_<module>.py`` of this repository (plain pytest and pytest-asyncio, no
conftest of ours; our CI runs them against the installed wheel) becomes the monorepo's
``tests/test_openai_realtime_<module>.py``, listed in the ``unit-tests`` target of its root
``makefile`` (inserted before its last entry, ``tests/test_room.py``). The output is stable: fixed author, date and
``--zero-commit``, ``[PATCH]`` subjects without N/M, names numbered by position. Files whose
content is unchanged are not rewritten, so regenerating after a one-line edit rewrites only the
patch carrying that line.

Usage:
    python3 tools/export_series.py OUTDIR
"""

from __future__ import annotations

import ast
import heapq
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches"
SRC = ROOT / "src"
PLUGIN_DIR = "livekit-plugins/livekit-plugins-openai"
sys.path.insert(0, str(ROOT / PLUGIN_DIR / "_build"))
import lk_fork_backend  # noqa: E402
import lk_fork_patch  # noqa: E402

# the identity and date of the module patches (the edit patches keep their own headers)
AUTHOR_NAME = "fork dev"
AUTHOR_EMAIL = "dev@fork.local"
MODULE_DATE = "Tue, 1 Dec 2026 17:00:00 +0000"
# the Forwarded trailer of the module patches, the same as the forwarded edit patches'
FORWARDED = "Forwarded: not yet (part of the livekit-agents@1.4.6 backport PR)"
# the module tests: tests/upstream/<name> here, tests/<name> in the monorepo
UNIT_TESTS = ROOT / "tests" / "upstream"
UNIT_TEST_PREFIX = "test_openai_realtime_"
# the lines of livekit-agents@1.4.6's root makefile around where the module tests are listed: the
# target's name (git's hunk header) and the last entries of its list, by line number; the sdist
# has no makefile, so the module patches are made on a stand-in holding just these lines
MAKEFILE_TARGET = (85, "unit-tests:")
MAKEFILE_TAIL = (
    107,
    (
        "\t\ttests/test_transcription_filter.py \\",
        "\t\ttests/test_tools.py \\",
        "\t\ttests/test_aio_itertools.py \\",
        "\t\ttests/test_room.py",
        "",
        "# ============================================",
        "# Development Workflows",
    ),
)
_MAKEFILE_LAST_ENTRY = "\t\ttests/test_room.py"
_SUBJECT_RE = re.compile(r"^Subject: \[PATCH[^\]]*\] ", re.MULTILINE)
_NUMBER_RE = re.compile(r"^\d{4}-")
# how an added line of an edit patch names a module of the realtime package: a relative import of
# it or of names from the package, or its dotted path
_FROM_MODULE_RE = re.compile(r"^\s*from\s+(?:\.+|[\w.]+\.)(?:realtime\.)?(\w+)\s+import\b")
_FROM_PACKAGE_RE = re.compile(r"^\s*from\s+(?:\.+|[\w.]*realtime)\s+import\s+\(?([\w\s,]+)")
_DOTTED_RE = re.compile(r"\brealtime\.(\w+)")
SERIES_HEADER = (
    "# The complete backport series, written by `python3 dev.py series OUTDIR`\n"
    "# (tools/export_series.py): patches/series with the fork's own modules (src/) each added\n"
    "# by its own patch. Applied in this order onto livekit-agents@1.4.6, from the checkout:\n"
    "#   grep -v '^#' OUTDIR/series | sed 's|^|OUTDIR/|' | xargs git am\n"
)


class ExportError(Exception):
    """The series cannot be exported; ``str(err)`` is one line."""


@dataclass(frozen=True)
class Exported:
    """What an export wrote into its directory."""

    names: list[str]
    written: list[str]
    unchanged: list[str]
    removed: list[str]


def module_summary(path: Path) -> str:
    """The first paragraph of the module docstring of ``path``, as one line of text.

    Raises:
        ExportError: the module has no docstring.
    """
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    if not doc:
        raise ExportError(f"error: {path.relative_to(ROOT)} has no module docstring")
    return " ".join(doc.split("\n\n", 1)[0].split())


def module_message(rel: PurePosixPath, path: Path, unit_test: Path | None = None) -> str:
    """The commit message of the patch that adds module ``rel`` (relative to the package root)
    and, if given, its unit test file."""
    # realtime/chat_sync.py for livekit/plugins/openai/realtime/chat_sync.py
    short = "/".join(rel.parts[3:]) if rel.parts[:3] == ("livekit", "plugins", "openai") else rel
    body = textwrap.fill(module_summary(path), width=72, break_on_hyphens=False)
    if unit_test is not None:
        tests = textwrap.fill(
            f"Unit tests: tests/{unit_test.name}, listed in the makefile's `unit-tests` target.",
            width=72,
            break_on_hyphens=False,
        )
        body += f"\n\n{tests}"
    return f"feat(openai): add {short}\n\n{body}\n\n{FORWARDED}\n"


def _git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_AUTHOR_DATE=MODULE_DATE,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_DATE=MODULE_DATE,
        LC_ALL="C",
        TZ="UTC",
    )
    return env


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "core.abbrev=7", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ExportError(f"error: git {args[0]} failed: {' '.join(out.stderr.split())}")
    return out.stdout


def makefile_stand_in() -> list[str]:
    """The lines of a makefile with :data:`MAKEFILE_TARGET` and :data:`MAKEFILE_TAIL` at their
    line numbers and every other line blank (enough for git to write the hunks upstream's
    makefile takes)."""
    first, tail = MAKEFILE_TAIL
    lines = [""] * (first - 1) + list(tail)
    lines[MAKEFILE_TARGET[0] - 1] = MAKEFILE_TARGET[1]
    return lines


def unit_test_of(rel: PurePosixPath, tests: Path) -> Path | None:
    """This repository's unit test file of module ``rel``, if it has one."""
    path = tests / f"{UNIT_TEST_PREFIX}{rel.stem}.py"
    return path if path.is_file() else None


def module_imports(path: Path, names: Collection[str]) -> set[str]:
    """Which of the sibling modules ``names`` (by stem) the module at ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level != 1:
            continue
        if node.module:
            found.add(node.module.split(".", 1)[0])
        else:
            found.update(alias.name for alias in node.names)
    return found & set(names)


def patch_imports(text: str, names: Collection[str]) -> set[str]:
    """Which of the modules ``names`` (by stem) the added lines of patch ``text`` import."""
    found: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("+") or line.startswith("+++"):
            continue
        code = line[1:]
        if m := _FROM_MODULE_RE.match(code):
            found.add(m.group(1))
        if m := _FROM_PACKAGE_RE.match(code):
            found.update(n.strip() for n in m.group(1).split(","))
        found.update(_DOTTED_RE.findall(code))
    return found & set(names)


def dependency_order(deps: Mapping[str, Collection[str]]) -> list[str]:
    """The names of ``deps`` (name -> the names it imports), each after what it imports; ties
    by name.

    Raises:
        ExportError: the modules import each other in a cycle.
    """
    waiting = {name: set(deps[name]) & set(deps) for name in deps}
    ready = [name for name, needs in waiting.items() if not needs]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for other, needs in waiting.items():
            if name in needs:
                needs.discard(name)
                if not needs:
                    heapq.heappush(ready, other)
    if len(order) != len(deps):
        cycle = sorted(set(deps) - set(order))
        raise ExportError(f"error: the modules of src/ import each other in a cycle: {cycle}")
    return order


def interleave(
    edits: Sequence[tuple[str, str]], deps: Mapping[str, Collection[str]]
) -> list[tuple[str, str]]:
    """The series' order: ``("edit", name)`` for each edit patch of ``edits`` (``(name,
    text)``), each preceded by ``("module", stem)`` for the modules it is the first to import,
    with what they import, in :func:`dependency_order` (see the module docstring).

    Raises:
        ExportError: a cycle, or a module that no edit imports.
    """
    rank = {name: i for i, name in enumerate(dependency_order(deps))}
    placed: set[str] = set()
    order: list[tuple[str, str]] = []
    for name, text in edits:
        need = patch_imports(text, deps)
        while True:  # what they import, transitively
            more = {d for n in need for d in deps[n]} - need
            if not more:
                break
            need |= more
        for module in sorted(need - placed, key=rank.__getitem__):
            order.append(("module", module))
            placed.add(module)
        order.append(("edit", name))
    unused = sorted(set(deps) - placed)
    if unused:
        raise ExportError(
            f"error: no patch of patches/series imports {', '.join(unused)} (src/): a module "
            "lands before its first user, and this one has none"
        )
    return order


def makefile_lines_added(text: str) -> int:
    """Lines the ``makefile`` hunks of patch ``text`` add, less those they remove."""
    n, in_makefile = 0, False
    for line in text.splitlines():
        if line.startswith("diff --git "):
            in_makefile = line == "diff --git a/makefile b/makefile"
        elif in_makefile and not line.startswith(("+++", "---")):
            n += line.startswith("+") - line.startswith("-")
    return n


def module_patches(
    src: Path,
    work: Path,
    tests: Path = UNIT_TESTS,
    order: Sequence[tuple[PurePosixPath, int]] | None = None,
) -> list[tuple[str, str]]:
    """``(name without number, text)`` of one ``git format-patch`` file per module of ``src``,
    each with the module's unit tests (see the module docstring).

    ``order`` is ``(module, makefile lines the edit patches before it added)`` in series order
    (default: every module in path order, none before it), so that each makefile hunk states
    the line it applies at in the series."""
    repo = work / "modules"
    repo.mkdir()
    env = _git_env(work)
    _git(repo, env, "init", "-q")
    makefile_lines = makefile_stand_in()
    makefile = repo / "makefile"
    makefile.write_text("".join(f"{ln}\n" for ln in makefile_lines), encoding="utf-8")
    _git(repo, env, "add", "makefile")
    _git(repo, env, "commit", "-q", "-m", "base")
    if order is None:
        order = [(rel, 0) for rel in lk_fork_backend.own_modules(src)]
    shifted = 0
    commits: list[str] = []
    for rel, shift in order:
        # the edits' entries go above the module tests: blank lines stand in for them
        if shift != shifted:
            makefile_lines[MAKEFILE_TARGET[0] : MAKEFILE_TARGET[0]] = [""] * (shift - shifted)
            makefile.write_text("".join(f"{ln}\n" for ln in makefile_lines), encoding="utf-8")
            _git(repo, env, "commit", "-q", "-m", "the edits' makefile entries", "--", "makefile")
            shifted = shift
        target = repo / PLUGIN_DIR / Path(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.joinpath(*rel.parts).read_bytes())
        _git(repo, env, "add", "--", str(target.relative_to(repo)))
        unit_test = unit_test_of(rel, tests)
        if unit_test is not None:
            (repo / "tests").mkdir(exist_ok=True)
            (repo / "tests" / unit_test.name).write_bytes(unit_test.read_bytes())
            makefile_lines.insert(
                makefile_lines.index(_MAKEFILE_LAST_ENTRY), f"\t\ttests/{unit_test.name} \\"
            )
        makefile.write_text("".join(f"{ln}\n" for ln in makefile_lines), encoding="utf-8")
        _git(
            repo, env, "add", "--", "makefile", *([f"tests/{unit_test.name}"] if unit_test else [])
        )
        message = module_message(rel, src.joinpath(*rel.parts), unit_test)
        _git(repo, env, "commit", "-q", "-m", message)
        commits.append(_git(repo, env, "rev-parse", "HEAD").strip())
    files = []
    for i, commit in enumerate(commits):
        listing = _git(
            repo,
            env,
            "format-patch",
            "--zero-commit",
            "--no-signature",
            "--no-numbered",
            "--no-thread",
            "--stat=72",
            "-o",
            str(work / "format-patch" / str(i)),
            "-1",
            commit,
        )
        files += [Path(line) for line in listing.splitlines() if line.strip()]
    if len(files) != len(order):
        raise ExportError(f"error: format-patch wrote {len(files)} files for {len(order)} modules")
    return [(_NUMBER_RE.sub("", f.name), f.read_text(encoding="utf-8")) for f in files]


def edit_patch(name: str) -> tuple[str, str]:
    """``(name without number, text)`` of a patch of ``patches/``, its subject without N/M."""
    text = (PATCHES / name).read_text(encoding="utf-8")
    if not _SUBJECT_RE.search(text):
        raise ExportError(f"error: patches/{name} has no 'Subject: [PATCH...]' header")
    return _NUMBER_RE.sub("", name), _SUBJECT_RE.sub("Subject: [PATCH] ", text, count=1)


def build_series(patches_dir: Path = PATCHES, src: Path = SRC) -> list[tuple[str, str]]:
    """The complete series in order, as ``(file name, text)``.

    Raises:
        ExportError: the series or a module cannot be read, or git failed.
    """
    try:
        names = lk_fork_patch.read_series(patches_dir)
    except lk_fork_patch.PatchError as e:
        raise ExportError(str(e)) from None
    edits = [edit_patch(n) for n in names]
    rels = {rel.stem: rel for rel in lk_fork_backend.own_modules(src)}
    if len(rels) != len(lk_fork_backend.own_modules(src)):
        raise ExportError("error: two modules of src/ share a name")
    deps = {stem: module_imports(src.joinpath(*rel.parts), rels) for stem, rel in rels.items()}
    order = interleave(edits, deps)
    texts = dict(edits)
    added, shifts = 0, []
    for kind, name in order:
        if kind == "edit":
            added += makefile_lines_added(texts[name])
        else:
            shifts.append((rels[name], added))
    with tempfile.TemporaryDirectory(prefix="lk-fork-series-") as tmp:
        modules = iter(module_patches(src, Path(tmp), order=shifts))
    ordered = [(name, texts[name]) if kind == "edit" else next(modules) for kind, name in order]
    return [(f"{i:04d}-{stem}", text) for i, (stem, text) in enumerate(ordered, start=1)]


def export(outdir: Path, patches_dir: Path = PATCHES, src: Path = SRC) -> Exported:
    """Write the series into ``outdir``; only files whose content changed are rewritten.

    ``outdir`` may hold only an earlier export (``series`` and ``*.patch``): patches no longer in
    the series are removed, anything else there is refused.

    Raises:
        ExportError: as :func:`build_series`, or ``outdir`` holds other files.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    foreign = sorted(
        p.name for p in outdir.iterdir() if p.name != "series" and not p.name.endswith(".patch")
    )
    if foreign:
        raise ExportError(f"error: {outdir} holds more than a series: {', '.join(foreign)}")
    series = build_series(patches_dir, src)
    files = [*series, ("series", SERIES_HEADER + "".join(f"{n}\n" for n, _ in series))]
    written, unchanged = [], []
    for name, text in files:
        path = outdir / name
        data = text.encode("utf-8")
        if path.is_file() and path.read_bytes() == data:
            unchanged.append(name)
            continue
        path.write_bytes(data)
        written.append(name)
    keep = {n for n, _ in files}
    removed = sorted(p.name for p in outdir.glob("*.patch") if p.name not in keep)
    for name in removed:
        (outdir / name).unlink()
    return Exported([n for n, _ in series], written, unchanged, removed)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: export_series.py OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(args[0]).resolve()
    try:
        done = export(outdir)
    except ExportError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(
        f"series: {len(done.names)} patches in {outdir}; rewrote {len(done.written)}"
        + (f" ({', '.join(done.written)})" if done.written else "")
        + f", unchanged {len(done.unchanged)}"
        + (f", removed {', '.join(done.removed)}" if done.removed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
