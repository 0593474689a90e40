"""The kernel a host boots next, and whether it has an NVIDIA module to load (pure, stdlib only).

One implementation for both sides: the control side's ``NextBootModule`` fact runs
:data:`FACT_SCRIPT` and parses it with :func:`parse_fact_output` before any reboot the
provisioner makes (``operations.nvidia.reboot_if_needed``), and the health collector on the host
(``templates/monitoring/provisioner_metrics.py``, which ships this file next to it) runs the same
script every minute for ``provisioner_next_boot_module``. :func:`problem` is the one decision.

The rule, kept simple on purpose (docs/monitoring.md, "A reboot that cannot brick a host"):

* **the next kernel** is the newest ``/boot/vmlinuz-*`` by version order (``sort -V``): kernel
  packages install their image there and point the boot loader's default at the newest one
  (Debian/Ubuntu ``update-grub``, EL ``grubby --set-default`` through ``kernel-install``). A
  boot loader pinned by hand to an older entry is not followed. No image in ``/boot`` (a
  container, a host booting another way): the next kernel is unknown and nothing is decided;
* **its NVIDIA module** is any file of :data:`MODULE_NAMES` (``nvidia.ko``, or Debian's own
  packages' ``nvidia-current.ko`` / ``nvidia-current-open.ko``), plain or ``.xz``/``.zst``/``.gz``,
  under ``/lib/modules/<kernel>/``: DKMS installs it in ``updates/dkms/`` (Debian, Ubuntu),
  ``extra/`` (EL); precompiled packages in their own directory. Its version and signature
  come from ``modinfo -F version`` / ``-F sig_id`` where ``modinfo`` (kmod) exists (kmod lists
  ``sig_id`` only for a module with an appended signature; ``signer`` can be empty for a
  PKCS#7 signature when kmod was built without a crypto library). Its **headers** are there
  when ``/lib/modules/<kernel>/build/include`` exists, the test dkms itself makes;
* it **fits** when one of them is the held driver's version (or its version cannot be read)
  and, with Secure Boot enforcing, is signed (``modinfo`` gives a ``sig_id``).

Python >= 3.9, no third-party imports: the host runs this file with its own python3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# the SecureBoot EFI variable: 4 attribute bytes, then 1 (enforcing) or 0
SECURE_BOOT_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"

# Whether UEFI Secure Boot is enforcing: ``mokutil --sb-state`` (package mokutil), else the
# SecureBoot EFI variable. Lines ``mokutil|...`` and ``efivar|...``; exit status 0.
SECURE_BOOT_SCRIPT = (
    'PATH="$PATH:/usr/sbin:/sbin:/usr/bin"; '
    "if command -v mokutil >/dev/null 2>&1; then "
    "mokutil --sb-state 2>&1 | sed 's/^/mokutil|/'; fi; "
    f"if [ -r {SECURE_BOOT_EFIVAR} ]; then "
    f"printf 'efivar|%s\\n' \"$(od -An -tu1 -j4 -N1 {SECURE_BOOT_EFIVAR} | tr -d ' ')\"; "
    "elif [ ! -d /sys/firmware/efi ]; then echo 'efivar|no-efi'; fi; true"
)

# The file names (without .ko) of the NVIDIA kernel module: NVIDIA's packages keep the built
# name nvidia; Debian's own nvidia-kernel-dkms and nvidia-open-kernel-dkms install it as
# nvidia-current and nvidia-current-open (their dkms.conf DEST_MODULE_NAME[0]="$PACKAGE_NAME";
# tests/conformance/gpu_stack/records.toml, debian.module_name). Not nvidia-current-modeset,
# -drm, -uvm: those are the other modules of the same packages.
MODULE_NAMES = ("nvidia", "nvidia-current", "nvidia-current-open")

# The next kernel, its headers, and its NVIDIA modules: lines ``kernel|K``, ``headers|yes``,
# ``modinfo|yes|no``, ``module|PATH|VERSION|SIG_ID``, then the Secure Boot lines. Exit status 0.
FACT_SCRIPT = " ".join(
    (
        'PATH="$PATH:/usr/sbin:/sbin";',
        "k=$(ls -1 /boot 2>/dev/null | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1);",
        'echo "kernel|$k";',
        'if [ -n "$k" ]; then',
        '[ -e "/lib/modules/$k/build/include" ] && echo "headers|yes";',
        'm=no; command -v modinfo >/dev/null 2>&1 && m=yes; echo "modinfo|$m";',
        'find "/lib/modules/$k/" \\(',
        " -o ".join(f"-name {name}.ko -o -name '{name}.ko.*'" for name in MODULE_NAMES),
        "\\) 2>/dev/null",
        "| sort | while read -r f; do v=; s=;",
        'if [ $m = yes ]; then v=$(modinfo -F version "$f" 2>/dev/null | head -n 1);',
        's=$(modinfo -F sig_id "$f" 2>/dev/null | head -n 1); fi;',
        'echo "module|$f|$v|$s"; done;',
        "fi;",
        SECURE_BOOT_SCRIPT,
    )
)


def parse_secure_boot(lines: Iterable[str]) -> dict[str, Any]:
    """Secure Boot from :data:`SECURE_BOOT_SCRIPT`'s lines: ``{"enabled": True|False|None,
    "source": "mokutil"|"efivars"|None, "detail": ...}`` (None: neither source answered)."""
    result: dict[str, Any] = {"enabled": None, "source": None, "detail": None}
    for line in lines:
        kind, _, value = line.partition("|")
        value = value.strip()
        if kind == "mokutil" and "SecureBoot" in value:
            enabled = value.split()[-1].lower() == "enabled"
            result.update(enabled=enabled, source="mokutil", detail=value)
        elif kind == "mokutil" and "not supported" in value and result["source"] is None:
            result.update(enabled=False, source="mokutil", detail=value)
        elif kind == "efivar" and result["source"] is None and value:
            enabled = value == "1"
            detail = "no EFI firmware" if value == "no-efi" else f"SecureBoot={value}"
            result.update(enabled=enabled, source="efivars", detail=detail)
    return result


def parse_fact_output(lines: Iterable[str]) -> dict[str, Any]:
    """The fact's value from :data:`FACT_SCRIPT`'s output::

    {"kernel": "6.1.0-29-amd64", "headers": False, "modinfo": True,
     "modules": [{"path": "/lib/modules/.../nvidia.ko", "version": "580.126.09" | None,
                  "signature": "PKCS#7" | "" | None}],
     "secure_boot": {"enabled": False, "source": "mokutil", "detail": "SecureBoot disabled"}}

    ``kernel`` is None when ``/boot`` holds no kernel image; ``version``/``signature`` are None
    where ``modinfo`` is missing (unknown), ``signature`` is "" for an unsigned module."""
    lines = list(lines)  # read twice: here and for Secure Boot
    fact: dict[str, Any] = {"kernel": None, "headers": False, "modinfo": False, "modules": []}
    for line in lines:
        kind, _, value = line.partition("|")
        if kind == "kernel":
            fact["kernel"] = value.strip() or None
        elif kind == "headers":
            fact["headers"] = value.strip() == "yes"
        elif kind == "modinfo":
            fact["modinfo"] = value.strip() == "yes"
        elif kind == "module":
            path, _, rest = value.partition("|")
            version, _, signature = rest.partition("|")
            known = fact["modinfo"]
            fact["modules"].append(
                {
                    "path": path,
                    "version": (version.strip() or None) if known else None,
                    "signature": signature.strip() if known else None,
                }
            )
    fact["secure_boot"] = parse_secure_boot(lines)
    return fact


def next_step(kernel: str, headers: bool, headers_package: str | None = None) -> str:
    """What the operator does to build the module for ``kernel``."""
    build = f"dkms autoinstall -k {kernel}"
    if headers:
        return f"build it: {build}"
    package = headers_package or f"linux-headers-{kernel} (Debian/Ubuntu) or kernel-devel-{kernel}"
    return f"install the kernel headers {package}, then build it: {build}"


def problem(
    fact: Mapping[str, Any],
    driver_version: str | None,
    headers_package: str | None = None,
) -> tuple[str, str] | None:
    """Why booting ``fact``'s next kernel would come up without a usable NVIDIA module for
    ``driver_version`` (the held driver; None: version not checked), as (reason, next step
    for the operator); None when it would load, or when nothing can be decided (no kernel
    image in ``/boot``)."""
    kernel = fact.get("kernel")
    if not kernel:
        return None
    modules = list(fact.get("modules") or [])
    headers = bool(fact.get("headers"))
    if not modules:
        return (
            f"kernel {kernel}, which the host boots next, has no NVIDIA module "
            "(a reboot would come up without the driver)",
            next_step(kernel, headers, headers_package),
        )
    fitting = [m for m in modules if m.get("version") in (None, driver_version or m["version"])]
    if not fitting:
        found = ", ".join(sorted({str(m.get("version")) for m in modules}))
        return (
            f"kernel {kernel}, which the host boots next, has NVIDIA module {found}, "
            f"not the installed driver {driver_version}",
            next_step(kernel, headers, headers_package),
        )
    secure_boot = (fact.get("secure_boot") or {}).get("enabled")
    if secure_boot and all(m.get("signature") == "" for m in fitting):
        return (
            f"kernel {kernel}'s NVIDIA module is not signed and Secure Boot is enabled "
            "(the kernel would reject it: Key was rejected by service)",
            "set nvidia_mok_key and nvidia_mok_cert to an enrolled Machine Owner Key and apply "
            f"again, or sign and rebuild it: dkms autoinstall -k {kernel} --force",
        )
    return None
