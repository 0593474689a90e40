"""Parsers for ``nvidia-smi`` and ``lspci -n`` output (pure functions, no pyinfra).

The GPU facts in :mod:`provisioner.facts.gpu` run one shell script per host and hand its
output to :func:`parse_fact_output`; the pieces are exposed so that tests (and other
callers) can parse the real formats directly:

* :func:`parse_query_csv` reads ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits``:
  one row per physical GPU, values joined by ``", "``, ``[N/A]`` for unsupported values.
* :func:`parse_driver_info` reads the driver and CUDA versions from the default table's
  header or from ``nvidia-smi --version``, in both the old wording (``Driver Version`` /
  ``CUDA Version``) and the R610+ wording (``KMD Version`` / ``CUDA UMD Version``).
* :func:`classify_failure` maps a failed run (exit status and text) to a GPU state.
* :func:`parse_lspci` reads ``lspci -n [-D]`` lines.

Nothing here raises on odd input: unknown lines are skipped or reported, never fatal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

# The GPU states a host can be in (the ``state`` key of the NvidiaSmi fact).
STATE_OK = "ok"
STATE_NO_DRIVER = "no-driver"
STATE_DRIVER_MISMATCH = "driver-mismatch"
STATE_NO_GPU = "no-gpu"
STATE_ERROR = "error"
STATES = (STATE_OK, STATE_NO_DRIVER, STATE_DRIVER_MISMATCH, STATE_NO_GPU, STATE_ERROR)

# Fields queried by the NvidiaSmi fact, in this order.
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "uuid",
    "memory.total",
    "compute_cap",
    "pci.bus_id",
    "mig.mode.current",
    # valid from R3xx to R610 (where it is deprecated for kmd_version but still answers the
    # version: tests/conformance/gpu_stack/records.toml); lets one run answer the driver
    "driver_version",
)
QUERY_ARGS = f"--query-gpu={','.join(QUERY_FIELDS)} --format=csv,noheader,nounits"

# nvidia-smi(1) RETURN VALUE, the ones the facts tell apart.
RC_NOT_FOUND = 6  # "No devices were found"
RC_DRIVER_NOT_LOADED = 9
RC_LIB_RM_VERSION_MISMATCH = 18
RC_TIMEOUT = 124  # timeout(1), used by the fact script

MSG_NO_DRIVER = "couldn't communicate with the NVIDIA driver"
MSG_MISMATCH = "Driver/library version mismatch"
MSG_NO_DEVICES = "No devices were found"

# Markers printed by the fact script between the sections of its output.
MARK_ABSENT = "##nvsmi absent"
MARK_QUERY = "##nvsmi query rc="
MARK_TABLE = "##nvsmi table rc="

# Seconds one nvidia-smi call may take before the fact gives up (a GPU that fell off
# the bus can make nvidia-smi hang); only used where timeout(1) exists.
NVIDIA_SMI_TIMEOUT_S = 60

MAX_ERROR_CHARS = 2000


def fact_script(cuda_version: bool = True) -> str:
    """The NvidiaSmi fact's sh script, always exit status 0 (pyinfra fails a host on a non-zero
    status): the query (GPUs and driver version), then, with ``cuda_version`` and when the
    query worked, the default table for the newest CUDA version the driver supports (the one
    value no ``--query-gpu`` field gives: a second nvidia-smi run, which costs as much as the
    first)."""
    table = (
        (
            'if [ "$rc" -eq 0 ]; then',
            "out=$($t nvidia-smi 2>&1); rc=$?;",
            f'echo "{MARK_TABLE}$rc";',
            'if [ -n "$out" ]; then printf \'%s\\n\' "$out"; fi;',
            "fi;",
        )
        if cuda_version
        else ()
    )
    return " ".join(
        (
            "if ! command -v nvidia-smi >/dev/null 2>&1; then",
            f"echo '{MARK_ABSENT}';",
            "else",
            "t='';",
            f"if command -v timeout >/dev/null 2>&1; then t='timeout {NVIDIA_SMI_TIMEOUT_S}'; fi;",
            f"out=$($t nvidia-smi {QUERY_ARGS} 2>&1); rc=$?;",
            f'echo "{MARK_QUERY}$rc";',
            'if [ -n "$out" ]; then printf \'%s\\n\' "$out"; fi;',
            *table,
            "fi;",
            "true",
        )
    )


FACT_SCRIPT = fact_script()

_NA_VALUES = {"", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]"}

_DRIVER_RE = re.compile(r"\b(?:Driver|KMD)\s+Version\s*:\s*([0-9][0-9A-Za-z.\-]*)", re.I)
_CUDA_RE = re.compile(r"\bCUDA\s+(?:UMD\s+)?Version\s*:\s*([0-9][0-9.]*)", re.I)
_NVML_LIB_RE = re.compile(r"NVML library version:\s*([0-9][0-9.]*)", re.I)
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.\-]*$")
_INT_RE = re.compile(r"^\s*(-?\d+)(?:\s*MiB)?\s*$")


def na(value: str | None) -> str | None:
    """Return ``value`` stripped, or None for nvidia-smi's "no value" spellings."""
    if value is None:
        return None
    value = value.strip()
    if value.lower() in _NA_VALUES or value.lower().startswith("[requested functionality"):
        return None
    return value


