"""`provision verify --repair`: apply only to the hosts verify found broken, then re-check them."""

from __future__ import annotations

from provisioner import verify_cli
from provisioner.apply import HostRun, RunResult
from provisioner.verify.report import CheckResult, VerifyReport


def _report(statuses: dict[str, str]) -> VerifyReport:
    return VerifyReport(
        hosts=list(statuses),
        results=[CheckResult(h, "ollama", "service", s, "") for h, s in statuses.items()],
    )


def _run(names: list[str], code: int = 0) -> RunResult:
    """A run whose exit code is ``code``: 1 every host failed, 3 every host waits for a reboot."""
    hosts = {n: HostRun(pending_reboot="mismatch" if code == 3 else None) for n in names}
    return RunResult("site", False, int(code == 1), hosts, list(names) if code == 1 else [], {})


def test_only_the_broken_hosts_are_applied_and_checked_again(monkeypatch):
    calls: dict[str, object] = {}

    def run_deploy(loaded, deploy, **options):
        calls["deploy"] = (loaded, deploy, options)
        return _run(list(loaded))

    def verify_inventory(loaded, workers=None):
        calls["verify"] = loaded
        return _report(dict.fromkeys(loaded, "pass"))

    monkeypatch.setattr("provisioner.apply.run_deploy", run_deploy)
    monkeypatch.setattr(verify_cli, "verify_inventory", verify_inventory)
    report = _report({"gpu1": "fail", "gpu2": "pass", "cpu1": "error", "gpu3": "skip"})
    fixed = verify_cli.repair(lambda hosts: list(hosts), report, batch=2)
    assert fixed.broken == ["gpu1", "cpu1"]
    loaded, deploy, options = calls["deploy"]
    assert loaded == ["gpu1", "cpu1"] and deploy == "site"
    assert options["limit"] == ("gpu1", "cpu1") and options["batch"] == 2
    assert options["data"] == {"nvidia_reboot_batch": 2}
    assert calls["verify"] == ["gpu1", "cpu1"]
    assert fixed.exit_code == 0
    assert fixed.to_json()["broken"] == ["gpu1", "cpu1"]


def test_nothing_broken_runs_nothing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("nothing may run")

    monkeypatch.setattr("provisioner.apply.run_deploy", boom)
    fixed = verify_cli.repair(boom, _report({"gpu1": "pass", "gpu2": "skip"}))
    assert fixed.broken == [] and fixed.exit_code == 0
    assert fixed.to_json() == {"broken": [], "apply": None, "after": None}


def test_exit_codes_say_what_is_left():
    still_broken = _report({"gpu1": "fail"})
    fine = _report({"gpu1": "pass"})
    assert verify_cli.Repair(["gpu1"], _run(["gpu1"]), fine).exit_code == 0
    assert verify_cli.Repair(["gpu1"], _run(["gpu1"]), still_broken).exit_code == 1
    assert verify_cli.Repair(["gpu1"], _run(["gpu1"], 1), fine).exit_code == 1
    # the apply left a reboot pending (nvidia_reboot = false): exit 3, as apply's own
    assert verify_cli.Repair(["gpu1"], _run(["gpu1"], 3), still_broken).exit_code == 3
