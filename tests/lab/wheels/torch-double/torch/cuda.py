"""torch.cuda of the TEST DOUBLE: the GPUs are the ones the lab host's nvidia-smi double reports."""

from __future__ import annotations

import subprocess
import warnings
from dataclasses import dataclass

from torch import version

# the oldest driver branch each CUDA major of the wheels initialises on (nvidia.md §3)
_DRIVER_FLOOR = {11: 450, 12: 525, 13: 580}
_NO_DRIVER = (
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
    "installed a driver from http://www.nvidia.com/Download/index.aspx"
)


@dataclass(frozen=True)
class _CudaDeviceProperties:
    name: str
    major: int
    minor: int
    total_memory: int  # bytes
    multi_processor_count: int = 0
    uuid: str = ""

    def __repr__(self) -> str:
        return (
            f"_CudaDeviceProperties(name='{self.name}', major={self.major}, minor={self.minor}, "
            f"total_memory={self.total_memory // (1024 * 1024)}MB, "
            f"multi_processor_count={self.multi_processor_count}, uuid={self.uuid})"
        )


_devices: list[_CudaDeviceProperties] | None = None
_error: str | None = None


def _probe() -> list[_CudaDeviceProperties]:
    """Ask nvidia-smi once per process, as CUDA initialises once per process."""
    global _devices, _error
    if _devices is not None:
        return _devices
    _devices = []
    if version.cuda is None:
        _error = "Torch not compiled with CUDA enabled"
        return _devices
    try:
        p = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,memory.total,compute_cap,uuid,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        _error = _NO_DRIVER
        return _devices
    if p.returncode != 0:
        out = (p.stdout + p.stderr).strip()
        if "mismatch" in out:
            _error = "CUDA driver initialization failed: Driver/library version mismatch"
            warnings.warn(
                "CUDA initialization: Unexpected error from cudaGetDeviceCount(). Did you run some "
                "cuda functions before calling NumCudaDevices() that might have already set an "
                "error? Error 803: system has unsupported display driver / cuda driver combination",
                stacklevel=3,
            )
        else:
            _error = _NO_DRIVER
        return _devices
    rows = [[c.strip() for c in line.split(",")] for line in p.stdout.splitlines() if line.strip()]
    major = int(version.cuda.split(".")[0])
    for _index, name, memory, cap, gpu_uuid, driver in rows:
        if int(driver.split(".")[0]) < _DRIVER_FLOOR.get(major, 0):
            _error = f"The NVIDIA driver on your system is too old (found version {driver})."
            warnings.warn(f"CUDA initialization: {_error}", stacklevel=3)
            _devices = []
            return _devices
        cap_major, cap_minor = (int(x) for x in cap.split("."))
        _devices.append(
            _CudaDeviceProperties(
                name, cap_major, cap_minor, int(memory) * 1024 * 1024, 0, gpu_uuid
            )
        )
    return _devices


def _lazy_init() -> None:
    if version.cuda is None:
        raise AssertionError("Torch not compiled with CUDA enabled")
    if not _probe():
        raise RuntimeError(_error or _NO_DRIVER)


def _check(index: int) -> int:
    _lazy_init()
    if not 0 <= index < len(_probe()):
        raise RuntimeError("CUDA error: invalid device ordinal")
    return index


def is_available() -> bool:
    return bool(_probe())


def device_count() -> int:
    return len(_probe())


def is_initialized() -> bool:
    return _devices is not None and bool(_devices)


def current_device() -> int:
    return _check(0)


def get_device_name(device: int | None = None) -> str:
    return _probe()[_check(_index(device))].name


def get_device_capability(device: int | None = None) -> tuple[int, int]:
    props = _probe()[_check(_index(device))]
    return props.major, props.minor


def get_device_properties(device: int | None = None) -> _CudaDeviceProperties:
    return _probe()[_check(_index(device))]


def synchronize(device: int | None = None) -> None:
    _check(_index(device))


def _index(device) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    return getattr(device, "index", None) or int(str(device).partition(":")[2] or 0)
