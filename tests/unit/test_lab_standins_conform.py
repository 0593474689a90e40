"""The lab's stand-in NVIDIA packages (tests/lab/debs/packages.toml) checked against the
facts they copy, each with its source (tests/fixtures/packages/README.md, "Conformance records").

The stand-ins are TEST DOUBLES: what they may not copy (a real module build, real unit files
of NVIDIA's repository) is said in the records as NOT conforming; the lab test
tests/lab/test_real_driver.py covers that ground with Debian's real packages instead.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from provisioner import gpu_stack

ROOT = Path(__file__).resolve().parents[2]
STANDINS = {
    p["name"]: p
    for p in tomllib.loads((ROOT / "tests/lab/debs/packages.toml").read_text())["package"]
}
FLEET = tomllib.loads((ROOT / "tests/lab/fleet.toml").read_text())["mirror"]["nvidia"]


@pytest.mark.parametrize("distro", FLEET["distros"])
def test_standin_names_are_the_names_the_stack_installs(distro):
    target = gpu_stack.distro(distro)
    branch = FLEET["branch"]
    # driver meta packages and kernel modules, per flavour (NVIDIA's debian12/13 repository)
    for flavour in gpu_stack.FLAVOURS:
        assert target.driver_meta[flavour] in STANDINS
        assert target.kernel_module[flavour][0] in STANDINS
    # the branch lock: nvidia-driver-pinning-<branch> (Driver_Installation_Guide r590)
    assert target.pinning("@BRANCH@") in STANDINS
    # Fabric Manager: nvidia-fabricmanager from 580 (gpu-driver-container@06a208ca)
    assert target.fabricmanager_package(branch) in STANDINS
    assert "cuda-keyring" in STANDINS


def test_standin_versions_have_nvidias_debian_revision():
    # NVIDIA's debian12 repository versions its driver packages <upstream>-1 (apt-cache policy
    # output quoted in elFarto/nvidia-vaapi-driver#312: 560.28.03-1, 555.42.06-1, 550.90.07-1)
    for version in FLEET["driver_versions"]:
        assert re.fullmatch(r"\d{3}\.\d+\.\d+-1", version), version
        assert gpu_stack.branch_of(version) == FLEET["branch"]


def test_every_standin_driver_package_is_held_by_the_stack():
    target = gpu_stack.distro("debian12")
    driver_packages = [n for n, p in STANDINS.items() if p["per"] == "driver"]
    for name in driver_packages:
        concrete = name.replace("@BRANCH@", FLEET["branch"])
        excluded = gpu_stack.name_matches(concrete, target.hold_exclude)
        assert gpu_stack.name_matches(concrete, target.hold_globs) or excluded, concrete
