"""GPU facts: the parsers on the real nvidia-smi/lspci samples, the fact scripts run against
the nvidia-smi and lspci test doubles, and the doubles checked against the real samples.

The fixture-driven fact tests (pyinfra-testing) are in test_fixtures.py.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from provisioner import nvidia_smi
from provisioner.facts.gpu import NvidiaPciDevices, NvidiaSmi

try:
    from tests.doubles.nvidia_smi import (
        H100_80GB,
        L40S,
        NVIDIA_SMI_SCRIPT,
        install_lspci_double,
        install_nvidia_smi_double,
    )
except ModuleNotFoundError:  # the repository root is not on sys.path (pytest pythonpath)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.doubles.nvidia_smi import (
        H100_80GB,
        L40S,
        NVIDIA_SMI_SCRIPT,
        install_lspci_double,
        install_nvidia_smi_double,
    )

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"
DATE_LINE = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} {7}$")
MASKED_UUID = "GPU-00000000-0000-0000-0000-000000000000"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def sample_lines(name: str) -> list[str]:
    """A sample's lines without shell prompt/comment lines."""
    return [line for line in sample(name).splitlines() if not line.startswith(("$", "#"))]


# ---------------------------------------------------------------------------------------
# parsers on the real samples
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "driver", "cuda"),
    [
        ("h100-80gb-hbm3_590.txt", "590.48.01", "13.1"),
        ("h100-mig_590.txt", "590.48.01", "13.1"),
        ("l40s_595.txt", "595.80", "13.2"),
        ("h200_610.txt", "610.43.02", "13.3"),  # R610: KMD Version / CUDA UMD Version
        ("h100-80gb-hbm3_590_version.txt", "590.48.01", "13.1"),  # --version
        ("h200_610_version.txt", "610.43.02", "13.3"),  # --version, R610 ("Deprecated, ...")
    ],
)
def test_driver_info_from_every_header_wording(name: str, driver: str, cuda: str) -> None:
    assert nvidia_smi.parse_driver_info(sample(name)) == (driver, cuda)


def test_driver_info_without_cuda_in_header() -> None:
    # drivers before R410 printed no CUDA version in the header
    old = "| NVIDIA-SMI 384.130                Driver Version: 384.130                   |"
    assert nvidia_smi.parse_driver_info(old) == ("384.130", None)
    assert nvidia_smi.parse_driver_info("") == (None, None)


def test_query_csv_titanx_eight_gpus_in_its_own_field_order() -> None:
    fields = ("index", "uuid", "name", "temperature.gpu", "utilization.gpu", "memory.used")
    fields += ("memory.total",)
    rows, odd = nvidia_smi.parse_query_csv(
        sample_lines("titanx-x8_query-csv-noheader-nounits.txt"), fields
    )
    assert odd == []
    assert [row["index"] for row in rows] == [str(i) for i in range(8)]
    assert {row["name"] for row in rows} == {"GeForce GTX TITAN X"}
    assert {row["memory.total"] for row in rows} == {"12206"}
    assert rows[1]["uuid"] == "GPU-86fe97db-bf54-a056-4e8d-9b07e1a298e7"
    assert rows[1]["memory.used"] == "10032"


def test_query_csv_projection_rows() -> None:
    fields = ("index", "name", "uuid", "memory.total", "memory.used", "driver_version")
    fields += ("compute_cap", "pci.bus_id")
    rows, odd = nvidia_smi.parse_query_csv(sample_lines("query-gpu-projection_DERIVED.txt"), fields)
    assert odd == []
    assert [(r["name"], r["memory.total"], r["compute_cap"], r["pci.bus_id"]) for r in rows] == [
        ("NVIDIA H100 80GB HBM3", "81559", "9.0", "00000000:00:09.0"),
        ("NVIDIA H100 80GB HBM3", "81559", "9.0", "00000000:00:09.0"),
        ("NVIDIA L40S", "46068", "8.9", "00000000:01:00.0"),
    ]


