"""PEP 517 build backend for the patched ``livekit-plugins-openai`` fork.

This directory holds packaging only. Building a wheel:

1. finds the patch series: ``patches/`` inside the project (when building from the fork's own
   sdist) or ``../../patches`` (when building from the repository or a git URL subdirectory);
2. reads the pin ``patches/upstream.txt`` (pip hash-checking format) and obtains the pristine
   upstream sdist from ``$LK_OPENAI_FORK_SDIST`` (offline builds), the user's cache, or the
   indexes and find-links locations of the user's pip and uv settings (:mod:`lk_fork_fetch`);
3. verifies its sha256, extracts it safely, applies the series with the strict applier in
   :mod:`lk_fork_patch`, adds the fork's own modules (``src/`` next to ``patches/``: files
   upstream does not have, kept whole rather than as patches), and builds the wheel with hatchling from a temporary directory holding
   the patched ``livekit/`` tree next to this project's ``pyproject.toml``, ``README.md``,
   ``LICENSE`` and ``NOTICE``. ``SOURCE_DATE_EPOCH`` defaults to the newest timestamp inside the
   pinned sdist, so the same inputs give a byte-identical wheel.

Any failure is reported as a single ``error: ...`` line (printed to stderr and used as the
exception message) and leaves nothing in the output directory.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import lk_fork_fetch
from lk_fork_fetch import SDIST_ENV
from lk_fork_patch import PatchError, apply_series, read_series

DIST_NAME = "livekit-plugins-openai"
PIN_FILE = "upstream.txt"
_PIN_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!-]+)"
    r"(?:\s+--hash=sha256:(?P<sha256>[0-9a-fA-F]{64}))+\s*$"
)
_SDIST_FILES = ("pyproject.toml", "README.md")
_FORK_FILES = ("LICENSE", "NOTICE")  # at the repository root, or next to patches/ in our sdist
# the fork's own modules, laid out as in the package (src/livekit/...), next to patches/
SRC_DIR = "src"
# the module that says the package's version: the wheel's says the distribution's
VERSION_FILE = PurePosixPath("livekit/plugins/openai/version.py")
_VERSION_LINE = re.compile(r'^__version__ = "[^"\n]*"$', re.MULTILINE)

ConfigSettings = Mapping[str, Any] | None


class ForkBuildError(Exception):
    """Why the fork cannot be built. ``str(err)`` is one line starting with ``error: ``."""

    def __init__(self, message: str) -> None:
        line = " ".join(message.split())
        super().__init__(line if line.startswith("error: ") else f"error: {line}")


@dataclass(frozen=True)
class Pin:
    """The pinned upstream sdist."""

    name: str
    version: str
    sha256: str
    line: str


def project_dir() -> Path:
    """The directory holding this project's ``pyproject.toml``."""
    return Path(__file__).resolve().parent.parent


def find_patches_dir(root: Path | None = None) -> Path:
    """Locate the patch series for a build started in ``root``.

    Raises:
        ForkBuildError: neither ``root/patches`` nor ``root/../../patches`` holds a series.
    """
    root = root if root is not None else project_dir()
    candidates = [root / "patches", root.parent.parent / "patches"]
    for cand in candidates:
        if (cand / "series").is_file():
            return cand
    raise ForkBuildError(
        "error: patch series not found (looked for "
        + " and ".join(str(c / "series") for c in candidates)
        + ")"
    )


def read_pin(patches_dir: Path) -> Pin:
    """Parse ``patches_dir/upstream.txt``: exactly one ``name==version --hash=sha256:...`` line.

    Raises:
        ForkBuildError: the pin is missing or malformed.
    """
    path = patches_dir / PIN_FILE
    if not path.is_file():
        raise ForkBuildError(f"error: upstream pin not found: {path}")
    pins: list[Pin] = []
    text = re.sub(r"\\\r?\n", " ", path.read_text(encoding="utf-8"))  # pip line continuations
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        m = _PIN_RE.match(line)
        if m is None or m.group("name").lower().replace("_", "-") != DIST_NAME:
            raise ForkBuildError(
                f"error: {path}: expected '{DIST_NAME}==VERSION --hash=sha256:HEX', got {line!r}"
            )
        pins.append(Pin(DIST_NAME, m.group("version"), m.group("sha256").lower(), line))
    if len(pins) != 1:
        raise ForkBuildError(
            f"error: {path}: expected exactly one pinned requirement, found {len(pins)}"
        )
    return pins[0]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    return lk_fork_fetch.sha256_of(path)


