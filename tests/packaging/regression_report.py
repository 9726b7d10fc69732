"""pytest plugin of ``nox -s tests_upstream`` and ``tests_fork`` (``-p regression_report``).

Records, for every collected test marked ``@pytest.mark.regression(fails_on=(...))``, the
versions it names and the outcome of its *call* phase, and writes them as JSON to
``$FORK_REGRESSION_REPORT`` at the end of the session. A failure in setup is recorded as
``error``, not ``failed``: only an assertion or exception in the test body counts as a bite.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_RECORDS: dict[str, dict[str, Any]] = {}


def _versions(mark: pytest.Mark, key: str) -> list[str]:
    value = mark.kwargs.get(key, mark.args[0] if mark.args and key == "fails_on" else ())
    if isinstance(value, str):
        value = (value,)
    return [str(v) for v in value]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember the regression-marked tests that will run."""
    for item in session.items:
        mark = item.get_closest_marker("regression")
        if mark is not None:
            _RECORDS[item.nodeid] = {
                "nodeid": item.nodeid,
                "fails_on": _versions(mark, "fails_on"),
                "passes_on": _versions(mark, "passes_on"),
                "outcome": "not run",
            }


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the call-phase outcome (or why the call phase never ran)."""
    rec = _RECORDS.get(report.nodeid)
    if rec is None:
        return
    if report.when == "setup":
        if report.failed:
            rec["outcome"] = "error (setup)"
        elif report.skipped:
            rec["outcome"] = "skipped"
    elif report.when == "call":
        if hasattr(report, "wasxfail"):
            rec["outcome"] = "xfailed" if report.skipped else "xpassed"
        else:
            rec["outcome"] = report.outcome
    elif report.when == "teardown" and report.failed and rec["outcome"] == "passed":
        rec["outcome"] = "passed (error in teardown)"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the records to ``$FORK_REGRESSION_REPORT``."""
    path = os.environ.get("FORK_REGRESSION_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(list(_RECORDS.values()), f, indent=1)
