"""Build, test and check the patched livekit-plugins-openai fork.

Sessions (``nox -l`` lists them):

* ``build``: build the wheel once into ``.nox/_dist/`` (reused while patches/, src/, the packaging
  directory and the pin are unchanged).
* ``tests(deps='floor'|'latest')``: install the built wheel and run pytest against the installed
  copy, never the source tree.
* ``tests_upstream(version='1.4.6'|'1.4.3')``: run the suite against pristine upstream and check
  that every ``@pytest.mark.regression(fails_on=...)`` test naming that version fails.
* ``tests_fork(rev='3c7303c'|'398142d'|'7e98677'|'5e7bc64'|'5c5e2fc'|'ebd793d'|'7850ebd')``: the same
  judging on the fork as built from ``patches/`` (and ``src/``) of an earlier commit, labelled
  with that wheel's version (``1.4.6.post1`` to ``1.4.6.post8``).
* ``lint``: ruff and mypy (upstream settings) on the patched plugin sources and on our own code.
* ``patches``: the series applies exactly with our applier; the exported complete series
  (``series``) applies with ``git am``; both trees and the built wheel's ``livekit/`` are equal.
* ``series``: write the complete backport series (``tools/export_series.py``) into OUTDIR.
* ``patch_tree``, ``patch_export``: edit ``patches/`` as git commits in ``.work/agents``
  (``tools/patch_queue.py``); ``patches`` checks that the committed files are what an export
  of them writes.
* ``bench``, ``soak``, ``demo``, ``upstream``: thin wrappers around scripts in tools/, tests/ and
  examples/.
* ``main_prs``: opt-in; each patch of patches/main alone on its BASE (tools/upstream_check.py
  --each-patch), with a table; needs ``-- --checkout PATH`` or ``LK_AGENTS_CHECKOUT``.
* ``live``: the opt-in live check on real Azure (tools/live_check.py); one skip line and exit 0
  unless the Azure variables are set.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["build", "tests", "patches", "lint"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
PKG = ROOT / "livekit-plugins" / "livekit-plugins-openai"
PATCHES = ROOT / "patches"
PIN = PATCHES / "upstream.txt"
TESTS = ROOT / "tests"
TEST_REQUIREMENTS = TESTS / "requirements.txt"
PATCH_QUEUE = ROOT / "tools" / "patch_queue.py"
DIST = ROOT / ".nox" / "_dist"
PATCHED = ROOT / ".nox" / "_patched"

# release day of livekit-agents / livekit-plugins-openai 1.4.6 (2026-03-16): the "floor" set is
# what a user resolved then (uv's --exclude-newer uses the registry's upload times)
FLOOR_DATE = "2026-03-17T00:00:00Z"
# fallback for the virtualenv backend (pip has no --exclude-newer): the same resolution, pinned
FLOOR_CONSTRAINTS = TESTS / "packaging" / "floor-constraints.txt"
UPSTREAM_VERSIONS = ["1.4.6", "1.4.3"]
# earlier commits whose fork tests_fork rebuilds, with the version their wheel carries (regression
# tests name a fork by it): 3c7303c is main before the sync planner series, 398142d the fork as
# landed before the conversation state machine (issue 14), 7e98677 the fork with it, 5e7bc64 the
# fork before the series re-cut and the last perf work, 5c5e2fc the fork before the appended sync
# read its new items in steps, ebd793d the fork before the replay kept what a sync may not know,
# 7850ebd the fork before aclose() was bounded, fc21a85 the fork before the Azure patches were
# split and reviewed (a gateway prefix, Azure's own environment variables)
FORK_REVS = {
    "3c7303c": "1.4.6.post1",
    "398142d": "1.4.6.post2",
    "7e98677": "1.4.6.post3",
    "5e7bc64": "1.4.6.post4",
    "5c5e2fc": "1.4.6.post5",
    "ebd793d": "1.4.6.post6",
    "7850ebd": "1.4.6.post7",
    "fc21a85": "1.4.6.post8",
}
# forks whose GA runs are judged as an upstream version: 1.4.6.post1 left the GA session as 1.4.6's
GA_JUDGED_AS = {"1.4.6.post1": "1.4.6"}
# the columns of the regression tables: whether a test names the version
REGRESSION_COLUMNS = {v: f"fails on {v}?" for v in [UPSTREAM_VERSIONS[0], *FORK_REVS.values()]}

sys.path.insert(0, str(PKG / "_build"))
import lk_fork_backend  # noqa: E402
import lk_fork_fetch  # noqa: E402
import lk_fork_patch  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
import export_series  # noqa: E402
import patch_queue  # noqa: E402


def _uses_uv(session: nox.Session) -> bool:
    return getattr(session.virtualenv, "venv_backend", "") == "uv"


def _inputs_digest() -> str:
    """Hash of what the wheel is built from: patches/ (incl. pin), src/, packaging, LICENSE, NOTICE."""
    h = hashlib.sha256()
    for name in ("LICENSE", "NOTICE"):
        h.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    for base in (PATCHES, PKG, ROOT / "src"):
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts or rel.parts[2:3] == ("livekit",):
                continue
            h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _pip() -> list[str]:
    """A pip to run outside any session venv (uv-made venvs have none)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("neither pip (next to nox) nor uv is available")
    return [uv, "tool", "run", "pip"]


