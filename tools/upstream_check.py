#!/usr/bin/env python3
"""Check a patch series against a livekit/agents checkout, the way upstream checks a PR.

For a series (a directory with a `series` file naming `git format-patch` files in order):

1. clone the checkout into a temporary directory at the series' base ref and `git am` it;
2. run upstream's linters on the files the series changes, from the clone's root so that its
   own pyproject settings apply: `ruff check`, `ruff format --check`, and mypy on the changed
   packages with the flags of upstream's `scripts/check_types.py` (an error counts against
   the series only if it lands in a file the series changes);
3. run the test files the series adds or changes, with the clone's pytest settings; then apply
   the series again one patch at a time and run the test files each patch adds on the tree as of
   that patch (a module patch placed before a module it imports fails here);
4. prove those tests can fail: a test patch is applied alone to the base, a `fix` patch
   with tests (or a `feat` patch that creates no file outside tests/, i.e. not a module
   patch) gets the patches before it plus only its own test hunks; either way its tests
   must fail (pytest exit code 1, not a collection or usage error). For such a patch that
   creates test files, those are run: its edits to existing test modules only adapt their
   helpers to the fix and are expected to break without it.

A tool that is missing from the interpreter is a failure, never a pass, and so is anything that
keeps the check from running (no checkout, a base commit the checkout lacks, a series that
cannot be exported): one `upstream_check: cannot check: ...` line and exit code 2.

The tools run in the interpreter given by `--python` (or `LK_AGENTS_PYTHON`), which needs
upstream's test and lint dependencies. The clone's packages are put first on `PYTHONPATH` and
`MYPYPATH`, so that interpreter's own copies of livekit-agents and its plugins are shadowed.

With `--each-patch` (main series only) every patch is checked ALONE on the base, as the
independent PR it is: `git am` of that patch only, ruff, ruff format --check and mypy on what it
changes, its tests passing; then its test hunks alone on the base (`git apply --include=tests/*`):
the tests it adds must fail there (a `perf` patch's must pass: they pin unchanged behaviour). It
ends with one table, a row per patch.

Usage:
    python tools/upstream_check.py --checkout PATH [--series main|backport|all]
        [--each-patch] [--python PYTHON] [--backport-python PYTHON] [--keep]

`main` is patches/main/series at the commit recorded in patches/main/BASE; `backport` is the
complete backport series at tag livekit-agents@1.4.6, as `python3 dev.py series` exports it
(patches/series plus one patch per module of src/: patches/ alone no longer adds them). The
checkout is `--checkout` or `LK_AGENTS_CHECKOUT`; without either the check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import export_series

ROOT = Path(__file__).resolve().parent.parent
MAIN_SERIES = ROOT / "patches" / "main"
BACKPORT_SERIES = ROOT / "patches"
BACKPORT_BASE = "livekit-agents@1.4.6"

_GIT_IDENTITY = ["-c", "user.name=upstream-check", "-c", "user.email=upstream-check@localhost"]
# flags of upstream's scripts/check_types.py
_MYPY_FLAGS = ["--untyped-calls-exclude=smithy_aws_core", "--platform", "linux"]
_TAIL = 40  # lines of tool output kept in the report


@dataclass
class Patch:
    path: Path
    subject: str
    files: list[str]
    new_files: list[str] = field(default_factory=list)

    @property
    def test_files(self) -> list[str]:
        return [f for f in self.files if _is_test_file(f)]

    @property
    def kind(self) -> str:
        """The conventional-commit type of the subject: `fix`, `perf`, `test`, ..."""
        title = self.subject.split("] ", 1)[-1] if self.subject.startswith("[") else self.subject
        return title.split(":", 1)[0].split("(", 1)[0].strip()

    @property
    def adds_only_tests(self) -> bool:
        """The files it creates are tests and their helpers (a feature edit, not a new module)."""
        return all(f.startswith("tests/") for f in self.new_files)

    @property
    def is_test_patch(self) -> bool:
        # a test patch may also list its tests where upstream's CI picks them up
        only_tests = bool(self.files) and all(f.startswith("tests/") for f in self.files)
        return self.kind == "test" or only_tests


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    label: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
        if detail:
            for line in detail.rstrip().splitlines():
                print(f"         {line}")
        sys.stdout.flush()
        return ok


def _is_test_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return path.startswith("tests/") and name.startswith("test_") and name.endswith(".py")


def read_series(series_dir: Path) -> list[Patch]:
    """The patches named by `series_dir/series`, in order, with their subjects and files."""
    patches: list[Patch] = []
    for line in (series_dir / "series").read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        path = series_dir / name
        text = path.read_text()
        subject = next(
            (ln.removeprefix("Subject: ") for ln in text.splitlines() if ln.startswith("Subject:")),
            name,
        )
        # every changed file has a `diff --git a/X b/X` header, deleted ones included
        files = [
            ln.split(" b/", 1)[1] for ln in text.splitlines() if ln.startswith("diff --git a/")
        ]
        lines = text.splitlines()
        new_files = [
            ln.split(" b/", 1)[1]
            for ln, nxt in zip(lines, lines[1:], strict=False)
            if ln.startswith("diff --git a/") and nxt.startswith("new file mode")
        ]
        patches.append(Patch(path, subject, list(dict.fromkeys(files)), new_files))
    return patches


def read_base(series_dir: Path) -> str:
    """The commit recorded as `commit: <hash>` in `series_dir/BASE`."""
    for line in (series_dir / "BASE").read_text().splitlines():
        if line.startswith("commit:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"no 'commit:' line in {series_dir / 'BASE'}")


def _run(
    cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _tail(text: str, n: int = _TAIL) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join((["..."] if len(lines) > n else []) + lines[-n:])


def _clone(checkout: Path, base_ref: str, dest: Path) -> None:
    out = _run(["git", "clone", "-q", "--no-checkout", str(checkout), str(dest)], cwd=dest.parent)
    if out.returncode == 0:
        out = _run(["git", "checkout", "-q", "--detach", base_ref], cwd=dest)
    if out.returncode != 0:
        raise RuntimeError(f"cannot check out {base_ref} from {checkout}:\n{out.stdout}")


def _am(clone: Path, patches: Sequence[Patch]) -> subprocess.CompletedProcess[str]:
    out = _run(["git", *_GIT_IDENTITY, "am", "-q", *(str(p.path) for p in patches)], cwd=clone)
    if out.returncode != 0:
        _run(["git", "am", "--abort"], cwd=clone)
    return out


def _tool_env(clone: Path) -> dict[str, str]:
    roots = [
        clone / "livekit-agents",
        *sorted((clone / "livekit-plugins").glob("livekit-plugins-*")),
    ]
    paths = os.pathsep.join(str(p) for p in roots if p.is_dir())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [paths, env.get("PYTHONPATH", "")]))
    env["MYPYPATH"] = paths
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _packages(files: Sequence[str]) -> list[str]:
    packages: list[str] = []
    for f in files:
        parts = f.split("/")
        if parts[0] == "livekit-agents":
            packages.append("livekit.agents")
        elif parts[0] == "livekit-plugins" and parts[1].startswith("livekit-plugins-"):
            name = parts[1].removeprefix("livekit-plugins-").replace("-", "_")
            packages.append(f"livekit.plugins.{name}")
    return list(dict.fromkeys(packages))


def _pytest(python: str, clone: Path, tests: Sequence[str]) -> subprocess.CompletedProcess[str]:
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    return _run(cmd, cwd=clone, env=_tool_env(clone))


class CannotCheck(Exception):
    """The check cannot run; ``str(err)`` says why in one line."""


def _has_commit(checkout: Path, ref: str) -> bool:
    out = _run(
        ["git", "-C", str(checkout), "rev-parse", "-q", "--verify", f"{ref}^{{commit}}"],
        cwd=Path.cwd(),
    )
    return out.returncode == 0


def check_in_order(
    patches: Sequence[Patch],
    checkout: Path,
    base_ref: str,
    clone: Path,
    python: str,
    report: Report,
) -> None:
    """Apply `patches` one at a time; after each, lint what it changed and run its tests there.

    So each commit of the series works as committed: its files pass ruff (check and format)
    and mypy as they stand at that commit, a module patch's tests find every module it imports
    (an order where a module came before what it imports fails here with a
    ModuleNotFoundError), and an edit's tests, new or extended, need nothing from a later patch.
    """
    _clone(checkout, base_ref, clone)
    env = _tool_env(clone)
    changed: set[str] = set()  # files the series has changed so far
    for patch in patches:
        out = _am(clone, [patch])
        if out.returncode != 0:
            report.add(f"{patch.path.name}: git am in order", False, _tail(out.stdout))
            return
        changed.update(patch.files)
        problems = []
        py = [f for f in patch.files if f.endswith(".py") and (clone / f).exists()]
        if py:
            for args in (["check"], ["format", "--check"]):
                out = _run([python, "-m", "ruff", *args, *py], cwd=clone, env=env)
                if out.returncode != 0:
                    problems.append(f"ruff {' '.join(args)}:\n{_tail(out.stdout)}")
        if packages := _packages(patch.files):
            pkg_args = [a for pkg in packages for a in ("-p", pkg)]
            out = _run([python, "-m", "mypy", *_MYPY_FLAGS, *pkg_args], cwd=clone, env=env)
            ours = [
                ln
                for ln in out.stdout.splitlines()
                if ": error:" in ln and ln.split(":", 1)[0] in changed
            ]
            if out.returncode not in (0, 1) or ours:
                problems.append("mypy:\n" + ("\n".join(ours) or _tail(out.stdout)))
        tests = patch.test_files
        counts = ""
        if tests:
            out = _pytest(python, clone, tests)
            counts = f"; {' '.join(tests)} ({_pytest_counts(out)})"
            if out.returncode != 0:
                problems.append(f"pytest:\n{_tail(out.stdout)}")
        report.add(
            f"{patch.path.name} at its place in the series: lint{counts}",
            not problems,
            "\n".join(problems),
        )


def check_series(
    series_dir: Path,
    checkout: Path,
    base_ref: str,
    *,
    python: str = sys.executable,
    keep: bool = False,
    label: str | None = None,
) -> Report:
    """Apply the series in `series_dir` to `checkout` at `base_ref` and check it like upstream.

    Args:
        series_dir: directory holding `series` and the patch files it names.
        checkout: a livekit/agents git repository (bare or not) that has `base_ref`.
        base_ref: commit or tag the series applies to.
        python: interpreter with upstream's lint and test dependencies.
        keep: leave the temporary clones in place and print where they are.
        label: what the report calls the series (default: its directory).

    Returns:
        The report; `report.ok` is True when every check passed.
    """
    where = series_dir.relative_to(ROOT) if series_dir.is_relative_to(ROOT) else series_dir
    report = Report(f"{label or where} @ {base_ref}")
    print(f"== {report.label}  (checkout {checkout}, python {python})")
    patches = read_series(series_dir)
    files = list(dict.fromkeys(f for p in patches for f in p.files))
    py_files = [f for f in files if f.endswith(".py")]
    tests = [f for f in files if _is_test_file(f)]

    work = Path(tempfile.mkdtemp(prefix="upstream-check-"))
    try:
        clone = work / "series"
        _clone(checkout, base_ref, clone)
        out = _am(clone, patches)
        names = ", ".join(p.path.name for p in patches)
        if not report.add(
            f"git am {len(patches)} patches ({names})",
            out.returncode == 0,
            "" if out.returncode == 0 else _tail(out.stdout),
        ):
            return report

        existing = [f for f in py_files if (clone / f).exists()]
        env = _tool_env(clone)
        for tool in ("ruff", "mypy", "pytest"):
            probe = _run([python, "-m", tool, "--version"], cwd=clone, env=env)
            if probe.returncode != 0:
                report.add(f"{tool} available in {python}", False, _tail(probe.stdout, 3))
        out = _run([python, "-m", "ruff", "check", *existing], cwd=clone, env=env)
        report.add(
            f"ruff check ({len(existing)} files)",
            out.returncode == 0,
            "" if out.returncode == 0 else _tail(out.stdout),
        )
        out = _run([python, "-m", "ruff", "format", "--check", *existing], cwd=clone, env=env)
        report.add(
            f"ruff format --check ({len(existing)} files)",
            out.returncode == 0,
            "" if out.returncode == 0 else _tail(out.stdout),
        )

        packages = _packages(files)
        if packages:
            pkg_args = [a for pkg in packages for a in ("-p", pkg)]
            out = _run([python, "-m", "mypy", *_MYPY_FLAGS, *pkg_args], cwd=clone, env=env)
            ours = [
                ln
                for ln in out.stdout.splitlines()
                if ": error:" in ln and ln.split(":", 1)[0] in files
            ]
            summary = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
            if out.returncode not in (0, 1):  # mypy crashed or was misused
                ours.append(_tail(out.stdout))
            elif out.returncode == 1 and not ours:
                summary += " (none in files the series changes, so not counted)"
            report.add(f"mypy {' '.join(pkg_args)}", not ours, "\n".join(ours) or summary)

        if tests:
            out = _pytest(python, clone, tests)
            report.add(
                f"pytest {' '.join(tests)}",
                out.returncode == 0,
                _tail(out.stdout, 5 if out.returncode == 0 else _TAIL),
            )
        else:
            report.add("pytest: the series adds no tests under tests/", False)

        check_in_order(patches, checkout, base_ref, work / "in-order", python, report)

        for i, patch in enumerate(patches):
            if not patch.test_files:
                continue
            run_tests = patch.test_files
            if patch.is_test_patch:
                how, before, hunks = "alone on the base", [], False
            elif patch.kind == "fix" or (patch.kind == "feat" and patch.adds_only_tests):
                how, before, hunks = "tests only, after the patches before it", patches[:i], True
                run_tests = [f for f in patch.new_files if _is_test_file(f)] or run_tests
            else:
                continue
            bare = work / f"without-{i}"
            _clone(checkout, base_ref, bare)
            applied = _am(bare, before) if before else None
            if applied is None or applied.returncode == 0:
                if hunks:
                    applied = _run(["git", "apply", "--include=tests/*", str(patch.path)], cwd=bare)
                else:
                    applied = _am(bare, [patch])
            name = f"{patch.path.name} ({how}): {' '.join(run_tests)} fails"
            if applied.returncode != 0:
                report.add(name, False, "could not apply:\n" + _tail(applied.stdout))
                continue
            out = _pytest(python, bare, run_tests)
            summary_lines = ("FAILED ", "ERROR tests/")
            detail = [ln for ln in out.stdout.splitlines() if ln.startswith(summary_lines)]
            verdict = {0: "tests passed without the fix", 1: "", 5: "no tests collected"}
            report.add(
                name,
                out.returncode == 1,
                "\n".join(detail[:_TAIL]) or verdict.get(out.returncode, _tail(out.stdout)),
            )
    finally:
        if keep:
            print(f"  (kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"== {report.label}: {'OK' if report.ok else 'FAILED'}\n")
    return report


@dataclass
class PatchRow:
    name: str
    changed: int
    cells: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v.startswith(("PASS", "FAIL as it must")) for v in self.cells.values())


_COLUMNS = ("git am", "ruff", "format", "mypy", "tests with it", "tests without it")


def _changed_lines(patch: Patch) -> int:
    """Added plus removed lines of the patch (its test included)."""
    n = 0
    for ln in patch.path.read_text().split("\n---\n", 1)[-1].splitlines():
        if ln.startswith(("+++", "---")):
            continue
        if ln.startswith(("+", "-")):
            n += 1
    return n


def _pytest_counts(out: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in out.stdout.strip().splitlines() if " in " in ln and "=" not in ln[:1]]
    summary = (lines or out.stdout.strip().splitlines() or ["no output"])[-1]
    return summary.strip("= ").split(" in ", 1)[0]


def check_each_patch(
    series_dir: Path, checkout: Path, base_ref: str, *, python: str, keep: bool = False
) -> list[PatchRow]:
    """Check every patch of `series_dir` alone on `base_ref`; one row per patch."""
    rows: list[PatchRow] = []
    work = Path(tempfile.mkdtemp(prefix="upstream-check-each-"))
    print(f"== each patch alone on {base_ref}  (checkout {checkout}, python {python})")
    try:
        for i, patch in enumerate(read_series(series_dir)):
            row = PatchRow(patch.path.name, _changed_lines(patch))
            rows.append(row)
            cells = row.cells
            clone = work / f"with-{i}"
            _clone(checkout, base_ref, clone)
            out = _am(clone, [patch])
            cells["git am"] = "PASS" if out.returncode == 0 else "FAIL"
            if out.returncode != 0:
                print(_tail(out.stdout))
                cells.update(dict.fromkeys(_COLUMNS[1:], "not run"))
                continue
            env = _tool_env(clone)
            py = [f for f in patch.files if f.endswith(".py") and (clone / f).exists()]
            out = _run([python, "-m", "ruff", "check", *py], cwd=clone, env=env)
            cells["ruff"] = "PASS" if out.returncode == 0 else f"FAIL\n{_tail(out.stdout)}"
            out = _run([python, "-m", "ruff", "format", "--check", *py], cwd=clone, env=env)
            cells["format"] = "PASS" if out.returncode == 0 else f"FAIL\n{_tail(out.stdout)}"
            packages = _packages(patch.files)
            pkg_args = [a for pkg in packages for a in ("-p", pkg)]
            out = _run([python, "-m", "mypy", *_MYPY_FLAGS, *pkg_args], cwd=clone, env=env)
            ours = [
                ln
                for ln in out.stdout.splitlines()
                if ": error:" in ln and ln.split(":", 1)[0] in patch.files
            ]
            if out.returncode not in (0, 1) or ours or not packages:
                cells["mypy"] = "FAIL\n" + ("\n".join(ours) or _tail(out.stdout))
            else:
                cells["mypy"] = f"PASS ({' '.join(packages)})"
            tests = patch.test_files
            new_tests = [f for f in patch.new_files if _is_test_file(f)] or tests
            if not tests:
                cells["tests with it"] = cells["tests without it"] = "FAIL: no test"
                continue
            out = _pytest(python, clone, tests)
            cells["tests with it"] = (
                f"PASS ({_pytest_counts(out)})"
                if out.returncode == 0
                else f"FAIL ({_pytest_counts(out)})\n{_tail(out.stdout)}"
            )
            bare = work / f"without-{i}"
            _clone(checkout, base_ref, bare)
            applied = _run(["git", "apply", "--include=tests/*", str(patch.path)], cwd=bare)
            if applied.returncode != 0:
                cells["tests without it"] = f"FAIL: test hunks do not apply\n{applied.stdout}"
                continue
            out = _pytest(python, bare, new_tests)
            counts = _pytest_counts(out)
            if patch.kind == "perf":  # a speed-up pins the old behaviour: same result before
                cells["tests without it"] = (
                    f"PASS, pins the output ({counts})"
                    if out.returncode == 0
                    else f"FAIL ({counts})\n{_tail(out.stdout)}"
                )
            else:
                cells["tests without it"] = (
                    f"FAIL as it must ({counts})"
                    if out.returncode == 1
                    else f"wrong: exit {out.returncode} ({counts})\n{_tail(out.stdout)}"
                )
    except RuntimeError as e:  # a clone or checkout failed
        raise CannotCheck(" ".join(str(e).split())) from None
    finally:
        if keep:
            print(f"  (kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for row in rows:  # details of what failed, then the table
        for col, val in row.cells.items():
            if "\n" in val:
                print(f"-- {row.name}: {col}\n{val.split(chr(10), 1)[1]}")
    print(f"\n| patch | changed lines | {' | '.join(_COLUMNS)} |")
    print(f"| --- | --- | {' | '.join('---' for _ in _COLUMNS)} |")
    for row in rows:
        vals = [row.cells.get(c, "not run").split("\n", 1)[0] for c in _COLUMNS]
        size = f"{row.changed}" + ("" if row.changed <= 500 else " (over 500)")
        print(f"| {row.name} | {size} | {' | '.join(vals)} |")
    return rows


def _check(args: argparse.Namespace, checkout: Path | None) -> list[Report]:
    """Run the chosen series' checks.

    Raises:
        CannotCheck: no usable checkout, a base commit missing there, or no series to check.
    """
    if checkout is None:
        raise CannotCheck(
            "no livekit/agents checkout given (pass --checkout PATH or set LK_AGENTS_CHECKOUT)"
        )
    if not checkout.is_dir():
        raise CannotCheck(f"{checkout} is not a directory")
    probe = _run(["git", "-C", str(checkout), "rev-parse", "--git-dir"], cwd=Path.cwd())
    if probe.returncode != 0:
        raise CannotCheck(f"{checkout} is not a git repository")
    wanted: list[tuple[str, str]] = []
    if args.series in ("backport", "all"):
        wanted.append(("backport", BACKPORT_BASE))
    if args.series in ("main", "all"):
        try:
            wanted.append(("main", read_base(MAIN_SERIES)))
        except (OSError, ValueError) as e:
            raise CannotCheck(f"no base commit for the main series: {e}") from None
    missing = [f"{ref} ({name})" for name, ref in wanted if not _has_commit(checkout, ref)]
    if missing:
        raise CannotCheck(
            f"{checkout} lacks the base commit(s) {', '.join(missing)} "
            "(git fetch origin --tags, or rebase the main series)"
        )
    if args.each_patch:
        if args.series != "main":
            raise CannotCheck("--each-patch checks the main series only (add --series main)")
        for tool in ("ruff", "mypy", "pytest"):
            probe = _run([args.python, "-m", tool, "--version"], cwd=Path.cwd())
            if probe.returncode != 0:
                raise CannotCheck(f"{tool} is not installed in {args.python}")
        rows = check_each_patch(
            MAIN_SERIES, checkout, wanted[0][1], python=args.python, keep=args.keep
        )
        report = Report("main series, each patch alone")
        for row in rows:
            report.checks.append(Check(row.name, row.ok and row.changed <= 500))
        return [report]
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="upstream-check-series-") as tmp:
        for name, ref in wanted:
            if name == "backport":
                series_dir = Path(tmp) / "backport"
                try:
                    export_series.export(series_dir)
                except export_series.ExportError as e:
                    raise CannotCheck(f"cannot export the backport series: {e}") from None
                python = args.backport_python or args.python
                label = "backport series (patches/series + src/, exported)"
            else:
                series_dir, python, label = MAIN_SERIES, args.python, None
            try:
                reports.append(
                    check_series(
                        series_dir, checkout, ref, python=python, keep=args.keep, label=label
                    )
                )
            except RuntimeError as e:  # a clone or checkout failed
                raise CannotCheck(" ".join(str(e).split())) from None
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--checkout", type=Path, help="livekit/agents git repository")
    parser.add_argument("--series", choices=("main", "backport", "all"), default="all")
    parser.add_argument(
        "--python",
        default=os.environ.get("LK_AGENTS_PYTHON", sys.executable),
        help="interpreter with upstream's lint/test deps (env LK_AGENTS_PYTHON)",
    )
    parser.add_argument(
        "--backport-python", help="interpreter for the 1.4.6 series (default: --python)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary clones")
    parser.add_argument(
        "--each-patch",
        action="store_true",
        help="main series: check each patch alone on the base and print a table",
    )
    args = parser.parse_args(argv)

    checkout = args.checkout or (
        Path(os.environ["LK_AGENTS_CHECKOUT"]) if os.environ.get("LK_AGENTS_CHECKOUT") else None
    )
    try:
        reports = _check(args, checkout)
    except CannotCheck as e:
        print(f"upstream_check: cannot check: {e}")
        return 2

    for r in reports:
        failed = [c.name for c in r.checks if not c.ok]
        print(
            f"{'OK    ' if r.ok else 'FAILED'} {r.label}"
            + (f": {'; '.join(failed)}" if failed else "")
        )
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
