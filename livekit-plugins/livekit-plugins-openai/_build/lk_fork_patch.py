"""Strict applier for the fork's `git format-patch` series.

The patches in ``patches/`` are written against the livekit/agents monorepo layout
(``livekit-plugins/livekit-plugins-openai/...``), while the pinned PyPI sdist unpacks to the plugin
directory alone. :func:`apply_series` maps one onto the other and applies every hunk exactly:

* no fuzz and no offset: each hunk's old lines must match the target at the line number the hunk
  header states (after accounting for earlier hunks of the same file diff);
* supported operations are modifying an existing file and creating a new one;
* only paths under ``livekit-plugins/livekit-plugins-openai/`` are applied; the monorepo's
  ``tests/`` and its root ``makefile`` (whose ``unit-tests`` target lists the test files) are
  skipped, since the fork carries its own tests; anything else is an error.

Everything works on bytes so line endings and encodings pass through untouched. The module is
stdlib-only so the build backend, ``noxfile.py`` and the tests can all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

PLUGIN_PREFIX = "livekit-plugins/livekit-plugins-openai/"
SKIPPED_PREFIXES = ("tests/",)
SKIPPED_FILES = ("makefile",)

_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_UNSUPPORTED_HEADERS = (
    b"deleted file mode",
    b"rename from",
    b"rename to",
    b"copy from",
    b"copy to",
    b"old mode",
    b"new mode",
    b"GIT binary patch",
    b"Binary files",
)


class PatchError(Exception):
    """A patch or series problem. ``str(err)`` is a single line starting with ``error: ``."""

    def __init__(self, message: str) -> None:
        line = " ".join(message.split())
        super().__init__(line if line.startswith("error: ") else f"error: {line}")


@dataclass
class Hunk:
    """One ``@@`` hunk: old/new line ranges and the lines of each side (with line endings)."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int
    header: str
    old_lines: list[bytes] = field(default_factory=list)
    new_lines: list[bytes] = field(default_factory=list)


@dataclass
class FileDiff:
    """All hunks a patch applies to one path (monorepo-relative, without ``a/``/``b/``)."""

    path: str
    new_file: bool
    hunks: list[Hunk] = field(default_factory=list)


@dataclass
class ApplyResult:
    """What :func:`apply_series` did: files touched and file diffs skipped, per patch."""

    applied: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_series(patches_dir: Path) -> list[str]:
    """Return the patch file names listed in ``patches_dir/series``, in order.

    Blank lines and ``#`` comments are ignored. Every listed file must exist next to the series.

    Raises:
        PatchError: the series is missing, malformed, or names a missing patch.
    """
    series = patches_dir / "series"
    if not series.is_file():
        raise PatchError(f"error: series file not found: {series}")
    names: list[str] = []
    for lineno, raw in enumerate(series.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) != 1 or "/" in line or "\\" in line or line in (".", ".."):
            raise PatchError(f"error: {series}:{lineno}: expected one patch file name, got {raw!r}")
        if line in names:
            raise PatchError(f"error: {series}:{lineno}: patch {line} is listed twice")
        if not (patches_dir / line).is_file():
            raise PatchError(f"error: series names {line} but {patches_dir / line} does not exist")
        names.append(line)
    return names


def _strip_prefix(raw: bytes, prefix: bytes, patch_name: str) -> str:
    path = raw.split(b"\t", 1)[0].rstrip(b"\r\n")
    if not path.startswith(prefix):
        raise PatchError(f"error: patch {patch_name}: malformed file header {raw!r}")
    return path[len(prefix) :].decode("utf-8")


