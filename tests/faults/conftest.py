"""The fault matrix's results: with ``MAILSIFT_FAULTS_REPORT=path`` the run writes each case's
verdict and figures as JSON there (``python tests/faults/report.py`` sets it and renders
docs/reliability.md).  Works with pytest-xdist: the figures travel in the reports."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_results: dict[str, dict[str, Any]] = {}


def _case(nodeid: str) -> str:
    return nodeid.rpartition("::")[2]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/faults/test_matrix.py" not in report.nodeid:
        return
    entry = _results.setdefault(_case(report.nodeid), {"verdict": "pass"})
    for name, value in report.user_properties:
        if name == "faults":
            entry.update(json.loads(value))
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        entry["verdict"] = "skipped"
        entry["reason"] = reason.removeprefix("Skipped: ")
    elif report.failed:
        entry["verdict"] = "FAIL"
        entry["failure"] = str(report.longrepr).splitlines()[-1][:300] if report.longrepr else ""


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("MAILSIFT_FAULTS_REPORT")
    if path and not hasattr(session.config, "workerinput") and _results:
        with open(path, "w") as handle:
            json.dump(_results, handle, indent=1, sort_keys=True)
