"""The results plugin: one record per host and check, written as JSON when the session ends.

Registered by ``plugin.py`` when ``--provisioner-results=FILE`` is given. It runs in the
pytest process that sees every report (the xdist controller, or the only process), and
reads what the suite's ``pytest_runtest_makereport`` wrapper attached to each report as
``user_properties``: the host, layer, check, the kind of failure and a clean message.

The file: ``{"results": [{"host", "layer", "check", "status", "message", "duration_s",
"nodeid", "order"}], "problems": ["..."]}``; :meth:`VerifyReport.from_results` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provisioner.verify.report import ERROR, FAIL, PASS, SKIP


def _props(report: pytest.TestReport) -> dict[str, Any]:
    return {str(k): v for k, v in report.user_properties}


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr or "")
    return reason.removeprefix("Skipped: ")


def _crash_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    return str(report.longrepr or "")


class ResultsRecorder:
    """Collects the per-phase reports of each check into one record."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.problems: list[str] = []

    def _record(self, report: pytest.TestReport) -> dict[str, Any]:
        props = _props(report)
        record = self.records.get(report.nodeid)
        if record is None:
            check = str(props.get("check") or report.nodeid.split("::")[-1].split("[")[0])
            record = self.records[report.nodeid] = {
                "host": str(props.get("host") or "?"),
                "layer": str(props.get("layer") or "?"),
                "check": check.removeprefix("test_"),
                "status": PASS,
                "message": "",
                "duration_s": 0.0,
                "nodeid": report.nodeid,
                "order": int(props.get("order", 0)),
            }
        return record

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self._record(report)
        props = _props(report)
        record["duration_s"] = round(record["duration_s"] + float(report.duration or 0.0), 3)
        if report.passed:
            if report.when == "call" and props.get("message"):
                record["message"] = str(props["message"])
            return
        if record["status"] in (FAIL, ERROR):
            return  # keep the first failure of a check (e.g. call) over a later teardown error
        if report.skipped:
            record["status"] = SKIP
            record["message"] = str(props.get("message") or _skip_reason(report))
            return
        kind = props.get("kind")
        if kind not in (FAIL, ERROR):
            kind = FAIL if report.when == "call" else ERROR
        record["status"] = kind
        message = str(props.get("message") or _crash_message(report))
        if report.when != "call":
            message = f"{report.when} of the check failed: {message}"
        record["message"] = message

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.problems.append(f"could not collect {report.nodeid}: {_crash_message(report)}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):
            return  # an xdist worker: the controller writes the file
        payload = {"results": list(self.records.values()), "problems": self.problems}
        self.path.write_text(json.dumps(payload, indent=1), encoding="utf-8")