def fetch_sdist(pin: Pin, patches_dir: Path, dest: Path) -> Path:
    """Return the verified upstream sdist: ``$LK_OPENAI_FORK_SDIST``, the cache or an index.

    Raises:
        ForkBuildError: download failure or sha256 mismatch.
    """
    local = os.environ.get(SDIST_ENV)
    if local:
        src = Path(local).expanduser()
        if not src.is_file():
            raise ForkBuildError(f"error: {SDIST_ENV}={local} does not exist")
        sdist = dest / src.name
        shutil.copyfile(src, sdist)
        actual = sha256_of(sdist)
        if actual != pin.sha256:
            raise ForkBuildError(
                f"error: sha256 mismatch for {pin.name}=={pin.version} sdist "
                f"({SDIST_ENV}={local}): expected {pin.sha256}, got {actual}"
            )
        return sdist
    try:
        return lk_fork_fetch.fetch(pin.name, pin.version, pin.sha256, dest)
    except lk_fork_fetch.FetchError as e:
        raise ForkBuildError(str(e)) from None


def source_date_epoch() -> int:
    """``[tool.lk-fork] upstream-release-date`` of our ``pyproject.toml`` as a Unix time.

    Raises:
        ForkBuildError: the date is missing or malformed.
    """
    path = project_dir() / "pyproject.toml"
    value = lk_fork_fetch.load_toml(path.read_text(encoding="utf-8"))
    raw = value.get("tool", {}).get("lk-fork", {}).get("upstream-release-date")
    try:
        day = datetime.date.fromisoformat(str(raw))
    except ValueError:
        raise ForkBuildError(
            f"error: {path}: [tool.lk-fork] upstream-release-date must be YYYY-MM-DD, got {raw!r}"
        ) from None
    return int(
        datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp()
    )


@contextlib.contextmanager
def _source_date_epoch(epoch: int) -> Iterator[None]:
    """Set ``SOURCE_DATE_EPOCH`` for hatchling unless the caller set it."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        yield
        return
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    try:
        yield
    finally:
        os.environ.pop("SOURCE_DATE_EPOCH", None)


def safe_extract(sdist: Path, dest: Path) -> Path:
    """Extract ``sdist`` (a ``.tar.gz``) into ``dest`` and return its single top directory.

    Only regular files and directories are accepted; absolute paths, ``..`` components, links
    and device files are refused.

    Raises:
        ForkBuildError: unsafe or unexpected archive contents.
    """
    if not sdist.name.endswith(".tar.gz"):
        raise ForkBuildError(f"error: {sdist.name}: expected a .tar.gz sdist")
    tops: set[str] = set()
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                pure = PurePosixPath(member.name)
                if (
                    pure.is_absolute()
                    or "\\" in member.name
                    or any(part in ("", "..") for part in pure.parts)
                ):
                    raise ForkBuildError(f"error: {sdist.name}: unsafe path {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise ForkBuildError(
                        f"error: {sdist.name}: refusing non-regular member {member.name!r}"
                    )
                parts = [p for p in pure.parts if p != "."]
                if not parts:
                    continue
                tops.add(parts[0])
                target = dest.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise ForkBuildError(f"error: {sdist.name}: cannot read {member.name!r}")
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ForkBuildError(f"error: {sdist.name}: cannot extract: {e}") from None
    if len(tops) != 1:
        raise ForkBuildError(
            f"error: {sdist.name}: expected one top-level directory, found {sorted(tops)}"
        )
    return dest / tops.pop()


def prepare_patched_tree(
    work: Path, patches_dir: Path | None = None, sdist: Path | None = None
) -> Path:
    """Fetch, verify, extract and patch the upstream sdist below ``work``; return the tree.

    ``sdist`` (verified like any other source) skips the download; so does
    ``$LK_OPENAI_FORK_SDIST``.

    Raises:
        ForkBuildError: any step failed.
    """
    patches_dir = patches_dir if patches_dir is not None else find_patches_dir()
    pin = read_pin(patches_dir)
    try:
        names = read_series(patches_dir)
    except PatchError as e:
        raise ForkBuildError(str(e)) from None
    dl = work / "sdist"
    dl.mkdir()
    if sdist is None:
        sdist = fetch_sdist(pin, patches_dir, dl)
    elif sha256_of(sdist) != pin.sha256:
        raise ForkBuildError(
            f"error: sha256 mismatch for {pin.name}=={pin.version} sdist ({sdist}): "
            f"expected {pin.sha256}, got {sha256_of(sdist)}"
        )
    extract = work / "extract"
    extract.mkdir()
    tree = safe_extract(sdist, extract)
    if not (tree / "livekit" / "plugins" / "openai" / "__init__.py").is_file():
        raise ForkBuildError(f"error: {sdist.name} does not contain livekit/plugins/openai")
    try:
        apply_series(tree, patches_dir, names)
    except PatchError as e:
        raise ForkBuildError(str(e)) from None
    add_own_modules(tree, patches_dir.parent / SRC_DIR)
    return tree


def own_modules(src: Path) -> list[PurePosixPath]:
    """The fork's own files below ``src`` (relative paths, sorted); none when it is absent."""
    if not src.is_dir():
        return []
    return sorted(
        PurePosixPath(p.relative_to(src).as_posix())
        for p in src.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix == ".py"
    )


