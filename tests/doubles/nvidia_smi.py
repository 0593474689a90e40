"""Install the ``nvidia-smi`` and ``lspci`` test doubles (tests/doubles/) into a directory.

Usage in a test::

    bin_dir = tmp_path / "bin"
    install_nvidia_smi_double(bin_dir, tmp_path / "conf", gpus=[H100])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "NVIDIA_SMI_DOUBLE_DIR": str(tmp_path / "conf")}

A GPU is a dict with the keys of the ``gpus`` config line (see the comment at the top of
``tests/doubles/nvidia-smi``): ``index``, ``name``, ``memory_total_mib``, ``compute_cap``,
``pci_bus_id``, ``uuid``, ``mig`` (``"Enabled"``, ``"Disabled"`` or None), and optionally
``temperature_c``, ``power_draw_w``, ``power_limit_w``, ``memory_used_mib``,
``utilization_pct``, ``pstate``, ``fan_pct``.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DOUBLES_DIR = Path(__file__).resolve().parent
NVIDIA_SMI_SCRIPT = DOUBLES_DIR / "nvidia-smi"
LSPCI_SCRIPT = DOUBLES_DIR / "lspci"

_OPTIONAL = (
    ("temperature_c", 30),
    ("power_draw_w", 60),
    ("power_limit_w", 300),
    ("memory_used_mib", 0),
    ("utilization_pct", 0),
    ("pstate", "P0"),
    ("fan_pct", "N/A"),
)

# Ready-made GPUs with the values of the real samples in tests/fixtures/nvidia-smi/.
H100_80GB = {
    "index": 0,
    "name": "NVIDIA H100 80GB HBM3",
    "memory_total_mib": 81559,
    "compute_cap": "9.0",
    "pci_bus_id": "00000000:00:09.0",
    "uuid": "GPU-00000000-0000-0000-0000-000000000000",
    "mig": "Disabled",
}
L40S = {
    "index": 0,
    "name": "NVIDIA L40S",
    "memory_total_mib": 46068,
    "compute_cap": "8.9",
    "pci_bus_id": "00000000:01:00.0",
    "uuid": "GPU-00000000-0000-0000-0000-000000000000",
    "mig": None,
}
RTX_4090 = {
    "index": 0,
    "name": "NVIDIA GeForce RTX 4090",
    "memory_total_mib": 24564,
    "compute_cap": "8.9",
    "pci_bus_id": "00000000:84:00.0",
    "uuid": "GPU-71d1acc2-662d-2166-bf9f-65272d2fc437",
    "mig": None,
}


def _mig_field(value: Any) -> str:
    return value if value in ("Enabled", "Disabled") else "[N/A]"


def gpu_line(gpu: Mapping[str, Any]) -> str:
    """One line of the double's ``gpus`` file."""
    fields = [
        gpu["index"],
        gpu["name"],
        gpu["memory_total_mib"],
        gpu["compute_cap"],
        gpu["pci_bus_id"],
        gpu["uuid"],
        _mig_field(gpu.get("mig", gpu.get("mig_mode"))),
    ]
    if any(key in gpu for key, _ in _OPTIONAL):
        fields += [gpu.get(key, default) for key, default in _OPTIONAL]
    return "|".join(str(field) for field in fields)


def _install(script: Path, bin_dir: Path, name: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / name
    shutil.copyfile(script, target)
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target


def install_nvidia_smi_double(
    bin_dir: str | Path,
    config_dir: str | Path,
    gpus: Iterable[Mapping[str, Any]],
    driver: str = "580.105.08",
    cuda: str = "13.0",
    header: str = "classic",
    state: str | None = None,
    *,
    loaded_file: str | Path | None = None,
    persistence_file: str | Path | None = None,
    mig_devices: Iterable[str] | None = None,
) -> Path:
    """Write the double's configuration into ``config_dir`` and install the double as
    ``bin_dir/nvidia-smi``; returns the installed script's path.

    ``header`` is ``"classic"`` (Driver Version / CUDA Version) or ``"r610"`` (KMD
    Version / CUDA UMD Version). ``state`` forces ``ok``, ``no-driver``,
    ``driver-mismatch`` or ``no-gpu``. ``loaded_file`` and ``persistence_file`` are
    paths the double checks on every call (see the script's header comment);
    ``mig_devices`` are raw ``mig_devices`` lines.
    """
    if header not in ("classic", "r610"):
        raise ValueError(f"header must be 'classic' or 'r610', not {header!r}")
    config = Path(config_dir)
    config.mkdir(parents=True, exist_ok=True)
    ordered = sorted(gpus, key=lambda gpu: int(gpu["index"]))
    (config / "gpus").write_text("".join(gpu_line(gpu) + "\n" for gpu in ordered))
    (config / "driver").write_text(f"{driver} {cuda} {header}\n")
    for name, value in (
        ("state", state),
        ("loaded_file", loaded_file),
        ("persistence_file", persistence_file),
    ):
        path = config / name
        if value is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(f"{value}\n")
    mig_path = config / "mig_devices"
    if mig_devices is None:
        mig_path.unlink(missing_ok=True)
    else:
        mig_path.write_text("".join(line + "\n" for line in mig_devices))
    return _install(NVIDIA_SMI_SCRIPT, Path(bin_dir), "nvidia-smi")


def install_lspci_double(
    bin_dir: str | Path,
    data_file: str | Path,
    devices: Iterable[str],
) -> Path:
    """Write ``devices`` (lines ``slot class vendor:device [rev]``) to ``data_file`` and
    install the double as ``bin_dir/lspci``; point ``LSPCI_DOUBLE_FILE`` at the file."""
    Path(data_file).parent.mkdir(parents=True, exist_ok=True)
    Path(data_file).write_text("".join(line + "\n" for line in devices))
    return _install(LSPCI_SCRIPT, Path(bin_dir), "lspci")