def upstream_sdist(session: nox.Session) -> Path:
    """The pinned upstream sdist, downloaded once (hash-checked) into ``.nox/_dist/upstream``."""
    pin = lk_fork_backend.read_pin(PATCHES)
    dest = DIST / "upstream"
    cached = dest / f"livekit_plugins_openai-{pin.version}.tar.gz"
    if cached.is_file() and lk_fork_backend.sha256_of(cached) == pin.sha256:
        return cached
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        session.run(
            *_pip(),
            *("download", "--no-deps", "--no-binary", pin.name),
            *("--require-hashes", "-r", str(PIN), "-d", tmp),
            external=True,
            silent=True,
        )
        (got,) = Path(tmp).glob("*.tar.gz")
        if lk_fork_backend.sha256_of(got) != pin.sha256:
            session.error(f"error: sha256 mismatch for downloaded {got.name}")
        shutil.copyfile(got, cached)
    return cached


def built_wheel(session: nox.Session) -> Path:
    """Build the fork's wheel into ``.nox/_dist`` unless one from the same inputs exists."""
    digest = _inputs_digest()
    stamp = DIST / "wheel.sha256"
    wheels = sorted(DIST.glob("livekit_plugins_openai-*.whl"))
    if stamp.is_file() and stamp.read_text().strip() == digest and len(wheels) == 1:
        session.log(f"reusing {wheels[0].relative_to(ROOT)} (inputs unchanged)")
        return wheels[0]
    for old in wheels:
        old.unlink()
    stamp.unlink(missing_ok=True)
    DIST.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if shutil.which("uv"):
            session.run("uv", "build", "--wheel", "--out-dir", tmp, str(PKG), external=True)
        else:
            session.run(
                *("python", "-m", "pip", "wheel", "--no-deps", "-w", tmp, str(PKG)), external=True
            )
        (wheel,) = Path(tmp).glob("*.whl")
        shutil.copyfile(wheel, DIST / wheel.name)
    stamp.write_text(digest + "\n")
    session.log(f"built {DIST / wheel.name}")
    return DIST / wheel.name


def _install_wheel(session: nox.Session, *extra: str) -> Path:
    wheel = built_wheel(session)
    session.install(str(wheel), "-r", str(TEST_REQUIREMENTS), *extra)
    session.install("--force-reinstall", "--no-deps", str(wheel))
    return wheel


def _assert_installed_copy(session: nox.Session) -> None:
    """Fail unless ``livekit.plugins.openai`` imports from this session's site-packages."""
    code = (
        "import sys, livekit.plugins.openai as m, pathlib; p = pathlib.Path(m.__file__).resolve();"
        "print(p); sys.exit(0 if 'site-packages' in p.parts and pathlib.Path(sys.prefix).resolve()"
        " in p.parents else 1)"
    )
    with _chdir_tmp(session):
        session.run("python", "-c", code)


@contextlib.contextmanager
def _chdir_tmp(session: nox.Session) -> Iterator[Path]:
    """Run from an empty temp dir so nothing in the repo shadows the installed packages."""
    with (
        tempfile.TemporaryDirectory(prefix="lk-fork-run-") as tmp,
        lk_fork_backend.chdir(Path(tmp)),
    ):
        yield Path(tmp)


