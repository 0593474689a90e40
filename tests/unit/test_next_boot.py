"""The next boot's NVIDIA module (provisioner.next_boot): the script run for real against a
made-up ``/boot`` and ``/lib/modules`` (paths rewritten into a temporary directory, ``modinfo``
a stand-in on PATH), its parser, and the one decision shared by the reboot path and the health
collector."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provisioner import next_boot
from provisioner.facts.nvidia import NextBootModule, SecureBoot

# TEST DOUBLE of kmod's modinfo: `modinfo -F FIELD FILE` prints the field's value from FILE's
# first lines (FIELD=value), as kmod prints one .modinfo field; nothing for a field not there
MODINFO = """#!/bin/sh
[ "$1" = -F ] || exit 1
sed -n "s/^$2=//p" "$3"
"""


def run_script(root: Path, modinfo: bool = True) -> list[str]:
    script = next_boot.FACT_SCRIPT.replace("/boot", f"{root}/boot").replace(
        "/lib/modules/", f"{root}/lib/modules/"
    )
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    if modinfo:
        (bin_dir / "modinfo").write_text(MODINFO)
        (bin_dir / "modinfo").chmod(0o755)
    # no mokutil and no EFI variables here: Secure Boot comes out as off (or unknown)
    path = f"{bin_dir}:/usr/bin:/bin"
    proc = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.splitlines()


def kernel(root: Path, release: str, headers: bool = False) -> Path:
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot" / f"vmlinuz-{release}").write_text("")
    modules = root / "lib" / "modules" / release
    modules.mkdir(parents=True, exist_ok=True)
    if headers:
        (modules / "build" / "include").mkdir(parents=True)  # what dkms tests for
    return modules


def module(
    where: Path, name: str = "nvidia.ko", version: str = "580.126.09", signature: str = ""
) -> None:
    where.mkdir(parents=True, exist_ok=True)
    text = f"version={version}\nlicense=Dual MIT/GPL\n"
    (where / name).write_text(text + (f"sig_id={signature}\n" if signature else ""))


def test_the_newest_kernel_image_is_the_next_boot_and_its_dkms_module_is_read(tmp_path):
    old = kernel(tmp_path, "6.1.0-9-amd64", headers=True)
    module(old / "updates" / "dkms")
    # version order, not text order: 6.1.0-10 is newer than 6.1.0-9
    new = kernel(tmp_path, "6.1.0-10-amd64", headers=True)
    module(new / "updates" / "dkms", "nvidia.ko.xz", signature="PKCS#7")
    (tmp_path / "boot" / "vmlinuz").write_text("")  # Ubuntu's symlink names are not kernels
    (tmp_path / "boot" / "config-6.1.0-11-amd64").write_text("")
    fact = next_boot.parse_fact_output(run_script(tmp_path))
    assert fact["kernel"] == "6.1.0-10-amd64"
    assert fact["headers"] is True and fact["modinfo"] is True
    assert fact["modules"] == [
        {
            "path": f"{tmp_path}/lib/modules/6.1.0-10-amd64/updates/dkms/nvidia.ko.xz",
            "version": "580.126.09",
            "signature": "PKCS#7",
        }
    ]
    assert next_boot.problem(fact, "580.126.09") is None


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("nvidia-current.ko", "nvidia-current-modeset.ko"),
        ("nvidia-current-open.ko.xz", "nvidia-current-open-modeset.ko.xz"),
    ],
)
def test_debians_own_driver_module_is_found_under_its_debian_name(tmp_path, name, other):
    """Debian's nvidia-kernel-dkms / nvidia-open-kernel-dkms install the module as
    nvidia-current(.ko) / nvidia-current-open (their dkms.conf; conformance record
    debian.module_name): a host on Debian's own driver has its next kernel's module found,
    while the packages' other modules are not taken for it."""
    where = kernel(tmp_path, "6.1.0-29-amd64", headers=True) / "updates" / "dkms"
    module(where, name, version="535.261.03")
    module(where, other, version="535.261.03")
    fact = next_boot.parse_fact_output(run_script(tmp_path))
    assert [Path(m["path"]).name for m in fact["modules"]] == [name]
    assert next_boot.problem(fact, "535.261.03") is None


def test_a_build_directory_without_include_is_not_headers(tmp_path):
    """dkms counts a kernel's headers as installed when /lib/modules/K/build/include exists."""
    (kernel(tmp_path, "6.1.0-29-amd64") / "build").mkdir()
    assert next_boot.parse_fact_output(run_script(tmp_path))["headers"] is False


