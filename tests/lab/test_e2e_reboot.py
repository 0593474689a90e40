"""A reboot that cannot brick a host, on the lab (issue 16 item 3).

A kernel update that the host would boot next but that has no NVIDIA module (installed without
its headers, so DKMS built nothing) must stop the reboot the provisioner would make: the host is
reported ``pending-reboot`` with the kernel and the operator's next step, and the health
collector flags it. Once the module is built, the same ``provision apply`` reboots the host.

The lab hosts share this machine's kernel, so the newer kernel is simulated the way a kernel
package leaves it: an image in ``/boot`` and a directory in ``/lib/modules``; the module is
built by the stand-in DKMS (``/usr/lib/nvidia-double/dkms-autoinstall``, standing in for
``dkms autoinstall -k KERNEL``). The reboot is real (systemd-nspawn restarts the host).
"""

from __future__ import annotations

import re

import pytest

from tests.lab.test_e2e import provision

pytestmark = pytest.mark.lab

HOST = "gpu1"
NEXT = "99.0.0-lab-next"  # sorts after this machine's kernel: the one the host boots next
COLLECTOR = "/usr/local/lib/provisioner/monitoring/provisioner_metrics.py"
MARKER = "/var/lib/provisioner/reboot-required"


def next_boot_metric(lab) -> dict[str, float]:
    """``provisioner_next_boot_module`` by kernel, from one run of the host's collector."""
    text = lab.ssh(HOST, f"python3 {COLLECTOR} --stdout").stdout
    return {
        kernel: float(value)
        for kernel, value in re.findall(
            r'^provisioner_next_boot_module\{kernel="([^"]+)"\} (\S+)$', text, re.M
        )
    }


def boot_id(lab) -> str:
    return lab.ssh(HOST, "cat /proc/sys/kernel/random/boot_id").stdout.strip()


def apply(lab):
    return provision("apply", str(lab.inventory), "--limit", HOST, "--data", "monitoring=true")


def test_no_reboot_into_a_kernel_without_the_module_until_it_is_built(lab):
    if HOST not in lab.hosts:
        pytest.skip(f"needs {HOST}")
    code, _, err = apply(lab)
    assert code == 0, err
    running = lab.ssh(HOST, "uname -r").stdout.strip()
    # the stand-in DKMS built the running kernel's module when the driver was installed
    lab.ssh(HOST, f"test -e /lib/modules/{running}/updates/dkms/nvidia.ko")
    try:
        lab.ssh(HOST, f"touch /boot/vmlinuz-{running} /boot/vmlinuz-{NEXT}")
        lab.ssh(HOST, f"mkdir -p /lib/modules/{NEXT}")
        assert next_boot_metric(lab) == {NEXT: 0}  # the timer's metric flags it
        before = boot_id(lab)
        lab.set_state(HOST, "driver-mismatch")  # a driver upgrade: the host needs a reboot
        code, result, err = apply(lab)
        assert code == 3, err  # pending reboot
        run = result["hosts"][HOST]
        assert run["status"] == "pending-reboot", run
        assert (
            f"kernel {NEXT}, which the host boots next, has no NVIDIA module"
            in (run["pending_reboot"])
        )
        assert (
            f"linux-headers-{NEXT}, then build it: dkms autoinstall -k {NEXT}"
            in (run["pending_reboot"])
        )
        assert "mismatch" in run["pending_reboot"]  # why it needs the reboot at all
        assert boot_id(lab) == before  # not rebooted
        assert f"kernel {NEXT}" in lab.ssh(HOST, f"cat {MARKER}").stdout

        # DKMS without the kernel's headers builds nothing
        lab.ssh(HOST, f"/usr/lib/nvidia-double/dkms-autoinstall -k {NEXT}")
        assert lab.ssh(
            HOST, f"test -e /lib/modules/{NEXT}/updates/dkms/nvidia.ko", False
        ).returncode
        # the headers (the running kernel's stand-in headers serve), then the build
        lab.ssh(HOST, f"ln -s /usr/src/linux-headers-{running} /lib/modules/{NEXT}/build")
        lab.ssh(HOST, f"/usr/lib/nvidia-double/dkms-autoinstall -k {NEXT}")
        assert next_boot_metric(lab) == {NEXT: 1}

        code, result, err = apply(lab)
        assert code == 0, err
        assert result["hosts"][HOST]["status"] == "changed", result["hosts"][HOST]
        assert boot_id(lab) != before  # the reboot went ahead
        assert lab.ssh(HOST, f"test -e {MARKER}", False).returncode  # marker gone
        smi = lab.ssh(HOST, "nvidia-smi -L", False)
        assert smi.returncode == 0, smi.stdout + smi.stderr  # the module loaded again
    finally:
        lab.ssh(
            HOST,
            f"rm -rf /boot/vmlinuz-{NEXT} /boot/vmlinuz-{running} /lib/modules/{NEXT}",
            check=False,
        )
        lab.set_state(HOST, "clear")