def _to_int(value: str | None) -> int | None:
    value = na(value)
    if value is None:
        return None
    match = _INT_RE.match(value)
    return int(match.group(1)) if match else None


def _lines(text: str | Iterable[str]) -> list[str]:
    if isinstance(text, str):
        return text.splitlines()
    return [line for chunk in text for line in str(chunk).splitlines()]


def parse_query_csv(
    text: str | Iterable[str],
    fields: Sequence[str] = QUERY_FIELDS,
) -> tuple[list[dict[str, str | None]], list[str]]:
    """Split ``--format=csv,noheader,nounits`` output into rows keyed by field name.

    Returns ``(rows, odd_lines)``: blank lines are skipped; a line with the wrong number
    of values goes to ``odd_lines`` (except that surplus commas are put back into the
    ``name`` field, the only free-text field). Values are stripped, and nvidia-smi's
    ``[N/A]``/``N/A``/``[Not Supported]`` become None.
    """
    rows: list[dict[str, str | None]] = []
    odd: list[str] = []
    width = len(fields)
    name_at = fields.index("name") if "name" in fields else None
    for line in _lines(text):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) > width and name_at is not None:
            surplus = len(parts) - width
            parts[name_at : name_at + surplus + 1] = [
                ", ".join(parts[name_at : name_at + surplus + 1])
            ]
        if len(parts) != width:
            odd.append(line.strip())
            continue
        rows.append({field: na(value) for field, value in zip(fields, parts, strict=True)})
    return rows, odd


def gpu_from_row(row: dict[str, str | None]) -> dict[str, Any] | None:
    """One GPU of the fact from one parsed query row; None when the row is not a GPU."""
    index = _to_int(row.get("index"))
    if index is None:
        return None
    mig = (row.get("mig.mode.current") or "").capitalize()
    return {
        "index": index,
        "name": row.get("name"),
        "uuid": row.get("uuid"),
        "memory_total_mib": _to_int(row.get("memory.total")),
        "compute_cap": row.get("compute_cap"),
        "pci_bus_id": row.get("pci.bus_id"),
        "mig": mig if mig in ("Enabled", "Disabled") else None,
    }


