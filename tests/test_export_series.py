"""The complete backport series (``tools/export_series.py``): where the module patches go.

Modules come in the order of their imports of each other (ties by name), each just before the
first edit patch that imports it; a module no edit imports, or a cycle, is one error line. The
repository's own series is checked the same way: no patch imports a module a later patch adds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(os.environ.get("FORK_REPO_ROOT", Path(__file__).resolve().parent.parent))


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "export_series", REPO / "tools" / "export_series.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("export_series", module)
    spec.loader.exec_module(module)
    return module


tool = _load()

# a small graph of the shape of src/: io imports everything, c imports a and b, b imports a
DEPS = {"io": {"a", "b", "c", "slicer"}, "c": {"a", "b"}, "b": {"a"}, "a": set(), "slicer": set()}
NAMES = set(DEPS) | {"net"}


def _edit(*added: str) -> str:
    return "".join(f"+{line}\n" for line in added) + " context\n-from .net import gone\n"


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("from .net import Credentials", {"net"}),
        ("from . import net, slicer", {"net", "slicer"}),
        ("from .realtime.net import x", {"net"}),
        ("from livekit.plugins.openai.realtime.net import Credentials", {"net"}),
        ("from livekit.plugins.openai.realtime import net", {"net"}),
        ("    monkeypatch.setattr(realtime.net, 'x', 1)", {"net"}),
        ("from .log import logger", set()),
        ("from .fake_realtime_ws import FakeRealtimeEndpoint", set()),
    ],
)
def test_patch_imports_reads_added_lines(line: str, found: set[str]) -> None:
    assert tool.patch_imports(_edit(line), NAMES) == found


def test_removed_and_context_lines_import_nothing() -> None:
    assert tool.patch_imports(" from .net import x\n-from .a import y\n", NAMES) == set()


def test_dependency_order_puts_imports_first_ties_by_name() -> None:
    assert tool.dependency_order(DEPS) == ["a", "b", "c", "slicer", "io"]


def test_a_cycle_is_one_error_line() -> None:
    with pytest.raises(tool.ExportError, match=r"cycle: \['a', 'b'\]") as err:
        tool.dependency_order({"a": {"b"}, "b": {"a"}})
    assert "\n" not in str(err.value)


def test_modules_land_before_their_first_user_after_their_imports() -> None:
    deps = {**DEPS, "net": set()}
    edits = [
        ("cap", _edit("openai<3")),
        ("malformed", _edit("from .io import decode")),
        ("perf", _edit("from .slicer import LoopSlicer")),
        ("azure", _edit("from .net import Credentials")),
    ]
    order = tool.interleave(edits, deps)
    assert order == [
        ("edit", "cap"),
        *(("module", m) for m in ("a", "b", "c", "slicer", "io")),
        ("edit", "malformed"),
        ("edit", "perf"),
        ("module", "net"),
        ("edit", "azure"),
    ]


def test_a_module_no_edit_imports_is_an_error() -> None:
    with pytest.raises(tool.ExportError, match="no patch of patches/series imports net") as err:
        tool.interleave([("cap", _edit("openai<3"))], {"net": set()})
    assert "\n" not in str(err.value)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_no_patch_of_the_series_imports_a_module_added_later(tmp_path: Path) -> None:
    done = tool.export(tmp_path)
    added: dict[str, int] = {}  # module stem -> position of the patch adding it
    for i, name in enumerate(done.names):
        text = (tmp_path / name).read_text(encoding="utf-8")
        for stem in re.findall(r"^\+\+\+ b/.*/realtime/(\w+)\.py$", text, re.MULTILINE):
            if "new file mode" in text and f"add realtime/{stem}.py" in text:
                added[stem] = i
    assert set(added) == {p.stem for p in (REPO / "src").rglob("*.py")}
    for i, name in enumerate(done.names):
        text = (tmp_path / name).read_text(encoding="utf-8")
        if "feat-openai-add-realtime-" in name:
            stem = name.split("add-realtime-", 1)[1].removesuffix(".py.patch")
            source = REPO / "src/livekit/plugins/openai/realtime" / f"{stem}.py"
            needs = tool.module_imports(source, added)
        else:
            needs = tool.patch_imports(text, added)
        assert all(added[m] < i for m in needs), (name, {m: added[m] for m in needs})
    # each module right before its first user: the only module patch after an edit is the one
    # a later edit needs first (connection.py, for the Azure connection patch)
    first_edit = next(i for i, n in enumerate(done.names) if i and "add-realtime-" not in n)
    late = [n for n in done.names[first_edit:] if "add-realtime-" in n]
    assert late == [n for n in done.names if "add-realtime-connection.py" in n]
    assert (tmp_path / "series").read_text(encoding="utf-8").splitlines()[-len(done.names) :] == (
        done.names
    )