def test_rtx4090_derived_csv_matches_its_xml() -> None:
    root = ElementTree.parse(SAMPLES / "rtx4090_535_q-x.xml").getroot()
    gpu_xml = root.find("gpu")
    assert gpu_xml is not None
    gpus, odd = nvidia_smi.parse_gpus(sample("rtx4090_535_query-csv_DERIVED.txt"))
    assert odd == []
    [gpu] = gpus
    assert gpu["name"] == gpu_xml.findtext("product_name")
    assert gpu["uuid"] == gpu_xml.findtext("uuid")
    assert f"{gpu['memory_total_mib']} MiB" == gpu_xml.findtext("fb_memory_usage/total")
    assert gpu["pci_bus_id"] == gpu_xml.findtext("pci/pci_bus_id")
    assert gpu_xml.findtext("mig_mode/current_mig") == "N/A"
    assert gpu["mig"] is None
    assert (root.findtext("driver_version"), root.findtext("cuda_version")) == ("535.86.05", "12.2")
    rows, _ = nvidia_smi.parse_query_csv(sample("rtx4090_535_query-csv_DERIVED.txt"))
    assert rows[0]["driver_version"] == root.findtext("driver_version")


def test_values_with_units_and_na_spellings() -> None:
    rows, _ = nvidia_smi.parse_query_csv(
        "0, X, GPU-1, 81559 MiB, [N/A], N/A, [Not Supported], 590.48.01"
    )
    gpu = nvidia_smi.gpu_from_row(rows[0])
    assert gpu is not None
    assert gpu["memory_total_mib"] == 81559
    assert (gpu["compute_cap"], gpu["pci_bus_id"], gpu["mig"]) == (None, None, None)


@pytest.mark.parametrize(
    ("rc", "text", "state"),
    [
        (9, "\n".join(sample_lines("err_driver-not-loaded.txt")), "no-driver"),
        (255, "\n".join(sample_lines("err_driver-not-loaded.txt")), "no-driver"),
        (9, "", "no-driver"),
        (18, "\n".join(sample_lines("err_nvml-version-mismatch.txt")[:2]), "driver-mismatch"),
        (18, "", "driver-mismatch"),
        (6, "No devices were found", "no-gpu"),
        (6, "", "no-gpu"),
        (15, "Unable to determine the device handle for GPU0000:41:00.0: Unknown Error", "error"),
        (124, "", "error"),
        (2, "", "error"),
    ],
)
def test_classify_failure(rc: int, text: str, state: str) -> None:
    failure = nvidia_smi.classify_failure(rc, text)
    assert failure is not None
    assert failure[0] == state
    if text:
        assert failure[1] == text.strip()
    elif state == "error":
        assert failure[1]  # an unknown failure always says something
    else:
        assert failure[1] is None


def test_classify_success_is_none() -> None:
    assert nvidia_smi.classify_failure(0, "0, NVIDIA L40S, GPU-1, 46068, 8.9, x, [N/A]") is None


def test_nvml_library_version_from_the_mismatch_sample() -> None:
    text = "\n".join(sample_lines("err_nvml-version-mismatch.txt"))
    assert nvidia_smi.nvml_library_version(text) == "535.161"


def test_lspci_all_classes_when_asked() -> None:
    lines = ["0000:84:00.0 0300: 10de:2684 (rev a1)", "0000:84:00.1 0403: 10de:22ba (rev a1)"]
    assert [d["class_id"] for d in nvidia_smi.parse_lspci(lines, classes=None)] == ["0300", "0403"]
    assert [d["class_id"] for d in nvidia_smi.parse_lspci(lines)] == ["0300"]


# ---------------------------------------------------------------------------------------
# the facts never raise
# ---------------------------------------------------------------------------------------