def test_a_kernel_update_without_headers_has_no_module(tmp_path):
    module(kernel(tmp_path, "6.1.0-28-amd64", headers=True) / "updates" / "dkms")
    kernel(tmp_path, "6.1.0-29-amd64")
    # nvidia-drm.ko or nvidia-uvm.ko alone are not the module
    module(tmp_path / "lib" / "modules" / "6.1.0-29-amd64" / "updates" / "dkms", "nvidia-uvm.ko")
    fact = next_boot.parse_fact_output(run_script(tmp_path))
    assert fact["kernel"] == "6.1.0-29-amd64" and fact["modules"] == []
    reason, step = next_boot.problem(fact, "580.126.09", "linux-headers-6.1.0-29-amd64")
    assert reason == (
        "kernel 6.1.0-29-amd64, which the host boots next, has no NVIDIA module "
        "(a reboot would come up without the driver)"
    )
    assert step == (
        "install the kernel headers linux-headers-6.1.0-29-amd64, then build it: "
        "dkms autoinstall -k 6.1.0-29-amd64"
    )


def test_precompiled_and_el_locations_count(tmp_path):
    el = kernel(tmp_path, "5.14.0-503.el9.x86_64")
    # EL's rescue image is never the newest kernel
    (tmp_path / "boot" / "vmlinuz-0-rescue-0123456789abcdef").write_text("")
    module(el / "extra", "nvidia.ko.xz")
    fact = next_boot.parse_fact_output(run_script(tmp_path))
    assert [m["path"].split("/lib/modules/")[1] for m in fact["modules"]] == [
        "5.14.0-503.el9.x86_64/extra/nvidia.ko.xz"
    ]


def test_without_modinfo_the_version_and_signature_are_unknown_and_presence_counts(tmp_path):
    module(kernel(tmp_path, "6.1.0-28-amd64") / "updates" / "dkms")
    fact = next_boot.parse_fact_output(run_script(tmp_path, modinfo=False))
    assert fact["modinfo"] is False
    assert fact["modules"][0]["version"] is None and fact["modules"][0]["signature"] is None
    fact["secure_boot"] = {"enabled": True}
    assert next_boot.problem(fact, "580.126.09") is None


def test_no_kernel_image_decides_nothing(tmp_path):
    (tmp_path / "boot").mkdir()
    fact = next_boot.parse_fact_output(run_script(tmp_path))
    assert fact["kernel"] is None
    assert next_boot.problem(fact, "580.126.09") is None


def fact(modules, secure_boot=False, headers=True):
    return {
        "kernel": "6.8.0-50-generic",
        "headers": headers,
        "modinfo": True,
        "modules": modules,
        "secure_boot": {"enabled": secure_boot},
    }


DKMS = "/lib/modules/6.8.0-50-generic/updates/dkms/nvidia.ko.zst"
PRECOMPILED = "/lib/modules/6.8.0-50-generic/kernel/nvidia-580srv/nvidia.ko"


@pytest.mark.parametrize(
    ("modules", "secure_boot", "driver", "expected"),
    [
        ([{"path": DKMS, "version": "580.126.09", "signature": ""}], False, "580.126.09", None),
        # another driver's module (an old DKMS build): not the held driver
        (
            [{"path": DKMS, "version": "580.105.08", "signature": ""}],
            False,
            "580.126.09",
            "has NVIDIA module 580.105.08, not the installed driver 580.126.09",
        ),
        # one of two fits: enough
        (
            [
                {"path": DKMS, "version": "580.105.08", "signature": ""},
                {"path": PRECOMPILED, "version": "580.126.09", "signature": "PKCS#7"},
            ],
            True,
            "580.126.09",
            None,
        ),
        # Secure Boot: an unsigned module is rejected; a signed one loads
        (
            [{"path": DKMS, "version": "580.126.09", "signature": ""}],
            True,
            "580.126.09",
            "is not signed and Secure Boot is enabled",
        ),
        (
            [{"path": DKMS, "version": "580.126.09", "signature": "PKCS#7"}],
            True,
            "580.126.09",
            None,
        ),
        # Secure Boot off: unsigned is fine
        ([{"path": DKMS, "version": "580.126.09", "signature": ""}], None, "580.126.09", None),
        # no driver version to compare (the collector with NVML down): presence counts
        ([{"path": DKMS, "version": "580.105.08", "signature": ""}], False, None, None),
        ([], False, None, "has no NVIDIA module"),
    ],
)
def test_the_decision(modules, secure_boot, driver, expected):
    found = next_boot.problem(fact(modules, secure_boot), driver)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found[0]
        assert "dkms autoinstall -k 6.8.0-50-generic" in found[1]