def _pytest_env(session: nox.Session, **extra: str) -> dict[str, str]:
    env = {
        "FORK_REPO_ROOT": str(ROOT),
        "FORK_UPSTREAM_SDIST": str(upstream_sdist(session)),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


def _pytest_args(*args: str) -> list[str]:
    # run from a temp cwd; config and rootdir from the repo; no cache dir in the repo
    return [
        "pytest",
        "-c",
        str(ROOT / "pyproject.toml"),
        "--rootdir",
        str(ROOT),
        "-p",
        "no:cacheprovider",
        *args,
    ]


def _test_selection(posargs: list[str]) -> list[str]:
    """Posargs with repo-relative test paths made absolute (pytest runs from a temp dir).

    Without any path among them, the whole ``tests/`` directory is selected.
    """
    args: list[str] = []
    has_path = False
    for arg in posargs:
        path_part = arg.split("::", 1)[0]
        if not arg.startswith("-") and path_part and (ROOT / path_part).exists():
            arg = str(ROOT / arg)
            has_path = True
        args.append(arg)
    return args if has_path else [str(TESTS), *args]


def _require(session: nox.Session, path: Path, what: str) -> None:
    if not path.is_file():
        session.error(f"{what} {path.relative_to(ROOT)} does not exist (not written yet?)")


@nox.session
def build(session: nox.Session) -> None:
    """Build the patched wheel into .nox/_dist/ (cached on patches/, src/, packaging and pin)."""
    wheel = built_wheel(session)
    print(wheel)


@nox.session
@nox.parametrize("deps", ["floor", "latest"])
def tests(session: nox.Session, deps: str) -> None:
    """Install the built wheel with the floor or latest dependency set and run pytest on it."""
    wheel = built_wheel(session)
    reqs = [str(wheel), "-r", str(TEST_REQUIREMENTS)]
    if deps == "floor":
        if _uses_uv(session):
            session.install(*reqs, "--exclude-newer", FLOOR_DATE)
        else:
            session.install(*reqs, "-c", str(FLOOR_CONSTRAINTS))
    else:
        session.install("--upgrade", *reqs)
    # the current build, even in a reused venv holding an older wheel of the same version
    session.install("--force-reinstall", "--no-deps", str(wheel))
    _assert_installed_copy(session)
    selection = _test_selection(session.posargs)
    if deps == "floor" and not session.posargs:
        # the pipeline tests build and resolve on their own, independent of this session's
        # dependency set: running them once (in tests-latest) is enough
        selection.append(f"--ignore={TESTS / 'packaging'}")
    with _chdir_tmp(session):
        session.run(
            *_pytest_args(*selection),
            env=_pytest_env(session, FORK_DEPS=deps, FORK_WHEEL=str(wheel)),
        )


@nox.session
@nox.parametrize("version", UPSTREAM_VERSIONS)
def tests_upstream(session: nox.Session, version: str) -> None:
    """Run the suite on pristine upstream VERSION; every regression test naming it must fail."""
    session.install(
        f"livekit-agents=={version}",
        f"livekit-plugins-openai=={version}",
        "openai[realtime]<3",
        "-r",
        str(TEST_REQUIREMENTS),
    )
    _assert_installed_copy(session)
    _run_regressions(session, version, FORK_UNDER_TEST="upstream", FORK_UPSTREAM_VERSION=version)


@nox.session
@nox.parametrize("rev", list(FORK_REVS))
def tests_fork(session: nox.Session, rev: str) -> None:
    """Run the suite on the fork built from patches/ at git REV; its regression tests must fail.

    The wheel is built from that commit's packaging directory and patches (never the working
    tree's) and labelled with its own version: every test whose ``fails_on`` names that version
    must fail in its call phase, as in ``tests_upstream``.
    """
    wheel = fork_wheel_at(session, rev)
    label = wheel.name.split("-")[1]
    if label != FORK_REVS[rev]:
        session.error(f"the wheel built at {rev} is {label}, FORK_REVS says {FORK_REVS[rev]}")
    session.install(str(wheel), "-r", str(TEST_REQUIREMENTS))
    session.install("--force-reinstall", "--no-deps", str(wheel))
    _assert_installed_copy(session)
    # the pipeline tests check the working tree's build, not this wheel
    ignore = [] if session.posargs else [f"--ignore={TESTS / 'packaging'}"]
    _run_regressions(session, label, *ignore, FORK_UNDER_TEST="fork", FORK_WHEEL=str(wheel))


def fork_wheel_at(session: nox.Session, rev: str) -> Path:
    """The fork's wheel as built at git ``rev``, cached in ``.nox/_dist/fork-<sha>/``.

    A temp copy of that commit's packaging directory gets that commit's ``patches/`` (and
    ``src/``, where it has one) next to its ``pyproject.toml`` (where the backend looks first);
    the upstream sdist is the cached one.
    """
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dest = DIST / f"fork-{sha[:12]}"
    wheels = sorted(dest.glob("livekit_plugins_openai-*.whl"))
    if len(wheels) == 1:
        session.log(f"reusing {wheels[0].relative_to(ROOT)} (built at {rev})")
        return wheels[0]
    sdist = upstream_sdist(session)
    pkg_rel = PKG.relative_to(ROOT).as_posix()
    with tempfile.TemporaryDirectory(prefix="lk-fork-at-") as tmp:
        work = Path(tmp)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", sha, pkg_rel],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # git archive output is trusted; the filter exists from 3.10.12 / 3.11.4 on
            if hasattr(tarfile, "data_filter"):
                tar.extractall(work / "src", filter="data")
            else:  # pragma: no cover
                tar.extractall(work / "src")  # noqa: S202
        project = work / "src" / pkg_rel
        patches = project / "patches"
        patches.mkdir()
        listing = subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", sha, "patches/"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in listing.splitlines():
            meta, path = line.split("\t", 1)
            if meta.split()[1] == "blob":  # patches/main/ is not built
                blob = subprocess.run(
                    ["git", "-C", str(ROOT), "show", f"{sha}:{path}"],
                    check=True,
                    capture_output=True,
                ).stdout
                (patches / Path(path).name).write_bytes(blob)
        has_src = subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", "-d", sha, lk_fork_backend.SRC_DIR],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for name in ("LICENSE", "NOTICE"):  # later backends ship them, from next to patches/
            shown = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{sha}:{name}"], capture_output=True, check=False
            )
            if shown.returncode == 0:
                (project / name).write_bytes(shown.stdout)
        if has_src:  # the fork's own modules, next to patches/ (commits from 91aa4dd on)
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", "--format=tar", sha, lk_fork_backend.SRC_DIR],
                check=True,
                capture_output=True,
            ).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(project, filter="data")
                else:  # pragma: no cover
                    tar.extractall(project)  # noqa: S202
        out = work / "out"
        env = {lk_fork_fetch.SDIST_ENV: str(sdist)}
        if shutil.which("uv"):
            session.run(
                *("uv", "build", "--wheel", "--out-dir", str(out), str(project)),
                external=True,
                env=env,
            )
        else:
            session.run(
                *("python", "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(project)),
                external=True,
                env=env,
            )
        (wheel,) = out.glob("*.whl")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel, dest / wheel.name)
    session.log(f"built {(dest / wheel.name).relative_to(ROOT)} from patches/ at {rev}")
    return dest / wheel.name