def _valid_fact(value: dict[str, Any]) -> bool:
    return (
        set(value) == {"state", "gpus", "driver_version", "cuda_version", "error"}
        and value["state"] in nvidia_smi.STATES
        and isinstance(value["gpus"], list)
        and (value["state"] == "ok") == bool(value["gpus"])
    )


def test_nvidia_smi_fact_survives_mangled_output() -> None:
    pool = [
        *sample("h100-mig_590.txt").splitlines(),
        *sample("err_nvml-version-mismatch.txt").splitlines(),
        *sample("titanx-x8_query-csv-noheader-nounits.txt").splitlines(),
        "##nvsmi query rc=0",
        "##nvsmi query rc=",
        "##nvsmi query rc=x9",
        "##nvsmi table rc=0",
        "##nvsmi table rc=-1",
        "0, A, B, C, D, E, F",
        "x, NVIDIA, GPU-1, 1, 1, 1, Enabled",
        ",,,,,,",
        "\x00\udcff",
        "",
    ]
    rng = random.Random(20240601)
    fact = NvidiaSmi()
    for _ in range(400):
        output = [rng.choice(pool) for _ in range(rng.randint(0, 25))]
        value = fact.process(output)
        assert _valid_fact(value), (output, value)


def test_nvidia_smi_fact_turns_a_parser_bug_into_state_error(monkeypatch) -> None:
    def broken(lines):
        raise RuntimeError("boom")

    monkeypatch.setattr(nvidia_smi, "parse_fact_output", broken)
    value = NvidiaSmi().process(["##nvsmi query rc=0"])
    assert value["state"] == "error"
    assert "boom" in value["error"]


def test_pci_fact_survives_a_parser_bug(monkeypatch) -> None:
    def broken(lines):
        raise RuntimeError("boom")

    monkeypatch.setattr(nvidia_smi, "parse_lspci", broken)
    assert NvidiaPciDevices().process(["0000:01:00.0 0302: 10de:20b2"]) == []


def test_fact_default_is_a_valid_error_state() -> None:
    assert NvidiaSmi.default()["state"] == "error"
    assert _valid_fact(NvidiaSmi.default())


# ---------------------------------------------------------------------------------------
# the nvidia-smi double against the real samples
# ---------------------------------------------------------------------------------------


