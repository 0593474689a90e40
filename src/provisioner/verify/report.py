"""The results of one ``provision verify`` run, and their three renderings.

One :class:`CheckResult` per host and check. :class:`VerifyReport` turns them into a table
for people (:meth:`~VerifyReport.table`, :meth:`~VerifyReport.failures`), JSON
(:meth:`~VerifyReport.to_json`) and JUnit XML (:meth:`~VerifyReport.junit_xml`) from the
same list, so the three always agree. The JSON shape is documented in ``docs/verify.md``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

# The layers of the stack, in the order the table shows them.
LAYERS: tuple[str, ...] = ("driver", "cuda", "pytorch", "ollama", "host")

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"
STATUSES: tuple[str, ...] = (PASS, FAIL, SKIP, ERROR)

_STYLE = {PASS: "green", FAIL: "red", SKIP: "yellow", ERROR: "magenta"}


@dataclass(frozen=True)
class CheckResult:
    """One check on one host.

    ``status`` is ``pass``, ``fail`` (the host is not as expected; ``message`` names the
    expected and the actual value), ``skip`` (the check does not apply; ``message`` is the
    reason) or ``error`` (the check itself could not run, e.g. the connection dropped).
    """

    host: str
    layer: str
    check: str
    status: str
    message: str = ""
    duration_s: float = 0.0
    nodeid: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "check": self.check,
            "status": self.status,
            "message": self.message,
        }


@dataclass
class VerifyReport:
    """Results of the suite over a set of hosts.

    + hosts: every host that was meant to be checked, in inventory order (a host with no
      result at all fails: "no check ran")
    + results: one entry per host and check
    + problems: run-level problems (pytest itself failed, a host missing from the results)
    + output: pytest's console output, for debugging
    """

    hosts: list[str]
    results: list[CheckResult]
    problems: list[str] = field(default_factory=list)
    output: str = ""

    # -- per host ----------------------------------------------------------------------

    def checks_of(self, host: str) -> list[CheckResult]:
        return [r for r in self.results if r.host == host]

    def host_status(self, host: str) -> str:
        """``pass`` when no check of the host failed or errored and at least one ran."""
        checks = self.checks_of(host)
        if not checks or any(r.status in (FAIL, ERROR) for r in checks):
            return FAIL
        return PASS

    def layer_status(self, host: str, layer: str) -> str | None:
        """``fail``/``error`` if any check of the layer did, else ``pass`` if any passed,
        else ``skip``; None when the layer has no check on this host."""
        statuses = {r.status for r in self.checks_of(host) if r.layer == layer}
        if not statuses:
            return None
        for status in (ERROR, FAIL, PASS):
            if status in statuses:
                return status
        return SKIP

    def layers(self) -> list[str]:
        """The known layers, then any other layer a check declared."""
        extra = sorted({r.layer for r in self.results} - set(LAYERS))
        return [*LAYERS, *extra]

    @property
    def exit_code(self) -> int:
        """0 only when every host passes (skips are not failures), else 1."""
        if self.problems:
            return 1
        return 0 if all(self.host_status(h) == PASS for h in self.hosts) else 1

    # -- renderings ----------------------------------------------------------------------

    def table(self) -> Table:
        """One row per host, one column per layer; cells pass/fail/skip/error."""
        from rich.table import Table

        table = Table(title="provision verify", title_justify="left")
        table.add_column("name")
        layers = self.layers()
        for layer in layers:
            table.add_column(layer)
        table.add_column("result")
        for host in self.hosts:
            cells = []
            for layer in layers:
                status = self.layer_status(host, layer)
                cells.append("-" if status is None else f"[{_STYLE[status]}]{status}[/]")
            status = self.host_status(host)
            table.add_row(host, *cells, f"[bold {_STYLE[status]}]{status}[/]")
        return table

    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in (FAIL, ERROR)]

    def failures(self) -> str:
        """The failed (and errored) checks, one block each: host, layer/check, message."""
        blocks = []
        for r in self.failed():
            label = "ERROR" if r.status == ERROR else "FAIL"
            message = "\n".join(
                "    " + line for line in (r.message or "(no message)").splitlines()
            )
            blocks.append(f"{label} {r.host} {r.layer}/{r.check}\n{message}")
        for host in self.hosts:
            if not self.checks_of(host):
                blocks.append(f"FAIL {host}\n    no check ran on this host")
        blocks.extend(f"FAIL provision verify\n    {p}" for p in self.problems)
        return "\n".join(blocks)

    def summary(self) -> dict[str, Any]:
        counts = Counter(r.status for r in self.results)
        failed = [h for h in self.hosts if self.host_status(h) != PASS]
        return {
            "hosts": len(self.hosts),
            "passed": len(self.hosts) - len(failed),
            "failed": len(failed),
            "failed_hosts": failed,
            "checks": {status: counts.get(status, 0) for status in STATUSES},
            "problems": list(self.problems),
            "exit_code": self.exit_code,
        }

    def to_json(self) -> dict[str, Any]:
        """``{"hosts": {NAME: {"status", "checks": [...]}}, "summary": {...}}``."""
        return {
            "hosts": {
                host: {
                    "status": self.host_status(host),
                    "checks": [r.to_json() for r in self.checks_of(host)],
                }
                for host in self.hosts
            },
            "summary": self.summary(),
        }

    def junit_xml(self) -> str:
        """The same results as JUnit XML: one ``testsuite`` per host, one ``testcase`` per
        check (``classname`` = ``HOST.LAYER``, ``name`` = the check)."""
        root = ET.Element("testsuites", name="provision verify")
        totals: Counter[str] = Counter()
        for host in self.hosts:
            checks = self.checks_of(host)
            counts = Counter(r.status for r in checks)
            suite = ET.SubElement(
                root,
                "testsuite",
                name=host,
                tests=str(len(checks) or 1),
                failures=str(counts[FAIL] + (0 if checks else 1)),
                errors=str(counts[ERROR]),
                skipped=str(counts[SKIP]),
                time=f"{sum(r.duration_s for r in checks):.3f}",
            )
            totals.update(counts)
            totals["tests"] += len(checks) or 1
            if not checks:
                totals[FAIL] += 1
                case = ET.SubElement(suite, "testcase", classname=f"{host}.host", name="checks_ran")
                ET.SubElement(case, "failure", message="no check ran on this host")
            for r in checks:
                case = ET.SubElement(
                    suite,
                    "testcase",
                    classname=f"{host}.{r.layer}",
                    name=r.check,
                    time=f"{r.duration_s:.3f}",
                )
                if r.status == FAIL:
                    ET.SubElement(case, "failure", message=r.message).text = r.message
                elif r.status == ERROR:
                    ET.SubElement(case, "error", message=r.message).text = r.message
                elif r.status == SKIP:
                    ET.SubElement(case, "skipped", message=r.message)
        root.set("tests", str(totals["tests"]))
        root.set("failures", str(totals[FAIL]))
        root.set("errors", str(totals[ERROR]))
        root.set("skipped", str(totals[SKIP]))
        ET.indent(root)
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            + ET.tostring(root, encoding="unicode")
            + "\n"
        )

    def write_junit(self, path: Path) -> None:
        path.write_text(self.junit_xml(), encoding="utf-8")

    # -- the suite's raw results file -------------------------------------------------------

    @classmethod
    def from_results(
        cls,
        hosts: list[str],
        raw: list[dict[str, Any]],
        problems: list[str] | None = None,
        output: str = "",
    ) -> VerifyReport:
        """Build a report from the records the results plugin wrote (see ``recorder.py``)."""
        order = {name: i for i, name in enumerate(hosts)}
        layer_order = {name: i for i, name in enumerate(LAYERS)}
        records = sorted(
            raw,
            key=lambda item: (
                order.get(str(item.get("host")), len(order)),
                layer_order.get(str(item.get("layer")), len(layer_order)),
                int(item.get("order", 0)),
            ),
        )
        results = [
            CheckResult(
                host=str(item.get("host", "?")),
                layer=str(item.get("layer", "?")),
                check=str(item.get("check", "?")),
                status=str(item.get("status", ERROR)),
                message=str(item.get("message", "")),
                duration_s=float(item.get("duration_s", 0.0)),
                nodeid=str(item.get("nodeid", "")),
            )
            for item in records
        ]
        known = list(hosts) + sorted({r.host for r in results} - set(hosts))
        return cls(hosts=known, results=results, problems=list(problems or []), output=output)