def _run_regressions(session: nox.Session, label: str, *args: str, **env: str) -> None:
    """Run the suite with the regression report plugin and judge it for ``label``."""
    with _chdir_tmp(session) as tmp:
        junit = tmp / "junit.xml"
        report = tmp / "regression.json"
        code = session.run(
            *_pytest_args(
                "-p",
                "regression_report",
                f"--junitxml={junit}",
                *_test_selection(session.posargs),
                *args,
            ),
            env=_pytest_env(
                session,
                FORK_REGRESSION_REPORT=str(report),
                PYTHONPATH=str(TESTS / "packaging"),
                **env,
            ),
            success_codes=[0, 1],
        )
        if not report.is_file() or not junit.is_file():
            session.error(f"pytest (exit {code}) wrote no report; see its output above")
        results = json.loads(report.read_text())
        junit_names = {
            f"{case.get('classname')}.{case.get('name')}"
            for case in ElementTree.parse(junit).getroot().iter("testcase")
        }
    _judge_regressions(session, label, results, len(junit_names))


def _judge_regressions(
    session: nox.Session, version: str, results: list[dict[str, object]], ran: int
) -> None:
    """Print the regression tests naming ``version``; fail unless each behaved as marked.

    ``fails_on`` versions must fail in the call phase, ``passes_on`` versions must pass; a
    ``VERSION:PROTOCOL`` label (``"1.4.6:ga"``) applies to that protocol's runs only and wins. A GA
    run (``[ga-…]``) of a fork in ``GA_JUDGED_AS`` is judged as that upstream version: the fork
    before the planner (1.4.6.post1) left the GA session as upstream 1.4.6's.
    """
    columns = REGRESSION_COLUMNS
    rows = []
    bad = []
    for r in results:
        fails_on = [str(v) for v in r["fails_on"]]  # type: ignore[attr-defined]
        passes_on = [str(v) for v in r.get("passes_on", [])]  # type: ignore[attr-defined]
        nodeid = str(r["nodeid"])
        protocol = "ga" if "[ga" in nodeid else "preview"
        label = GA_JUDGED_AS.get(version, version) if protocol == "ga" else version
        if f"{label}:{protocol}" in passes_on:  # a case that cannot apply to this protocol
            expected = "passed"
        elif label in fails_on or f"{label}:{protocol}" in fails_on:
            expected = "failed"
        elif label in passes_on:
            expected = "passed"
        else:
            continue
        outcome = str(r["outcome"])
        ok = outcome == expected
        marks = ["yes" if v in fails_on else "no" for v in columns]
        rows.append([nodeid, *marks, expected, outcome + ("" if ok else "  <--")])
        if not ok:
            bad.append(nodeid)
    header = ["test", *columns.values(), "expected", f"outcome on {version}"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    print(f"\nregression tests naming {version} ({ran} test cases in junit.xml):")
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
        )
    if not any(row[-2] == "failed" for row in rows):
        session.error(f"no test is marked @pytest.mark.regression(fails_on=(..., {version!r}))")
    if bad:
        session.error(
            f"{len(bad)} regression test(s) did not behave as marked on {version}: {', '.join(bad)}"
        )
    bites = sum(row[-2] == "failed" for row in rows)
    print(
        f"all {bites} regression tests bite on {version}"
        + (f"; {len(rows) - bites} pass there as marked" if len(rows) > bites else "")
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff + mypy (upstream settings) on the patched plugin, and on our own code (src/ too)."""
    session.install(
        "ruff",
        "mypy",
        "livekit-agents[codecs,images]==1.4.6",
        "openai[realtime]<3",
        "hatchling",
        "nox",
        "-r",
        str(TEST_REQUIREMENTS),
    )
    tree = _patched_tree(session)
    cfg = str(ROOT / "pyproject.toml")
    # the files by name: ruff skips directories below .nox/ (its default exclude)
    plugin = sorted(str(p) for p in (tree / "livekit" / "plugins" / "openai").rglob("*.py"))
    if not plugin:
        session.error(f"no Python files in the patched tree {tree}")
    session.run("ruff", "check", "--config", cfg, *plugin)
    session.run("ruff", "format", "--check", "--config", cfg, *plugin)
    with lk_fork_backend.chdir(tree):
        session.run("mypy", "--config-file", cfg, "-p", "livekit.plugins.openai")
    # our own modules (src/): ruff on the src/ files themselves, mypy on their copies in the
    # patched tree (their relative imports, `..log` etc., resolve only there; checking src/ as
    # well would give each module twice), after making sure the copies are src/'s current text
    src = ROOT / lk_fork_backend.SRC_DIR
    modules = lk_fork_backend.own_modules(src)
    stale = [
        str(rel)
        for rel in modules
        if tree.joinpath(*rel.parts).read_bytes() != src.joinpath(*rel.parts).read_bytes()
    ]
    if stale:
        session.error(f"the patched tree's copies differ from src/: {', '.join(stale)}")
    ours = [str(p) for group in _our_code() for p in group]
    ours += [str(src.joinpath(*rel.parts)) for rel in modules]
    session.run("ruff", "check", *ours)
    session.run("ruff", "format", "--check", *ours)
    if modules:
        names = [".".join(rel.with_suffix("").parts) for rel in modules]
        with lk_fork_backend.chdir(tree):
            session.run("mypy", "--config-file", cfg, *(a for n in names for a in ("-m", n)))
    mypy_path = os.pathsep.join([str(tree), str(PKG / "_build")])
    for group in _our_code():
        # one mypy run per group: tests/ and tests/packaging/ each have a top-level `conftest`;
        # noxfile.py imports tools/export_series.py
        path = (
            mypy_path + os.pathsep + str(ROOT / "tools")
            if ROOT / "noxfile.py" in group
            else mypy_path
        )
        session.run("mypy", "--config-file", cfg, *map(str, group), env={"MYPYPATH": path})


def _our_code() -> list[list[Path]]:
    """Our own Python code, grouped for mypy (see lint)."""
    groups = [[p for p in (ROOT / "noxfile.py", ROOT / "dev.py", PKG / "_build") if p.exists()]]
    packaging = TESTS / "packaging"
    rest = [
        p for p in sorted(TESTS.iterdir()) if p != packaging and (p.is_dir() or p.suffix == ".py")
    ]
    rest = [p for p in rest if p.suffix == ".py" or any(p.rglob("*.py"))]
    # the demo imports the fake server from tests/, so it is checked with them
    rest += sorted((ROOT / "examples").glob("*.py"))
    groups += [rest, [packaging], [ROOT / "tools"] if any((ROOT / "tools").rglob("*.py")) else []]
    return [g for g in groups if g]


def _patched_tree(session: nox.Session) -> Path:
    """Extract the pinned sdist and apply the series into ``.nox/_patched`` (fresh each time)."""
    sdist = upstream_sdist(session)
    if PATCHED.exists():
        shutil.rmtree(PATCHED)
    PATCHED.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tree = lk_fork_backend.prepare_patched_tree(Path(tmp), PATCHES, sdist)
        except lk_fork_backend.ForkBuildError as e:
            session.error(str(e))
        shutil.copytree(tree / "livekit", PATCHED / "livekit")
    return PATCHED


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def _differing(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _wheel_package_files(wheel: Path) -> dict[str, bytes]:
    """The wheel's files outside its ``.dist-info`` (the only place its version is written)."""
    with zipfile.ZipFile(wheel) as zf:
        return {
            name: zf.read(name)
            for name in sorted(zf.namelist())
            if not name.endswith("/") and not name.split("/", 1)[0].endswith(".dist-info")
        }


@nox.session(venv_backend="none")
def patches(session: nox.Session) -> None:
    """The series applies exactly (our applier); the exported series applies via `git am`.

    Three trees must be equal, file by file: the applier's (patches/series plus src/, what the
    wheel is built from), the complete exported series (``python3 dev.py series``) applied with
    ``git am`` onto the pristine sdist laid out as the monorepo, and the built wheel's ``livekit/``
    (whose ``version.py`` the build stamps with the distribution's version).
    """
    try:
        names = lk_fork_patch.read_series(PATCHES)
    except lk_fork_patch.PatchError as e:
        session.error(str(e))
    listed = set(names)
    orphans = sorted(p.name for p in PATCHES.glob("*.patch") if p.name not in listed)
    if orphans:
        # e.g. a test-only patch kept for the upstream PR; not built, so only worth a warning
        session.warn(f"not in patches/series (not built): {', '.join(orphans)}")
    for name in names:
        text = (PATCHES / name).read_text(encoding="utf-8")
        if "\nSubject: " not in text:
            session.error(f"{name} is not a `git format-patch` file (no Subject header)")
        if "\nForwarded: " not in text:
            session.warn(f"{name} has no 'Forwarded:' line (see CONTRIBUTING.md)")
    sdist = upstream_sdist(session)
    with tempfile.TemporaryDirectory(prefix="lk-fork-patches-") as tmp:
        work = Path(tmp)
        (work / "applier").mkdir()
        try:
            ours = lk_fork_backend.prepare_patched_tree(work / "applier", PATCHES, sdist)
        except lk_fork_backend.ForkBuildError as e:
            session.error(str(e))
        modules = lk_fork_backend.own_modules(ROOT / lk_fork_backend.SRC_DIR)
        session.log(
            f"applier: {len(names)} patch(es) applied with no fuzz and no offset, "
            f"{len(modules)} module(s) of src/ added"
        )

        # the committed patches are what an export of them writes: an edit rewrites only its own
        try:
            patch_queue.make_tree(sdist, work / "queue")
            drift = patch_queue.export(work / "queue", check=True)
        except patch_queue.QueueError as e:
            session.error(str(e))
        differing = [*drift.changed, *drift.added, *(old for old, _ in drift.renamed)]
        if differing or drift.removed:
            session.error(
                "patches/ is not what `python3 dev.py patch_export` writes for it: "
                f"{', '.join(differing + drift.removed)} (lay it out with `python3 dev.py "
                "patch_tree -- --force`, then run `python3 dev.py patch_export`)"
            )
        session.log(f"patch_queue: all {len(drift.names)} patch(es) are what their export writes")

        try:
            exported = export_series.export(work / "series")
        except export_series.ExportError as e:
            session.error(str(e))
        session.log(f"exported the complete series: {len(exported.names)} patch(es)")

        repo = work / "monorepo"
        plugin_dir = repo / "livekit-plugins" / "livekit-plugins-openai"
        plugin_dir.parent.mkdir(parents=True)
        pristine = lk_fork_backend.safe_extract(sdist, work / "pristine")
        shutil.copytree(pristine, plugin_dir)
        env = {
            "GIT_AUTHOR_NAME": "nox",
            "GIT_AUTHOR_EMAIL": "nox@localhost",
            "GIT_COMMITTER_NAME": "nox",
            "GIT_COMMITTER_EMAIL": "nox@localhost",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "HOME": str(work),
        }

        def git(*args: str) -> None:
            session.run("git", "-C", str(repo), *args, external=True, env=env, silent=True)

        git("init", "-q")
        git("add", "-A")
        git("commit", "-q", "-m", "upstream sdist")
        # --exclude=makefile: 0012's test patch lists its tests in the monorepo's root makefile,
        # which is not in the sdist; the series is checked whole, makefile included, against a
        # real livekit/agents checkout by `nox -s upstream`
        git("am", "-q", "--exclude=makefile", *(str(work / "series" / n) for n in exported.names))
        session.log(f"git am: {len(exported.names)} exported patch(es) applied")
        ours_files = _files(ours)
        git_files = _files(plugin_dir)
        differ = _differing(ours_files, git_files)
        if differ:
            session.error(
                "the exported series (git am) gives another tree than the applier plus src/ "
                f"(what the wheel is built from); differing files: {', '.join(differ)}"
            )
        session.log(
            f"applier + src/ == git am of the exported series on all {len(ours_files)} files"
        )

        wheel = built_wheel(session)
        package = {k: v for k, v in ours_files.items() if k.split("/", 1)[0] == "livekit"}
        # the one file the build writes: version.py says the distribution's version
        version_file = str(lk_fork_backend.VERSION_FILE)
        package[version_file] = lk_fork_backend.stamped_version_file(
            package[version_file].decode("utf-8"), lk_fork_backend.project_version()
        ).encode("utf-8")
        in_wheel = _wheel_package_files(wheel)
        differ = _differing(package, in_wheel)
        if differ:
            session.error(
                f"{wheel.name} outside its .dist-info differs from the patched tree's livekit/; "
                f"differing files: {', '.join(differ)}"
            )
        session.log(f"{wheel.name}: livekit/ == the patched tree's on all {len(package)} files")


@nox.session(venv_backend="none")
def patch_tree(session: nox.Session) -> None:
    """Lay patches/series out as git commits in .work/agents (``--force`` replaces it)."""
    tree = [sys.executable, str(PATCH_QUEUE), "tree", "--sdist", str(upstream_sdist(session))]
    session.run(*tree, *session.posargs, external=True)


@nox.session(venv_backend="none")
def patch_export(session: nox.Session) -> None:
    """Write .work/agents' commits back into patches/ (``--check``: only report)."""
    session.run(sys.executable, str(PATCH_QUEUE), "export", *session.posargs, external=True)


@nox.session(venv_backend="none")
def series(session: nox.Session) -> None:
    """Write the complete backport series into OUTDIR (``python3 dev.py series OUTDIR``)."""
    if len(session.posargs) != 1:
        session.error("usage: python3 dev.py series OUTDIR")
    outdir = Path(session.posargs[0]).resolve()
    try:
        done = export_series.export(outdir)
    except export_series.ExportError as e:
        session.error(str(e))
    for name in done.written:
        session.log(f"wrote {name}")
    for name in done.removed:
        session.log(f"removed {name} (no longer in the series)")
    session.log(
        f"{outdir}: {len(done.names)} patches and series; rewrote {len(done.written)}, "
        f"unchanged {len(done.unchanged)}, removed {len(done.removed)}"
    )


def _script_session(session: nox.Session, script: Path, *args: str, **env: str) -> None:
    _require(session, script, "script")
    _install_wheel(session)
    with _chdir_tmp(session):
        session.run("python", str(script), *args, env=_pytest_env(session, **env))


@nox.session
def bench(session: nox.Session) -> None:
    """Run tools/bench.py against the installed wheel."""
    _script_session(session, ROOT / "tools" / "bench.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Run the suite with FORK_SOAK=1 (long-running variants) against the installed wheel."""
    if not any(TESTS.glob("test_*.py")):
        session.error("no tests/test_*.py to soak")
    _install_wheel(session)
    with _chdir_tmp(session):
        session.run(
            # -s: show the long runs' summary lines (seeds, examples, steps, failures)
            *_pytest_args("-s", *_test_selection(session.posargs)),
            env=_pytest_env(session, FORK_SOAK="1"),
        )


@nox.session
def demo(session: nox.Session) -> None:
    """Run examples/agent_switch_demo.py against the installed wheel."""
    _script_session(session, ROOT / "examples" / "agent_switch_demo.py", *session.posargs)


@nox.session
def live(session: nox.Session) -> None:
    """Run tools/live_check.py against the installed wheel (opt-in: needs Azure settings).

    Without ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY`` and ``AZURE_OPENAI_DEPLOYMENT``
    the script prints one line saying what is missing and exits 0; CI never runs this session.
    """
    script = ROOT / "tools" / "live_check.py"
    _require(session, script, "script")
    wheel = built_wheel(session)
    session.install(str(wheel))
    session.install("--force-reinstall", "--no-deps", str(wheel))
    with _chdir_tmp(session):
        session.run("python", str(script), *session.posargs, env={"PYTHONDONTWRITEBYTECODE": "1"})


@nox.session
def upstream(session: nox.Session) -> None:
    """Run tools/upstream_check.py (compares the fork with upstream)."""
    _script_session(session, ROOT / "tools" / "upstream_check.py", *session.posargs)


@nox.session
def main_prs(session: nox.Session) -> None:
    """Check each patch of patches/main ALONE on patches/main/BASE and print the table.

    Needs a livekit/agents git checkout (``-- --checkout PATH`` or ``LK_AGENTS_CHECKOUT``) that
    has the base commit; without one it fails, it never passes unchecked. The tools run in
    ``LK_AGENTS_PYTHON`` (or ``-- --python``) if given, else in this session's venv, made from
    the checkout's own livekit-agents, -openai and -xai at BASE plus pytest, pytest-asyncio,
    aiohttp, ruff and mypy.
    """
    args = list(session.posargs)
    checkout = os.environ.get("LK_AGENTS_CHECKOUT")
    if "--checkout" in args[:-1]:
        checkout = args[args.index("--checkout") + 1]
    if not checkout:
        session.error(
            "upstream_check: cannot check: no livekit/agents checkout given "
            "(pass -- --checkout PATH or set LK_AGENTS_CHECKOUT)"
        )
    if "--checkout" not in args:
        args += ["--checkout", checkout]
    if "--python" not in args:
        python = os.environ.get("LK_AGENTS_PYTHON")
        if not python:
            base = next(
                ln.split(":", 1)[1].strip()
                for ln in (PATCHES / "main" / "BASE").read_text().splitlines()
                if ln.startswith("commit:")
            )
            pkgs = [
                "livekit-agents",
                "livekit-plugins/livekit-plugins-openai",
                "livekit-plugins/livekit-plugins-xai",
            ]
            with tempfile.TemporaryDirectory(prefix="main-prs-") as tmp:
                archive = subprocess.run(
                    ["git", "-C", checkout, "archive", "--format=tar", base, *pkgs],
                    capture_output=True,
                )
                if archive.returncode != 0:
                    session.error(
                        f"upstream_check: cannot check: {checkout} cannot export {base}: "
                        + archive.stderr.decode(errors="replace").strip()
                    )
                with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                    tar.extractall(tmp, filter="data")
                session.install(
                    *(str(Path(tmp) / p) for p in pkgs),
                    "pytest",
                    "pytest-asyncio",
                    "aiohttp",
                    "ruff",
                    "mypy",
                )
            python = str(Path(session.bin) / "python")
        args += ["--python", python]
    session.run(
        "python",
        str(ROOT / "tools" / "upstream_check.py"),
        "--series",
        "main",
        "--each-patch",
        *args,
    )


if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-m", "nox", *sys.argv[1:]], cwd=ROOT))