def test_next_step_with_headers_installed_only_builds():
    reason, step = next_boot.problem(fact([]), "580.126.09")
    assert step == "build it: dkms autoinstall -k 6.8.0-50-generic"


def test_the_facts_use_the_shared_scripts():
    assert NextBootModule().command() == next_boot.FACT_SCRIPT
    assert SecureBoot().command() == next_boot.SECURE_BOOT_SCRIPT
    assert next_boot.SECURE_BOOT_SCRIPT in next_boot.FACT_SCRIPT
    value = NextBootModule().process(["kernel|6.1.0-28-amd64", "mokutil|SecureBoot enabled"])
    assert value["kernel"] == "6.1.0-28-amd64" and value["secure_boot"]["enabled"] is True
    assert NextBootModule().process([])["kernel"] is None


def test_messages_name_every_version_found_and_the_headers_step():
    modules = [
        {"path": DKMS, "version": "580.105.08", "signature": ""},
        {"path": PRECOMPILED, "version": "580.95.05", "signature": ""},
    ]
    reason, step = next_boot.problem(fact(modules, headers=False), "580.126.09", "linux-headers-X")
    assert reason == (
        "kernel 6.8.0-50-generic, which the host boots next, has NVIDIA module "
        "580.105.08, 580.95.05, not the installed driver 580.126.09"
    )
    assert step == "install the kernel headers linux-headers-X, then build it: " + (
        "dkms autoinstall -k 6.8.0-50-generic"
    )
    # with the kernel's headers there, only the build is left to do
    _, step = next_boot.problem(fact(modules, headers=True), "580.126.09", "linux-headers-X")
    assert step == "build it: dkms autoinstall -k 6.8.0-50-generic"
    unsigned = [{"path": DKMS, "version": "580.126.09", "signature": ""}]
    reason, step = next_boot.problem(fact(unsigned, secure_boot=True), "580.126.09")
    assert reason == (
        "kernel 6.8.0-50-generic's NVIDIA module is not signed and Secure Boot is enabled "
        "(the kernel would reject it: Key was rejected by service)"
    )
    assert step == (
        "set nvidia_mok_key and nvidia_mok_cert to an enrolled Machine Owner Key and apply "
        "again, or sign and rebuild it: dkms autoinstall -k 6.8.0-50-generic --force"
    )


def test_parse_keeps_modinfo_values_only_when_modinfo_ran():
    assert next_boot.parse_fact_output([]) == {
        "kernel": None,
        "headers": False,
        "modinfo": False,
        "modules": [],
        "secure_boot": {"enabled": None, "source": None, "detail": None},
    }
    line = "module|/lib/modules/k/updates/dkms/nvidia.ko|580.126.09|PKCS#7"
    without = next_boot.parse_fact_output(["kernel|k", "modinfo|no", line])
    assert without["modules"] == [
        {"path": "/lib/modules/k/updates/dkms/nvidia.ko", "version": None, "signature": None}
    ]
    with_ = next_boot.parse_fact_output(["kernel|k", "headers|yes", "modinfo|yes", line])
    assert with_["headers"] is True and with_["modinfo"] is True
    assert with_["modules"][0]["version"] == "580.126.09"
    assert with_["modules"][0]["signature"] == "PKCS#7"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # mokutil src/mokutil.c prints "SecureBoot enabled" / "SecureBoot disabled"
        (["mokutil|SecureBoot enabled", "efivar|0"], (True, "mokutil", "SecureBoot enabled")),
        (["mokutil|SecureBoot disabled"], (False, "mokutil", "SecureBoot disabled")),
        (
            ["mokutil|EFI variables are not supported on this system", "efivar|no-efi"],
            (False, "mokutil", "EFI variables are not supported on this system"),
        ),
        # without mokutil: the EFI variable's value byte
        (["efivar|1"], (True, "efivars", "SecureBoot=1")),
        (["efivar|0"], (False, "efivars", "SecureBoot=0")),
        (["efivar|no-efi"], (False, "efivars", "no EFI firmware")),
        (["efivar|"], (None, None, None)),
        ([], (None, None, None)),
    ],
)
def test_secure_boot_sources(lines, expected):
    state = next_boot.parse_secure_boot(lines)
    assert (state["enabled"], state["source"], state["detail"]) == expected