class Double:
    """The nvidia-smi double installed in a temporary directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.conf = tmp_path / "conf"
        self.tmp = tmp_path

    def install(self, gpus: list[dict[str, Any]], **kwargs: Any) -> Double:
        install_nvidia_smi_double(self.bin, self.conf, gpus, **kwargs)
        return self

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "NVIDIA_SMI_DOUBLE_DIR": str(self.conf),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nvidia-smi", *args], env=self.env, capture_output=True, text=True, check=False
        )

    def fact(self) -> dict[str, Any]:
        """The NvidiaSmi fact's command run by sh, its output parsed by the fact."""
        done = subprocess.run(
            ["/bin/sh", "-c", NvidiaSmi().command()],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done
        return NvidiaSmi().process(done.stdout.splitlines())


@pytest.fixture
def double(tmp_path: Path) -> Double:
    return Double(tmp_path)


H100_SAMPLE = dict(H100_80GB, temperature_c=41, power_draw_w=69, power_limit_w=700)
H200_SAMPLE = {
    "index": 0,
    "name": "NVIDIA H200",
    "memory_total_mib": 143771,
    "compute_cap": "9.0",
    "pci_bus_id": "00000000:83:00.0",
    "uuid": MASKED_UUID,
    "mig": "Disabled",
    "temperature_c": 38,
    "power_draw_w": 83,
    "power_limit_w": 700,
}
# mig_devices: gpu|gi|ci|dev|profile|used|total|bar1 used|bar1 total|sm|ce|enc|dec|ofa|jpg|uuid
H100_MIG_DEVICES = [
    "0|2|0|0|3g.40gb|26|40448|0|24739|60|3|0|3|0|3|MIG-00000000-0000-0000-0000-000000000000",
    "0|3|0|1|2g.20gb|17|20096|0|12369|32|2|0|2|0|2|MIG-00000001-0000-0000-0000-000000000001",
    "0|9|0|2|1g.10gb|9|9984|0|6184|16|1|0|1|0|1|MIG-00000002-0000-0000-0000-000000000002",
    "0|10|0|3|1g.10gb|9|9984|0|6184|16|1|0|1|0|1|MIG-00000003-0000-0000-0000-000000000003",
]


def assert_same_table(got: str, want: str) -> None:
    """Byte-identical apart from the date on the first line."""
    got_lines, want_lines = got.split("\n"), want.split("\n")
    assert DATE_LINE.match(got_lines[0]), got_lines[0]
    assert DATE_LINE.match(want_lines[0]), want_lines[0]
    assert got_lines[1:] == want_lines[1:]


def test_double_says_it_is_a_double() -> None:
    first_comment = NVIDIA_SMI_SCRIPT.read_text().splitlines()[1]
    assert first_comment.startswith("# Test double for nvidia-smi")


def test_double_table_h100_is_the_real_table(double: Double) -> None:
    double.install([H100_SAMPLE], driver="590.48.01", cuda="13.1")
    done = double.run()
    assert done.returncode == 0
    assert_same_table(done.stdout, sample("h100-80gb-hbm3_590.txt"))


def test_double_table_l40s_is_the_real_table(double: Double) -> None:
    l40s = dict(L40S, temperature_c=64, power_draw_w=242, power_limit_w=350, utilization_pct=100)
    double.install(
        [l40s], driver="595.80", cuda="13.2", persistence_file=double.tmp / "no-persistenced"
    )
    assert_same_table(double.run().stdout, sample("l40s_595.txt"))


def test_double_table_r610_header_is_the_real_table(double: Double) -> None:
    double.install([H200_SAMPLE], driver="610.43.02", cuda="13.3", header="r610")
    assert_same_table(double.run().stdout, sample("h200_610.txt"))


def test_double_table_and_list_with_mig_are_the_real_ones(double: Double) -> None:
    h100_mig = dict(H100_SAMPLE, mig="Enabled", temperature_c=42, power_draw_w=98)
    h100_mig["memory_used_mib"] = 59
    double.install([h100_mig], driver="590.48.01", cuda="13.1", mig_devices=H100_MIG_DEVICES)
    table, listing = sample("h100-mig_590.txt").split("\n$ nvidia-smi -L\n")
    assert_same_table(double.run().stdout, table)
    assert double.run("-L").stdout == listing


def test_double_truncates_long_names_and_shows_geforce_columns(double: Double) -> None:
    rtx = {
        "index": 0,
        "name": "NVIDIA GeForce RTX 5060 Ti",
        "memory_total_mib": 16311,
        "compute_cap": "12.0",
        "pci_bus_id": "00000000:02:00.0",
        "uuid": "GPU-5",
        "mig": None,
        "fan_pct": 37,
        "temperature_c": 38,
        "power_draw_w": 19,
        "power_limit_w": 180,
    }
    pro = dict(rtx, index=1, name="NVIDIA RTX PRO 6000 Blackwell Server Edition", mig="Enabled")
    pro["pci_bus_id"] = "00000000:61:00.0"
    double.install([rtx, pro], persistence_file=double.tmp / "absent")
    lines = double.run().stdout.splitlines()
    # rows as printed by real R610 drivers for these cards (public nvidia-smi outputs)
    assert "|   0  NVIDIA GeForce RTX 5060 Ti     Off |   00000000:02:00.0 Off |" in lines[8]
    assert lines[8].endswith("|                  N/A |")
    assert lines[9] == (
        "| 37%   38C    P0             19W /  180W "
        "|       0MiB /  16311MiB |      0%      Default |"
    )
    assert lines[12].startswith(
        "|   1  NVIDIA RTX PRO 6000 Blac...    Off |   00000000:61:00.0 Off |"
    )
    assert lines[12].endswith("|                   On |")


def test_double_version_output_is_the_real_one(double: Double) -> None:
    double.install([H100_SAMPLE], driver="590.48.01", cuda="13.1")
    assert double.run("--version").stdout == sample("h100-80gb-hbm3_590_version.txt")
    double.install([H200_SAMPLE], driver="610.43.02", cuda="13.3", header="r610")
    assert double.run("--version").stdout == sample("h200_610_version.txt")


def test_double_query_csv_is_the_projected_one(double: Double) -> None:
    fields = "index,name,uuid,memory.total,memory.used,driver_version,compute_cap,pci.bus_id"
    want = sample_lines("query-gpu-projection_DERIVED.txt")
    double.install([H100_SAMPLE], driver="590.48.01", cuda="13.1")
    done = double.run(f"--query-gpu={fields}", "--format=csv,noheader,nounits")
    assert done.stdout == want[0] + "\n"
    double.install([L40S], driver="595.80", cuda="13.2")
    done = double.run("--query-gpu", fields, "--format", "csv,noheader,nounits")
    assert done.stdout == want[2] + "\n"


def test_double_query_csv_titanx_eight_gpus(double: Double) -> None:
    rows = sample_lines("titanx-x8_query-csv-noheader-nounits.txt")
    gpus = []
    for row in rows:
        index, uuid, name, temp, util, used, total = row.split(", ")
        gpus.append(
            {
                "index": int(index),
                "name": name,
                "memory_total_mib": int(total),
                "compute_cap": "5.2",
                "pci_bus_id": f"00000000:{4 + int(index):02X}:00.0",
                "uuid": uuid,
                "mig": None,
                "temperature_c": int(temp),
                "utilization_pct": int(util),
                "memory_used_mib": int(used),
            }
        )
    double.install(gpus)
    fields = "index,uuid,name,temperature.gpu,utilization.gpu,memory.used,memory.total"
    done = double.run(f"--query-gpu={fields}", "--format=csv,noheader,nounits")
    assert done.stdout.splitlines() == rows


def test_double_query_units_header_and_bad_field(double: Double) -> None:
    double.install([L40S], driver="595.80", cuda="13.2", persistence_file=double.tmp / "pm")
    fields = "index,memory.total,memory.free,persistence_mode,fabric.state,mig.mode.current"
    done = double.run(f"--query-gpu={fields}", "--format=csv")
    assert done.stdout.splitlines() == [
        "index, memory.total [MiB], memory.free [MiB], persistence_mode, fabric.state, "
        "mig.mode.current",
        "0, 46068 MiB, 46068 MiB, Disabled, N/A, [N/A]",
    ]
    (double.tmp / "pm").touch()
    done = double.run("--query-gpu=persistence_mode", "--format=csv,noheader")
    assert done.stdout == "Enabled\n"
    done = double.run("--query-gpu=index,kmd_version", "--format=csv")
    assert (done.returncode, done.stdout) == (
        2,
        'Field "kmd_version" is not a valid field to query.\n\n',
    )
    double.install([L40S], driver="610.43.02", cuda="13.3", header="r610")
    assert double.run("--query-gpu=kmd_version", "--format=csv,noheader").stdout == "610.43.02\n"


def test_double_selects_gpus_with_id(double: Double) -> None:
    second = dict(H100_80GB, index=1, pci_bus_id="00000000:0A:00.0", uuid="GPU-1")
    double.install([H100_80GB, second])
    assert double.run("-i", "1", "--query-gpu=uuid", "--format=csv,noheader").stdout == "GPU-1\n"
    assert double.run("--id=GPU-1", "-L").stdout.startswith("GPU 1: ")
    done = double.run("-i", "7", "-L")
    assert (done.returncode, done.stdout) == (6, "No devices were found\n")


def test_double_error_outputs_are_the_real_ones(double: Double) -> None:
    double.install([H100_80GB], state="no-driver")
    done = double.run()
    assert done.returncode == 9
    assert done.stdout.splitlines() == sample_lines("err_driver-not-loaded.txt")
    double.install([H100_80GB], driver="535.161.07", cuda="12.2", state="driver-mismatch")
    done = double.run("--query-gpu=index", "--format=csv")
    assert done.returncode == 18
    assert done.stdout.splitlines() == sample_lines("err_nvml-version-mismatch.txt")[:2]
    double.install([], state=None)
    done = double.run("-L")
    assert (done.returncode, done.stdout) == (6, "No devices were found\n")


def test_double_bad_arguments(double: Double) -> None:
    double.install([H100_80GB])
    done = double.run("--bogus")
    assert done.returncode == 2
    assert "nvidia-smi -h" in done.stdout


# ---------------------------------------------------------------------------------------
# the fact script against the double
# ---------------------------------------------------------------------------------------


def test_fact_round_trip_two_gpus(double: Double) -> None:
    second = dict(L40S, index=1, pci_bus_id="00000000:41:00.0", uuid="GPU-2")
    double.install([second, H100_80GB], driver="590.48.01", cuda="13.1")
    assert double.fact() == {
        "state": "ok",
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": MASKED_UUID,
                "memory_total_mib": 81559,
                "compute_cap": "9.0",
                "pci_bus_id": "00000000:00:09.0",
                "mig": "Disabled",
            },
            {
                "index": 1,
                "name": "NVIDIA L40S",
                "uuid": "GPU-2",
                "memory_total_mib": 46068,
                "compute_cap": "8.9",
                "pci_bus_id": "00000000:41:00.0",
                "mig": None,
            },
        ],
        "driver_version": "590.48.01",
        "cuda_version": "13.1",
        "error": None,
    }