def add_own_modules(tree: Path, src: Path) -> None:
    """Copy the fork's own modules into the patched tree; none may replace an upstream file.

    Raises:
        ForkBuildError: A module would overwrite a file of the upstream sdist or a patched one.
    """
    for rel in own_modules(src):
        target = tree.joinpath(*rel.parts)
        if target.exists():
            raise ForkBuildError(
                f"error: {SRC_DIR}/{rel} would replace the upstream file {rel}: the fork's own "
                "modules must be new files (edit upstream files with a patch)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.joinpath(*rel.parts), target)


@contextlib.contextmanager
def _failing_cleanly() -> Iterator[None]:
    try:
        yield
    except ForkBuildError as e:
        print(str(e), file=sys.stderr, flush=True)
        raise


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    """Run the block in ``path`` (``contextlib.chdir`` is Python 3.11+)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def project_version() -> str:
    """``[project] version`` of our ``pyproject.toml`` (the distribution's version)."""
    path = project_dir() / "pyproject.toml"
    project = lk_fork_fetch.load_toml(path.read_text(encoding="utf-8")).get("project", {})
    value = project.get("version") if isinstance(project, dict) else None
    if not isinstance(value, str) or not value:
        raise ForkBuildError(f"error: {path} has no [project] version")
    return value


def stamped_version_file(text: str, version: str) -> str:
    """``version.py``'s text saying ``version`` (upstream's says the upstream release).

    Raises:
        ForkBuildError: The file does not have exactly one ``__version__ = "..."`` line.
    """
    lines = _VERSION_LINE.findall(text)
    if len(lines) != 1:
        raise ForkBuildError(
            f'error: {VERSION_FILE} has {len(lines)} `__version__ = "..."` lines, expected one'
        )
    return _VERSION_LINE.sub(f'__version__ = "{version}"', text)


def stamp_version(root: Path, version: str) -> None:
    """Write ``version`` into ``version.py`` below ``root`` (the tree holding ``livekit/``)."""
    path = root.joinpath(*VERSION_FILE.parts)
    path.write_text(stamped_version_file(path.read_text(encoding="utf-8"), version), "utf-8")


def _copy_project_files(dest: Path, patches_dir: Path) -> None:
    root = project_dir()
    for name in _SDIST_FILES:
        shutil.copy2(root / name, dest / name)
    for name in _FORK_FILES:
        src = patches_dir.parent / name
        if not src.is_file():
            raise ForkBuildError(f"error: {name} not found (looked for {src})")
        shutil.copy2(src, dest / name)


def _deliver(built_dir: Path, out_dir: str, suffix: str) -> str:
    produced = [p for p in built_dir.iterdir() if p.name.endswith(suffix)]
    if len(produced) != 1:
        raise ForkBuildError(f"error: hatchling produced {len(produced)} {suffix} files")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_target = out / f".{produced[0].name}.part"
    shutil.copyfile(produced[0], tmp_target)
    os.replace(tmp_target, out / produced[0].name)
    return produced[0].name


# ---------------------------------------------------------------------------- PEP 517 hooks


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    """Nothing beyond ``build-system.requires``."""
    return []


def get_requires_for_build_sdist(config_settings: ConfigSettings = None) -> list[str]:
    """Nothing beyond ``build-system.requires``."""
    return []


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: ConfigSettings = None
) -> str:
    """Metadata comes from the static ``[project]`` table: checks series and pin, no download.

    hatchling hides its own metadata hook when run by pip, so the ``.dist-info`` is taken from a
    wheel built out of a staging directory with a placeholder package.
    """
    import zipfile

    from hatchling.build import build_wheel as hatch_build_wheel

    with _failing_cleanly(), tempfile.TemporaryDirectory(prefix="lk-fork-meta-") as tmp:
        patches_dir = find_patches_dir()
        read_pin(patches_dir)
        try:
            read_series(patches_dir)
        except PatchError as e:
            raise ForkBuildError(str(e)) from None
        stage = Path(tmp) / "stage"
        (stage / "livekit").mkdir(parents=True)
        (stage / "livekit" / "placeholder.txt").write_text("metadata only\n")
        _copy_project_files(stage, patches_dir)
        built = Path(tmp) / "built"
        built.mkdir()
        with chdir(stage):
            wheel = built / hatch_build_wheel(str(built))
        with zipfile.ZipFile(wheel) as zf:
            infos = [n for n in zf.namelist() if n.split("/")[0].endswith(".dist-info")]
            dist_info = infos[0].split("/")[0]
            for name in infos:
                target = Path(metadata_directory).joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
        return dist_info


def build_wheel(
    wheel_directory: str,
    config_settings: ConfigSettings = None,
    metadata_directory: str | None = None,
) -> str:
    """Build the patched wheel into ``wheel_directory`` (all or nothing)."""
    from hatchling.build import build_wheel as hatch_build_wheel

    with _failing_cleanly(), tempfile.TemporaryDirectory(prefix="lk-fork-wheel-") as tmp:
        work = Path(tmp)
        patches_dir = find_patches_dir()
        tree = prepare_patched_tree(work, patches_dir)
        stage = work / "stage"
        stage.mkdir()
        shutil.copytree(tree / "livekit", stage / "livekit")
        # __version__ says the fork's version, not upstream's (the series leaves version.py alone)
        stamp_version(stage, project_version())
        _copy_project_files(stage, patches_dir)
        built = work / "built"
        built.mkdir()
        with chdir(stage), _source_date_epoch(source_date_epoch()):
            hatch_build_wheel(str(built))
        return _deliver(built, wheel_directory, ".whl")


def build_sdist(sdist_directory: str, config_settings: ConfigSettings = None) -> str:
    """Build the fork's sdist: packaging, backend, series, listed patches and pin."""
    from hatchling.build import build_sdist as hatch_build_sdist

    with _failing_cleanly(), tempfile.TemporaryDirectory(prefix="lk-fork-sdist-") as tmp:
        work = Path(tmp)
        patches_dir = find_patches_dir()
        read_pin(patches_dir)
        try:
            names = read_series(patches_dir)
        except PatchError as e:
            raise ForkBuildError(str(e)) from None
        stage = work / "stage"
        (stage / "patches").mkdir(parents=True)
        (stage / "_build").mkdir()
        _copy_project_files(stage, patches_dir)
        for module in sorted(Path(__file__).resolve().parent.glob("*.py")):
            shutil.copy2(module, stage / "_build" / module.name)
        for name in ["series", PIN_FILE, *names]:
            shutil.copy2(patches_dir / name, stage / "patches" / name)
        src = patches_dir.parent / SRC_DIR
        for rel in own_modules(src):
            target = stage.joinpath(SRC_DIR, *rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src.joinpath(*rel.parts), target)
        built = work / "built"
        built.mkdir()
        with chdir(stage), _source_date_epoch(source_date_epoch()):
            hatch_build_sdist(str(built))
        return _deliver(built, sdist_directory, ".tar.gz")
