"""The apply runner's reading of pyinfra's --json results and of pending reboots."""

from __future__ import annotations

import io

from provisioner.apply import HostRun, RunResult, _relay_stderr, parse_results, pyinfra_command

RAW = {
    "plan": [],
    "results": {
        "operations": [
            {"name": "a", "success": ["h1"], "no_change": ["h2", "h3"], "error": []},
            {"name": "b", "success": [], "no_change": ["h1", "h2"], "error": ["h3"]},
        ],
        "failed_hosts": ["h3"],
    },
}


def test_parse_results_per_host():
    hosts, failed = parse_results(RAW, ["h1", "h2", "h3"])
    assert hosts["h1"].changed == ["a"] and hosts["h1"].status == "changed"
    assert hosts["h2"].status == "unchanged" and len(hosts["h2"].unchanged) == 2
    assert hosts["h3"].failed == ["b"] and hosts["h3"].status == "failed"
    assert failed == ["h3"]


def test_dry_run_plan_counts_as_would_change():
    raw = {"plan": [{"name": "a", "hosts_with_change": ["h2"]}], "results": None}
    hosts, failed = parse_results(raw, ["h1", "h2"])
    assert hosts["h2"].changed == ["a"] and hosts["h1"].changed == [] and failed == []


def test_pyinfra_log_lines_are_relayed(capsys):
    stream = io.StringIO("--> Starting operation: x\n    [gpu1] Success\n")
    _relay_stderr(stream)
    assert capsys.readouterr().err == "--> Starting operation: x\n    [gpu1] Success\n"


def test_exit_codes():
    ok = RunResult("site", False, 0, {"h": HostRun(changed=["a"])}, [], {})
    assert ok.exit_code == 0
    pending = RunResult("site", False, 0, {"h": HostRun(pending_reboot="why")}, [], {})
    assert pending.exit_code == 3 and pending.to_json()["hosts"]["h"]["status"] == "pending-reboot"
    assert any("PENDING REBOOT" in line for line in pending.advice())
    failed = RunResult("site", False, 1, {"h": HostRun(failed=["a"])}, ["h"], {})
    assert failed.exit_code == 1 and "--limit h" in failed.advice()[0]


def test_pyinfra_command_dry_never_passes_yes():
    class Host:
        name = "gpu1"

    class Loaded:
        source = "inventories/prod.py"
        hosts = [Host()]

        class inventory:  # noqa: N801 (stands for pyinfra's Inventory)
            groups: dict = {}

    dry = pyinfra_command(
        Loaded(), "site", dry=True, limit=("gpu*",), data={"nvidia_reboot": False}
    )
    assert "--dry" in dry and "-y" not in dry
    assert dry[dry.index("--limit") + 1] == "gpu1"
    assert dry[dry.index("--data") + 1] == "nvidia_reboot=false"
    real = pyinfra_command(Loaded(), "site", batch=2)
    assert "-y" in real and real[real.index("--parallel") + 1] == "2"


def test_the_record_of_a_successful_apply_is_not_a_change():
    """With monitoring, the last operation writes the time of the run on every run: a converged
    host must still be reported unchanged (and a failing one still failed)."""
    record = "provisioner | Record the successful apply | Record the successful apply (monitoring)"
    raw = {
        "results": {
            "operations": [
                {"name": "a", "success": [], "no_change": ["h1", "h2"], "error": []},
                {"name": record, "success": ["h1"], "no_change": [], "error": ["h2"]},
            ],
            "failed_hosts": [],
        }
    }
    hosts, failed = parse_results(raw, ["h1", "h2"])
    assert hosts["h1"].status == "unchanged" and hosts["h1"].changed == []
    assert hosts["h2"].status == "unchanged"  # its failure to record is not a provisioning error