def test_fact_round_trip_r610_and_mig(double: Double) -> None:
    double.install(
        [dict(H100_80GB, mig="Enabled")],
        driver="610.43.02",
        cuda="13.3",
        header="r610",
        mig_devices=H100_MIG_DEVICES,
    )
    value = double.fact()
    assert (value["state"], value["driver_version"], value["cuda_version"]) == (
        "ok",
        "610.43.02",
        "13.3",
    )
    assert value["gpus"][0]["mig"] == "Enabled"


def test_fact_round_trip_kernel_module_states(double: Double) -> None:
    loaded = double.tmp / "loaded-module-version"
    double.install([H100_80GB], driver="580.105.08", cuda="13.0", loaded_file=loaded)
    # no module loaded (e.g. installed, not rebooted yet)
    assert double.fact()["state"] == "no-driver"
    assert "couldn't communicate" in double.fact()["error"]
    # an older module still loaded after a package upgrade
    loaded.write_text("570.195.03\n")
    value = double.fact()
    assert value["state"] == "driver-mismatch"
    assert value["error"].splitlines() == [
        "Failed to initialize NVML: Driver/library version mismatch",
        "NVML library version: 580.105",
    ]
    # after the reboot
    loaded.write_text("580.105.08\n")
    assert double.fact()["state"] == "ok"


