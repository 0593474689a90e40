"""provision verify without a host: the report's renderings and exit code, the parsers the
checks use, and what the runner derives from pyinfra connection data."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from provisioner.verify import parse
from provisioner.verify.report import CheckResult, VerifyReport
from provisioner.verify.runner import (
    VerifyError,
    VerifyTarget,
    alias_for,
    host_spec,
    prepare,
    ssh_config_block,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


def _report() -> VerifyReport:
    results = [
        CheckResult("gpu-1", "driver", "nvidia_smi_answers", "pass", "gpu-1: driver 580.105.08"),
        CheckResult("gpu-1", "cuda", "nvcc_version", "skip", "CUDA toolkit not wanted"),
        CheckResult("gpu-1", "ollama", "models_present", "pass"),
        CheckResult(
            "gpu-2",
            "driver",
            "nvidia_smi_answers",
            "fail",
            "gpu-2: nvidia-smi: expected state ok, got driver-mismatch",
        ),
        CheckResult(
            "gpu-2", "driver", "gpu_count", "skip", "gpu_count is not set in the inventory"
        ),
        CheckResult("gpu-2", "ollama", "generate", "error", "RuntimeError: connection dropped"),
        CheckResult("cpu-1", "driver", "nvidia_smi_answers", "skip", "cpu-only host (gpu: false)"),
        CheckResult("cpu-1", "pytorch", "compute", "pass"),
    ]
    return VerifyReport(hosts=["gpu-1", "gpu-2", "cpu-1"], results=results)


def _table_text(report: VerifyReport) -> list[list[str]]:
    console = Console(width=200, record=True, color_system=None)
    console.print(report.table())
    rows = []
    for line in console.export_text().splitlines():
        cells = [c.strip() for c in line.strip("│┃").split("│")]
        if len(cells) > 3 and cells[0] in report.hosts:
            rows.append(cells)
    return rows


def test_host_and_layer_status_and_exit_code() -> None:
    report = _report()
    assert [report.host_status(h) for h in report.hosts] == ["pass", "fail", "pass"]
    assert report.layer_status("gpu-1", "cuda") == "skip"
    assert report.layer_status("gpu-1", "pytorch") is None
    assert report.layer_status("gpu-2", "driver") == "fail"
    assert report.layer_status("gpu-2", "ollama") == "error"
    assert report.exit_code == 1
    passing = VerifyReport(["gpu-1", "cpu-1"], [r for r in report.results if r.host != "gpu-2"])
    assert passing.exit_code == 0  # skips are not failures


def test_host_without_any_result_fails() -> None:
    report = VerifyReport(["a", "b"], [CheckResult("a", "host", "reachable", "pass")])
    assert report.host_status("b") == "fail"
    assert report.exit_code == 1
    assert "FAIL b\n    no check ran on this host" in report.failures()


def test_run_level_problem_fails_the_run() -> None:
    report = VerifyReport(
        ["a"],
        [CheckResult("a", "host", "reachable", "pass")],
        problems=["pytest exited with status 3"],
    )
    assert report.exit_code == 1
    assert "pytest exited with status 3" in report.failures()


def test_table_json_and_junit_agree() -> None:
    report = _report()
    document = report.to_json()
    assert json.loads(json.dumps(document)) == document
    assert document["summary"]["failed_hosts"] == ["gpu-2"]
    assert document["summary"]["checks"] == {"pass": 3, "fail": 1, "skip": 3, "error": 1}
    assert document["summary"]["exit_code"] == 1

    suites = {s.get("name"): s for s in ET.fromstring(report.junit_xml()).iter("testsuite")}
    assert list(suites) == report.hosts
    rows = {cells[0]: cells for cells in _table_text(report)}
    layers = report.layers()
    for host, entry in document["hosts"].items():
        cases = suites[host].findall("testcase")
        assert len(cases) == len(entry["checks"])
        for case, check in zip(cases, entry["checks"], strict=True):
            assert case.get("classname") == f"{host}.{check['layer']}"
            assert case.get("name") == check["check"]
            kind = {c.tag for c in case}
            expected = {"pass": set(), "fail": {"failure"}, "skip": {"skipped"}, "error": {"error"}}
            assert kind == expected[check["status"]]
            if check["status"] != "pass":
                assert case[0].get("message") == check["message"]
        for i, layer in enumerate(layers):
            assert rows[host][1 + i] == (report.layer_status(host, layer) or "-")
        assert rows[host][-1] == entry["status"]


def test_failures_name_host_check_and_message() -> None:
    text = _report().failures()
    assert (
        "FAIL gpu-2 driver/nvidia_smi_answers\n"
        "    gpu-2: nvidia-smi: expected state ok, got driver-mismatch" in text
    )
    assert "ERROR gpu-2 ollama/generate\n    RuntimeError: connection dropped" in text
    assert "gpu-1" not in text and "cpu-1" not in text


def test_from_results_orders_by_host_layer_and_check_order() -> None:
    raw = [
        {"host": "b", "layer": "ollama", "check": "x", "status": "pass", "order": 9},
        {"host": "a", "layer": "ollama", "check": "y", "status": "pass", "order": 5},
        {
            "host": "a",
            "layer": "driver",
            "check": "z",
            "status": "skip",
            "message": "m",
            "order": 7,
        },
        {"host": "a", "layer": "ollama", "check": "w", "status": "pass", "order": 4},
    ]
    report = VerifyReport.from_results(["a", "b"], raw)
    assert [(r.host, r.check) for r in report.results] == [
        ("a", "z"),
        ("a", "w"),
        ("a", "y"),
        ("b", "x"),
    ]


# -- parsers -----------------------------------------------------------------------------------


def test_tcp_listeners_from_proc_net() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999\n"
        "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
        "   2: 0100007F:2CAA 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000   999\n"
    )
    tcp6 = (
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:2CAA 00000000000000000000000000000000:0000 0A\n"
        "   1: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A\n"
        "   2: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A\n"
    )
    assert parse.tcp_listeners(tcp + tcp6) == [
        ("127.0.0.1", 11434),
        ("0.0.0.0", 22),
        ("::", 11434),
        ("::1", 443),
        ("127.0.0.1", 8080),
    ]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("ollama version is 0.32.15\n", "0.32.15"),
        (
            "Warning: could not connect to a running Ollama instance\n"
            "Warning: client version is 0.32.15\n",
            "0.32.15",
        ),
        ("ollama version is 0.31.0\nWarning: client version is 0.32.15\n", "0.32.15"),
        ("sh: 1: ollama: not found\n", None),
    ],
)
def test_ollama_version(text: str, version: str | None) -> None:
    assert parse.ollama_version(text) == version


def test_nvcc_and_module_and_package_versions() -> None:
    nvcc = (
        "nvcc: NVIDIA (R) Cuda compiler driver\n"
        "Cuda compilation tools, release 12.8, V12.8.93\n"
        "Build cuda_12.8.r12.8/compiler.35583870_0\n"
    )
    assert parse.nvcc_release(nvcc) == "12.8"
    assert parse.same_version("580.105", "580.105.08") and not parse.same_version(
        "580.95.05", "580.105.08"
    )


def test_df_available() -> None:
    df = (
        "Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
        "/dev/sda1        102400000  2048000  99000000       3% /var\n"
    )
    assert parse.df_available_bytes(df) == 99000000 * 1024
    assert parse.df_available_bytes("df: /nope: No such file or directory\n") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 11434)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:9", ("::1", 9)),
        ("::", ("::", 11434)),
        ("http://10.0.0.5:1234", ("10.0.0.5", 1234)),
    ],
)
def test_split_host_port(value: str, expected: tuple[str, int]) -> None:
    assert parse.split_host_port(value) == expected


# -- runner inputs -------------------------------------------------------------------------------


def test_ssh_config_block_from_pyinfra_connection_data(tmp_path: Path) -> None:
    target = VerifyTarget(
        "gpu-1.example.com",
        connection={
            "ssh_hostname": "192.0.2.10",
            "ssh_port": 2222,
            "ssh_user": "ops",
            "ssh_key": "~/.ssh/id ed25519",
            "ssh_known_hosts_file": "/etc/provision/known_hosts",
            "ssh_strict_host_key_checking": "yes",
        },
    )
    block = ssh_config_block("gpu-1.example.com", target, tmp_path)
    assert block.splitlines() == [
        "Host gpu-1.example.com",
        "  HostName 192.0.2.10",
        "  Port 2222",
        "  User ops",
        '  IdentityFile "~/.ssh/id ed25519"',
        "  IdentitiesOnly yes",
        "  UserKnownHostsFile /etc/provision/known_hosts",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  ServerAliveInterval 15",
        f"  ControlPath {tmp_path}/cm-%C",
    ]
    # pyinfra's default for host keys is accept-new; a vagrant-style "no" passes through
    assert "StrictHostKeyChecking accept-new" in ssh_config_block("h", VerifyTarget("h"))
    assert "StrictHostKeyChecking no" in ssh_config_block(
        "h", VerifyTarget("h", connection={"ssh_strict_host_key_checking": "off"})
    )
    with pytest.raises(VerifyError, match="cannot go into an ssh_config"):
        ssh_config_block("h", VerifyTarget("h", connection={"ssh_user": "a\nProxyCommand x"}))


def test_specs_aliases_and_expectations(tmp_path: Path) -> None:
    targets = [
        VerifyTarget(
            "@local", data={"gpu": False, "ssh_user": "x", "not_a_key": 1}, plan={"models": []}
        ),
        VerifyTarget(
            "@vagrant/ubuntu 22", connection={"ssh_hostname": "127.0.0.1", "ssh_port": 2200}
        ),
        VerifyTarget(
            "@vagrant/ubuntu-22", connection={"ssh_hostname": "127.0.0.1", "ssh_port": 2201}
        ),
        VerifyTarget("@docker/abc123"),
    ]
    specs, ssh_config, expect = prepare(targets, tmp_path)
    assert specs == [
        "local://",
        "ssh://vagrant-ubuntu-22",
        "ssh://vagrant-ubuntu-22-2",
        "docker://abc123",
    ]
    assert ssh_config is not None and ssh_config.read_text().count("Host ") == 2
    document = json.loads(expect.read_text())
    assert document["hosts"]["local://"] == {
        "name": "@local",
        "data": {"gpu": False},
        "plan": {"models": []},
        "facts": None,
    }
    assert document["hosts"]["ssh://vagrant-ubuntu-22-2"]["name"] == "@vagrant/ubuntu-22"
    assert oct(expect.stat().st_mode & 0o777) == "0o600"


def test_unsupported_targets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="@chroot/x"):
        host_spec(VerifyTarget("@chroot/x"), "chroot-x")
    with pytest.raises(VerifyError, match="listed twice"):
        prepare([VerifyTarget("a"), VerifyTarget("a")], tmp_path)
    assert alias_for("@@", set()) == "host"