def parse_patch(data: bytes, patch_name: str) -> list[FileDiff]:
    """Parse the file diffs of one ``git format-patch`` (or plain ``git diff``) file.

    Raises:
        PatchError: the diff is malformed or uses an unsupported operation (delete, rename,
            mode change, binary).
    """
    lines = data.splitlines(keepends=True)
    diffs: list[FileDiff] = []
    i = 0
    n = len(lines)
    while i < n:
        if not lines[i].startswith(b"diff --git "):
            i += 1
            continue
        header_line = lines[i]
        i += 1
        new_file = False
        old_path: str | None = None
        new_path: str | None = None
        while i < n and not lines[i].startswith((b"@@", b"diff --git ")):
            line = lines[i]
            if line.startswith(_UNSUPPORTED_HEADERS):
                raise PatchError(
                    f"error: patch {patch_name}: unsupported operation in "
                    f"{header_line.decode('utf-8', 'replace').strip()!r}: "
                    f"{line.decode('utf-8', 'replace').strip()!r}"
                )
            if line.startswith(b"new file mode"):
                new_file = True
            elif line.startswith(b"--- "):
                old_raw = line[4:]
                if not old_raw.startswith(b"/dev/null"):
                    old_path = _strip_prefix(old_raw, b"a/", patch_name)
            elif line.startswith(b"+++ "):
                new_path = _strip_prefix(line[4:], b"b/", patch_name)
            i += 1
        if new_path is None:
            raise PatchError(
                f"error: patch {patch_name}: no '+++' header for "
                f"{header_line.decode('utf-8', 'replace').strip()!r}"
            )
        if old_path is None and not new_file:
            raise PatchError(
                f"error: patch {patch_name}: {new_path}: '/dev/null' source without 'new file mode'"
            )
        if old_path is not None and old_path != new_path:
            raise PatchError(
                f"error: patch {patch_name}: renames are not supported ({old_path} -> {new_path})"
            )
        fd = FileDiff(path=new_path, new_file=new_file)
        while i < n and lines[i].startswith(b"@@"):
            i = _parse_hunk(lines, i, fd, patch_name)
        if not fd.hunks:
            raise PatchError(f"error: patch {patch_name}: {new_path}: file diff without hunks")
        diffs.append(fd)
    if not diffs:
        raise PatchError(f"error: patch {patch_name}: contains no file diff")
    return diffs


def _parse_hunk(lines: Sequence[bytes], i: int, fd: FileDiff, patch_name: str) -> int:
    m = _HUNK_RE.match(lines[i])
    if m is None:
        raise PatchError(
            f"error: patch {patch_name}: {fd.path}: malformed hunk header {lines[i]!r}"
        )
    hunk = Hunk(
        old_start=int(m.group(1)),
        old_count=int(m.group(2)) if m.group(2) is not None else 1,
        new_start=int(m.group(3)),
        new_count=int(m.group(4)) if m.group(4) is not None else 1,
        header=m.group(0).decode("ascii"),
    )
    number = len(fd.hunks) + 1
    i += 1
    old_left, new_left = hunk.old_count, hunk.new_count
    last: bytes | None = None
    while old_left > 0 or new_left > 0 or (i < len(lines) and lines[i].startswith(b"\\")):
        if i >= len(lines):
            raise PatchError(
                f"error: patch {patch_name}: {fd.path}: hunk #{number} ({hunk.header}) is truncated"
            )
        line = lines[i]
        tag, body = line[:1], line[1:]
        if tag == b" " and old_left > 0 and new_left > 0:
            hunk.old_lines.append(body)
            hunk.new_lines.append(body)
            old_left -= 1
            new_left -= 1
        elif tag == b"-" and old_left > 0:
            hunk.old_lines.append(body)
            old_left -= 1
        elif tag == b"+" and new_left > 0:
            hunk.new_lines.append(body)
            new_left -= 1
        elif tag == b"\\" and last is not None:
            # "\ No newline at end of file": the previous line has no line ending
            if last in (b" ", b"-"):
                hunk.old_lines[-1] = hunk.old_lines[-1].rstrip(b"\r\n")
            if last in (b" ", b"+"):
                hunk.new_lines[-1] = hunk.new_lines[-1].rstrip(b"\r\n")
        else:
            raise PatchError(
                f"error: patch {patch_name}: {fd.path}: hunk #{number} "
                f"({hunk.header}) has an unexpected line {line[:60]!r}"
            )
        last = tag if tag != b"\\" else last
        i += 1
    fd.hunks.append(hunk)
    return i