@pytest.mark.parametrize("state", ["no-driver", "driver-mismatch", "no-gpu"])
def test_fact_round_trip_forced_states(double: Double, state: str) -> None:
    double.install([H100_80GB], state=state)
    value = double.fact()
    assert value["state"] == state
    assert value["gpus"] == []


def test_fact_round_trip_without_gpus(double: Double) -> None:
    double.install([])
    assert double.fact()["state"] == "no-gpu"


def test_fact_round_trip_absent_binary(tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    done = subprocess.run(
        ["/bin/sh", "-c", NvidiaSmi().command()],
        env={"PATH": str(empty)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "##nvsmi absent\n")
    assert NvidiaSmi().process(done.stdout.splitlines()) == nvidia_smi.result("no-driver")


# ---------------------------------------------------------------------------------------
# the lspci double and the NvidiaPciDevices fact
# ---------------------------------------------------------------------------------------

HGX = [
    "0000:05:00.0 0680 10de:22a3 a1",
    "0000:18:00.0 0302 10de:2330 a1",
    "0000:18:00.1 0403 10de:22ba -",
    "0000:00:02.0 0300 8086:46a6 0c",
    "3a:00.0 0302 10DE:2330 a1",
]


def _lspci(tmp_path: Path, *args: str) -> str:
    data = tmp_path / "lspci-data"
    install_lspci_double(tmp_path / "bin", data, HGX)
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LSPCI_DOUBLE_FILE": str(data),
    }
    done = subprocess.run(["lspci", *args], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done
    return done.stdout


def test_lspci_double_formats(tmp_path: Path) -> None:
    assert _lspci(tmp_path, "-n", "-D", "-d", "10de:").splitlines() == [
        "0000:05:00.0 0680: 10de:22a3 (rev a1)",
        "0000:18:00.0 0302: 10de:2330 (rev a1)",
        "0000:18:00.1 0403: 10de:22ba",
        "0000:3a:00.0 0302: 10de:2330 (rev a1)",
    ]
    assert _lspci(tmp_path, "-nd10de:2330").splitlines() == [
        "18:00.0 0302: 10de:2330 (rev a1)",
        "3a:00.0 0302: 10de:2330 (rev a1)",
    ]
    assert _lspci(tmp_path, "-Dnn", "-d", "::0680").splitlines() == [
        "0000:05:00.0 Bridge [0680]: NVIDIA Corporation Device [10de:22a3] (rev a1)",
    ]
    assert _lspci(tmp_path, "-d", "8086:").splitlines() == [
        "00:02.0 VGA compatible controller: Intel Corporation Device 46a6 (rev 0c)",
    ]


def test_pci_fact_round_trip_with_the_lspci_double(tmp_path: Path) -> None:
    data = tmp_path / "lspci-data"
    install_lspci_double(tmp_path / "bin", data, HGX)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env["LSPCI_DOUBLE_FILE"] = str(data)
    done = subprocess.run(
        ["/bin/sh", "-c", NvidiaPciDevices().command()],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert NvidiaPciDevices().process(done.stdout.splitlines()) == [
        {"slot": "0000:05:00.0", "class_id": "0680", "vendor_id": "10de", "device_id": "22a3"},
        {"slot": "0000:18:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"},
        {"slot": "0000:3a:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"},
    ]


@pytest.mark.skipif(
    any(Path(d, "lspci").exists() for d in ("/usr/sbin", "/sbin")),
    reason="the fact adds /usr/sbin and /sbin to PATH, where this machine has an lspci",
)
@pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir(), reason="no PCI sysfs here")
def test_pci_fact_without_lspci_reads_sysfs(tmp_path: Path) -> None:
    """A minimal image without pciutils: the fact lists the PCI functions from sysfs, in
    lspci's `-n -D` shape, so a GPU host is not planned as CPU-only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cut").symlink_to(shutil.which("cut"))
    done = subprocess.run(
        ["/bin/sh", "-c", NvidiaPciDevices().command()],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    devices = Path("/sys/bus/pci/devices")
    expected = sorted(
        f"{d.name} {(d / 'class').read_text()[2:6]}: {(d / 'vendor').read_text()[2:6]}:"
        f"{(d / 'device').read_text()[2:6]}"
        for d in devices.iterdir()
        if (d / "vendor").exists()
    )
    assert sorted(done.stdout.splitlines()) == expected
    assert NvidiaPciDevices().process(done.stdout.splitlines()) == nvidia_smi.parse_lspci(
        done.stdout
    )
    nvidia = "0000:17:00.0 0302: 10de:2330"  # what an H100 looks like there
    assert NvidiaPciDevices().process([nvidia]) == [
        {"slot": "0000:17:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"}
    ]
