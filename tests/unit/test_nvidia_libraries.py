"""The NVIDIA user-space libraries are held with the driver (issue 17: ``libnvidia-*`` missing
from the hold list survived the suite, because no double had those libraries).

The libraries and their real names per distribution are data with their sources
(tests/doubles/nvidia_libraries.toml). An unattended upgrade that moves them ahead of the
loaded kernel module is what breaks NVML ("Driver/library version mismatch"): GpuHostDouble
installs them with the driver and reports the NVML version of its ``nvml`` package.
"""

from __future__ import annotations

import fnmatch

import pytest
from test_gpu_stack_deploy import APT, DISTROS, apply
from test_gpu_stack_double import LIBRARIES, GpuHostDouble, install_doubles, library_family

from provisioner import gpu_stack, nvidia_smi
from provisioner.facts.nvidia import STACK_PACKAGE_GLOBS

BRANCH = "580"
NEWER = "580.142.00"  # a later 580 release, published after the host converged


def libraries(distro: str) -> list[str]:
    return [lib.format(branch=BRANCH) for lib in library_family(distro)["libraries"]]


@pytest.fixture
def doubles(monkeypatch):
    return install_doubles(monkeypatch)


def test_every_library_family_names_its_source():
    for name, family in LIBRARIES.items():
        assert family["source"] or family["unverified"], name
        if family["libraries"]:
            assert family["source"] and family["nvml"], name
            assert family["nvml"] in family["libraries"], name


@pytest.mark.parametrize("distro", sorted(APT))
def test_the_package_fact_sees_every_library(distro):
    for lib in libraries(distro):
        assert any(fnmatch.fnmatchcase(lib, glob) for glob in STACK_PACKAGE_GLOBS), lib


@pytest.mark.parametrize("distro", sorted(APT))
def test_hold_list_covers_the_libraries_by_their_real_names(distro):
    target = gpu_stack.distro(distro)
    installed = ["nvidia-open", "nvidia-driver", *target.kernel_module["open"][:1]]
    fact = {
        "packages": [
            {"name": name, "version": "580.126.09-1", "held": False}
            for name in [*installed, *libraries(distro)]
        ]
    }
    held = gpu_stack.packages_to_hold(target, fact)
    assert set(libraries(distro)) <= set(held), held
    assert set(installed) <= set(held)


@pytest.mark.parametrize("distro", DISTROS)
def test_unattended_upgrade_moves_nothing_after_apply(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"a": host})
    for lib in libraries(distro):  # installed with the driver, and held
        assert host.packages[lib] == {
            "version": host.packages["nvidia-driver"]["version"],
            "held": True,
        }
    moved = host.unattended_upgrade(NEWER)
    assert moved == []
    smi = nvidia_smi.parse_fact_output(host.fact_smi())
    assert smi["state"] == "ok", smi


@pytest.mark.parametrize("distro", sorted(APT))
def test_the_double_shows_what_the_holds_prevent(doubles, distro):
    """Without holds, the newer release moves the driver and its libraries while the old module
    stays loaded: NVML reports the mismatch until the next apply reboots into the new module."""
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"a": host})
    for package in host.packages.values():
        package["held"] = False
    moved = host.unattended_upgrade(NEWER)
    assert set(libraries(distro)) | {"nvidia-driver"} <= set(moved)
    assert nvidia_smi.parse_fact_output(host.fact_smi())["state"] == "driver-mismatch"
    apply(doubles, {"a": host})
    assert nvidia_smi.parse_fact_output(host.fact_smi())["state"] == "ok"
    assert all(host.packages[lib]["held"] for lib in libraries(distro))


@pytest.mark.parametrize("distro", sorted(APT))
def test_exact_dependencies_keep_unheld_libraries_with_the_held_driver(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"a": host})
    for lib in libraries(distro):
        host.packages[lib]["held"] = False
    assert host.unattended_upgrade(NEWER) == []  # they need nvidia-* (= version), which is held


def test_the_lab_repository_builds_the_debian_libraries_and_they_are_held():
    """tests/lab/debs/packages.toml carries the same libraries, which debian12 holds."""
    import tomllib
    from pathlib import Path

    spec = tomllib.loads(
        (Path(__file__).resolve().parents[1] / "lab" / "debs" / "packages.toml").read_text()
    )
    built = {p["name"]: p for p in spec["package"]}
    wanted = libraries("debian12")
    assert set(wanted) <= set(built), sorted(built)
    assert "libnvidia-ml1 (= @VERSION@)" in built["nvidia-smi"]["depends"]
    assert "libnvidia-ptxjitcompiler1 (= @VERSION@)" in built["libcuda1"]["depends"]
    # the NVML version the nvidia-smi double reports comes from the library package
    assert built["libnvidia-ml1"].get("postinst") == "nvidia-smi.postinst"
    fact = {"packages": [{"name": n, "version": "580.126.09-1", "held": False} for n in built]}
    held = gpu_stack.packages_to_hold(gpu_stack.distro("debian12"), fact)
    assert set(wanted) <= set(held)