def _target(root: Path, rel: str) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in pure.parts):
        raise PatchError(f"error: refusing unsafe path {rel!r}")
    return root.joinpath(*pure.parts)


def apply_file_diff(content: bytes | None, fd: FileDiff, patch_name: str) -> bytes:
    """Apply one file diff to ``content`` (``None`` for a file that does not exist yet).

    Raises:
        PatchError: a hunk does not match exactly where its header says.
    """
    if fd.new_file:
        if content is not None:
            raise PatchError(
                f"error: patch {patch_name} does not apply: {fd.path}: creates a "
                "file that already exists"
            )
        old: list[bytes] = []
    else:
        if content is None:
            raise PatchError(
                f"error: patch {patch_name} does not apply: {fd.path}: file does not exist"
            )
        old = content.splitlines(keepends=True)
    out: list[bytes] = []
    pos = 0  # index into `old` of the first line not yet copied to `out`
    for number, hunk in enumerate(fd.hunks, start=1):
        # for an empty old range, the header names the line *after* which the hunk goes
        start = hunk.old_start - 1 if hunk.old_count > 0 else hunk.old_start
        where = f"{fd.path} hunk #{number} ({hunk.header})"
        if start < pos:
            raise PatchError(
                f"error: patch {patch_name} does not apply: {where} overlaps the previous hunk"
            )
        if old[start : start + hunk.old_count] != hunk.old_lines:
            actual = old[start : start + hunk.old_count]
            bad = next(
                (k for k, (a, b) in enumerate(zip(actual, hunk.old_lines, strict=False)) if a != b),
                min(len(actual), len(hunk.old_lines)),
            )
            raise PatchError(
                f"error: patch {patch_name} does not apply: {where}: context does "
                f"not match at line {start + bad + 1}"
            )
        out.extend(old[pos:start])
        out.extend(hunk.new_lines)
        pos = start + hunk.old_count
        expected_new_start = len(out) - len(hunk.new_lines) + (1 if hunk.new_count > 0 else 0)
        if hunk.new_start != expected_new_start:
            raise PatchError(
                f"error: patch {patch_name} does not apply: {where}: new range "
                f"starts at {hunk.new_start}, expected {expected_new_start}"
            )
    out.extend(old[pos:])
    return b"".join(out)


def apply_patch(root: Path, patch: Path, result: ApplyResult | None = None) -> ApplyResult:
    """Apply one monorepo-layout patch to an extracted plugin sdist rooted at ``root``.

    All file diffs are checked before anything is written, so a failing patch changes nothing.

    Raises:
        PatchError: the patch does not apply, or touches a path outside the plugin.
    """
    result = result if result is not None else ApplyResult()
    name = patch.name
    pending: dict[Path, bytes] = {}
    for fd in parse_patch(patch.read_bytes(), name):
        if fd.path.startswith(SKIPPED_PREFIXES) or fd.path in SKIPPED_FILES:
            result.skipped.append((name, fd.path))
            continue
        if not fd.path.startswith(PLUGIN_PREFIX):
            raise PatchError(
                f"error: patch {name} touches {fd.path}, which is outside "
                f"{PLUGIN_PREFIX}, tests/ and makefile"
            )
        dest = _target(root, fd.path[len(PLUGIN_PREFIX) :])
        if dest in pending:
            current: bytes | None = pending[dest]
        else:
            current = dest.read_bytes() if dest.is_file() else None
        pending[dest] = apply_file_diff(current, fd, name)
        result.applied.append((name, fd.path))
    for dest, data in pending.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return result


def apply_series(root: Path, patches_dir: Path, names: Iterable[str] | None = None) -> ApplyResult:
    """Apply every patch of ``patches_dir/series`` (or ``names``) in order to ``root``.

    Raises:
        PatchError: see :func:`read_series` and :func:`apply_patch`.
    """
    result = ApplyResult()
    for name in names if names is not None else read_series(patches_dir):
        apply_patch(root, patches_dir / name, result)
    return result