def test_apt_reads_the_unattended_upgrades_blacklist_of_the_held_driver(lab):
    """apt itself parses the drop-in (``apt-config dump``): every held driver package is in
    ``Unattended-Upgrade::Package-Blacklist`` as the entry unattended-upgrades matches it by
    (``re.match``), and nothing else of the host is."""
    if HOST not in lab.hosts:
        pytest.skip(f"needs {HOST}")
    code, _, err = apply(lab)
    assert code == 0, err
    dump = lab.ssh(HOST, "apt-config dump Unattended-Upgrade::Package-Blacklist").stdout
    patterns = re.findall(r'^Unattended-Upgrade::Package-Blacklist:: "(.+)";$', dump, re.M)
    held = set(lab.ssh(HOST, "apt-mark showhold").stdout.split())
    driver = {name for name in held if name.startswith(("nvidia-", "libnvidia-", "libcuda"))}
    assert driver, held
    assert sorted(patterns) == sorted(f"{name}$" for name in driver), dump
    installed = lab.ssh(HOST, "dpkg-query -W -f='${Package}\\n'").stdout.split()
    blacklisted = {name for name in installed if any(re.match(p, name) for p in patterns)}
    assert blacklisted == driver  # not the pinning package, the toolkit or anything else


def test_kernel_hold_holds_the_running_kernel_and_releases_only_its_own(lab):
    """``nvidia_hold_kernel`` on a real Debian host: apt-mark holds the running kernel's
    installed packages (here the stand-in headers the driver deploy installed, and a stand-in
    ``linux-image-<kernel>`` made on the host), records them, and releases exactly those when
    the key is false again; the operator's own hold on the image stays."""
    if HOST not in lab.hosts:
        pytest.skip(f"needs {HOST}")
    running = lab.ssh(HOST, "uname -r").stdout.strip()
    image, headers = f"linux-image-{running}", f"linux-headers-{running}"
    control = (
        f"Package: {image}\\nVersion: 1.0-lab\\nArchitecture: all\\nMaintainer: lab <lab@lab>\\n"
        "Description: TEST DOUBLE: a kernel image package (empty)\\n"
    )
    lab.ssh(
        HOST,
        f"rm -rf /tmp/kimg && mkdir -p /tmp/kimg/DEBIAN && printf '{control}' > "
        "/tmp/kimg/DEBIAN/control && dpkg-deb -b /tmp/kimg /tmp/kimg.deb >/dev/null && "
        f"dpkg -i /tmp/kimg.deb >/dev/null && apt-mark hold {image}",
    )
    try:
        code, _, err = provision(
            "apply", str(lab.inventory), "--limit", HOST, "--data", "nvidia_hold_kernel=true"
        )
        assert code == 0, err
        held = set(lab.ssh(HOST, "apt-mark showhold").stdout.split())
        assert {image, headers} <= held, held
        record = lab.ssh(HOST, "cat /var/lib/provisioner/kernel-hold").stdout.split()
        assert record == [headers]  # the image was held by the operator, not by us
        code, result, err = provision("apply", str(lab.inventory), "--limit", HOST)
        assert code == 0, err
        held = set(lab.ssh(HOST, "apt-mark showhold").stdout.split())
        assert image in held and headers not in held, held
        assert lab.ssh(HOST, "test -e /var/lib/provisioner/kernel-hold", False).returncode
    finally:
        lab.ssh(HOST, f"apt-mark unhold {image} {headers}; dpkg -r {image}", check=False)