def parse_gpus(text: str | Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """GPUs (sorted by index) and odd lines from the fact's query output."""
    return _gpus(*parse_query_csv(text))


def _gpus(
    rows: list[dict[str, str | None]], odd: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    gpus = []
    for row in rows:
        gpu = gpu_from_row(row)
        if gpu is None:
            odd.append(", ".join(str(v) for v in row.values()))
        else:
            gpus.append(gpu)
    gpus.sort(key=lambda gpu: gpu["index"])
    return gpus, odd


def parse_driver_info(text: str | Iterable[str]) -> tuple[str | None, str | None]:
    """``(driver_version, cuda_version)`` from the table header or ``--version`` output.

    Accepts ``Driver Version: 590.48.01  CUDA Version: 13.1`` (up to R59x) and
    ``KMD Version: 610.43.02  CUDA UMD Version: 13.3`` (R610+), any case, and the
    ``--version`` layout (``DRIVER version      : 590.48.01``). R610's ``--version``
    keeps the old keys with a "Deprecated, see ..." value; those are skipped because a
    version must start with a digit. The CUDA version is the newest CUDA the driver
    supports, not an installed toolkit.
    """
    joined = "\n".join(_lines(text))
    driver = _DRIVER_RE.search(joined)
    cuda = _CUDA_RE.search(joined)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def _message(lines: Iterable[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines).strip()
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + " ..."
    return text


def classify_failure(rc: int | None, text: str) -> tuple[str, str | None] | None:
    """The state for an nvidia-smi run that failed, or None when it did not fail.

    ``rc`` 9 or "couldn't communicate" is ``no-driver``; ``rc`` 18 or "Driver/library
    version mismatch" is ``driver-mismatch``; ``rc`` 6 or "No devices were found" is
    ``no-gpu``; any other non-zero status is ``error``. The message is kept.
    """
    message = text.strip() or None
    if MSG_NO_DRIVER in text or rc == RC_DRIVER_NOT_LOADED:
        return STATE_NO_DRIVER, message
    if MSG_MISMATCH in text or rc == RC_LIB_RM_VERSION_MISMATCH:
        return STATE_DRIVER_MISMATCH, message
    if MSG_NO_DEVICES in text or rc == RC_NOT_FOUND:
        return STATE_NO_GPU, message
    if rc == RC_TIMEOUT:
        return STATE_ERROR, f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S}s"
    if rc:
        return STATE_ERROR, message or f"nvidia-smi exited with status {rc}"
    return None


def nvml_library_version(text: str) -> str | None:
    """The userspace NVML version from a "Driver/library version mismatch" message."""
    match = _NVML_LIB_RE.search(text)
    return match.group(1) if match else None


def result(
    state: str,
    gpus: list[dict[str, Any]] | None = None,
    driver_version: str | None = None,
    cuda_version: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The NvidiaSmi fact's value."""
    return {
        "state": state,
        "gpus": gpus or [],
        "driver_version": driver_version,
        "cuda_version": cuda_version,
        "error": error,
    }


def _rc(marker_line: str, marker: str) -> int | None:
    try:
        return int(marker_line[len(marker) :].strip())
    except ValueError:
        return None


def parse_fact_output(lines: Iterable[str]) -> dict[str, Any]:
    """The NvidiaSmi fact's value from the output of :data:`FACT_SCRIPT`."""
    section: str | None = None
    query_rc: int | None = None
    table_rc: int | None = None
    query: list[str] = []
    table: list[str] = []
    stray: list[str] = []
    for line in _lines(lines):
        marker = line.strip()
        if marker == MARK_ABSENT:
            return result(STATE_NO_DRIVER)
        if marker.startswith(MARK_QUERY):
            section, query_rc = "query", _rc(marker, MARK_QUERY)
        elif marker.startswith(MARK_TABLE):
            section, table_rc = "table", _rc(marker, MARK_TABLE)
        elif section == "query":
            query.append(line)
        elif section == "table":
            table.append(line)
        else:
            stray.append(line)

    if section is None:
        return result(STATE_ERROR, error="unexpected output: " + (_message(stray) or "(none)"))

    failure = classify_failure(query_rc, _message(query))
    if failure is None and query_rc is None:
        failure = (STATE_ERROR, "unexpected output: " + (_message(query) or "(none)"))
    if failure is not None:
        return result(failure[0], error=failure[1])

    rows, odd = parse_query_csv(query)
    gpus, odd = _gpus(rows, odd)
    if not gpus:
        if odd:
            return result(STATE_ERROR, error="unexpected nvidia-smi output: " + _message(odd))
        return result(STATE_NO_GPU)

    driver_version, cuda_version = parse_driver_info(table) if table_rc == 0 else (None, None)
    queried = next(
        (v for row in rows if _VERSION_RE.match(v := row.get("driver_version") or "")), None
    )
    return result(STATE_OK, gpus, queried or driver_version, cuda_version)


# ---------------------------------------------------------------------------------------
# lspci
# ---------------------------------------------------------------------------------------

NVIDIA_VENDOR_ID = "10de"

# PCI classes kept by NvidiaPciDevices: the GPUs themselves (VGA 0300, 3D 0302, other
# display 0380) and NVSwitch (bridge, other: 0680). Left out on purpose: the HDMI/DP
# audio function (0403), the USB-C controller (0c03) and UCSI (0c80) of consumer cards.
GPU_CLASSES = frozenset({"0300", "0302", "0380"})
NVSWITCH_CLASSES = frozenset({"0680"})
KEPT_CLASSES = GPU_CLASSES | NVSWITCH_CLASSES


def gpus_on_bus(pci: Iterable[Any] | None) -> list[dict[str, str]]:
    """The NVIDIA GPUs among PCI functions (``NvidiaPciDevices`` entries): the one answer to
    "an NVIDIA GPU on the PCI bus" that gather, plan, apply and verify all use. An entry
    without a vendor counts as NVIDIA's (the fact keeps only NVIDIA's)."""
    out = []
    for device in pci or []:
        if not isinstance(device, dict):
            continue
        vendor = str(device.get("vendor_id") or NVIDIA_VENDOR_ID).lower()
        if vendor == NVIDIA_VENDOR_ID and str(device.get("class_id") or "").lower() in GPU_CLASSES:
            out.append(device)
    return out


# `lspci -n -D` lines from sysfs, for a host without pciutils: "<slot> <class>: <vendor>:<device>"
SYSFS_PCI_SCRIPT = (
    'for d in /sys/bus/pci/devices/*; do [ -r "$d/vendor" ] || continue; '
    'printf \'%s %s: %s:%s\\n\' "${d##*/}" "$(cut -c3-6 "$d/class")" '
    '"$(cut -c3- "$d/vendor")" "$(cut -c3- "$d/device")"; done'
)

_LSPCI_RE = re.compile(
    r"^\s*(?P<slot>(?:[0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s+"
    r"(?P<class>[0-9a-f]{4}):\s+(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\b",
    re.I,
)


def parse_lspci(
    text: str | Iterable[str],
    vendor_id: str = NVIDIA_VENDOR_ID,
    classes: Iterable[str] | None = KEPT_CLASSES,
) -> list[dict[str, str]]:
    """NVIDIA PCI functions from ``lspci -n [-D]`` lines such as
    ``0000:01:00.0 0302: 10de:20b2 (rev a1)``.

    The slot always carries a domain (``0000:`` is added to lines printed without
    ``-D``); ids are lower case. Only ``vendor_id`` and, unless ``classes`` is None,
    the given classes are kept (see :data:`KEPT_CLASSES`). Other lines are skipped.
    """
    wanted = None if classes is None else {c.lower() for c in classes}
    devices = []
    for line in _lines(text):
        match = _LSPCI_RE.match(line)
        if not match:
            continue
        slot = match["slot"].lower()
        if slot.count(":") == 1:
            slot = f"0000:{slot}"
        vendor = match["vendor"].lower()
        class_id = match["class"].lower()
        if vendor != vendor_id.lower() or (wanted is not None and class_id not in wanted):
            continue
        devices.append(
            {
                "slot": slot,
                "class_id": class_id,
                "vendor_id": vendor,
                "device_id": match["device"].lower(),
            }
        )
    return devices
