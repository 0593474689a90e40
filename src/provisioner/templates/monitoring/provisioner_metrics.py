#!/usr/bin/env python3
"""provisioner's health collector: the host's GPU stack and Ollama as Prometheus metrics.

Installed by ``provisioner.deploys.monitoring`` as
``/usr/local/lib/provisioner/monitoring/provisioner_metrics.py`` (with ``nvidia_smi.py``, the
same parser the control side's ``NvidiaSmi`` fact uses, and ``next_boot.py``, the same check of
the next boot's NVIDIA module that runs before any reboot the provisioner makes) and run every
minute by ``provisioner-metrics.timer``. It writes ``provisioner.prom`` into node_exporter's
textfile directory, atomically (a temporary file renamed over the old one), so node_exporter never
serves a half-written file.

Cheap by design: one ``nvidia-smi`` run (the fact's own command), ``dpkg-query``/``apt-mark``
or ``rpm``/``dnf versionlock``, and three requests to the local Ollama API (``/api/version``,
``/api/tags``, ``/api/ps``). It never loads a model.

Configuration: ``/etc/provisioner/monitoring.json`` (written by the deploy; see
``docs/monitoring.md`` for the keys). Standard library only, Python >= 3.9 (EL9's python3).

Usage: ``provisioner_metrics.py [--config PATH] [--stdout]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import next_boot  # noqa: E402  (shipped next to this file)
import nvidia_smi  # noqa: E402  (shipped next to this file)

CONFIG = "/etc/provisioner/monitoring.json"
OUTPUT_NAME = "provisioner.prom"
COMMAND_TIMEOUT_S = 20
HTTP_TIMEOUT_S = 5
MIB = 1024 * 1024

# Packages whose holds keep an unattended upgrade from mismatching the driver and its libraries.
NVIDIA_PACKAGE = re.compile(
    r"^(nvidia-|libnvidia-|cuda-drivers|libcuda|libxnvctrl|xserver-xorg-video-nvidia|"
    r"linux-modules-nvidia-|kmod-nvidia)"
)


def run(command: list[str] | str) -> tuple[int, str]:
    """Run a command; (exit status, stdout+stderr). Never raises."""
    try:
        proc = subprocess.run(
            command,
            shell=isinstance(command, str),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def http_json(url: str) -> Any:
    """GET ``url`` and decode its JSON body; raises on any failure."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
        return json.loads(response.read().decode("utf-8"))


# --- exposition -----------------------------------------------------------------------------


def escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Prometheus text exposition format, grouped by metric name."""

    def __init__(self) -> None:
        self.help: dict[str, tuple[str, str]] = {}
        self.samples: dict[str, list[str]] = {}

    def declare(self, name: str, kind: str, text: str) -> None:
        self.help[name] = (kind, text)
        self.samples.setdefault(name, [])

    def add(self, name: str, value: float, /, **labels: Any) -> None:
        label_text = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
        number = repr(float(value)) if isinstance(value, float) else str(int(value))
        self.samples[name].append(
            f"{name}{{{label_text}}} {number}" if labels else f"{name} {number}"
        )

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, text) in self.help.items():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(self.samples[name])
        return "\n".join(lines) + "\n"


METRICS = (
    (
        "provisioner_check",
        "gauge",
        "1 for the result of each health check (label status: ok, failed, skipped).",
    ),
    (
        "provisioner_nvidia_info",
        "gauge",
        "1, with the driver and CUDA versions nvidia-smi reports.",
    ),
    (
        "provisioner_nvml_state",
        "gauge",
        "1 for the NVML state (ok, no-driver, driver-mismatch, no-gpu, error).",
    ),
    ("provisioner_gpu_memory_used_bytes", "gauge", "GPU memory in use."),
    ("provisioner_gpu_memory_total_bytes", "gauge", "GPU memory in all."),
    ("provisioner_gpu_temperature_celsius", "gauge", "GPU core temperature."),
    (
        "provisioner_nvidia_package_held",
        "gauge",
        "1 when an installed NVIDIA driver package is held, else 0.",
    ),
    (
        "provisioner_reboot_pending",
        "gauge",
        "1 when the provisioner left a reboot pending (label reason).",
    ),
    (
        "provisioner_next_boot_module",
        "gauge",
        "1 when the kernel the host boots next has an NVIDIA module it can load (the driver's"
        " version; signed under Secure Boot), 0 when a reboot would come up without one.",
    ),
    ("provisioner_ollama_up", "gauge", "1 when the local Ollama API answers."),
    ("provisioner_ollama_info", "gauge", "1, with the Ollama version that answers."),
    ("provisioner_model_present", "gauge", "1 when a planned model is in the store, else 0."),
    (
        "provisioner_model_digest_match",
        "gauge",
        "1 when the model's manifest digest is the expected one (lock or plan), else 0.",
    ),
    ("provisioner_model_loaded", "gauge", "1 for each model Ollama holds in memory."),
    ("provisioner_model_loaded_bytes", "gauge", "Memory a loaded model occupies in all."),
    ("provisioner_model_loaded_vram_bytes", "gauge", "Part of a loaded model held in GPU memory."),
    (
        "provisioner_model_loaded_cpu_ratio",
        "gauge",
        "Share of a loaded model held in system memory (0: all on GPU; above 0: spilled to CPU).",
    ),
    ("provisioner_collector_last_run_timestamp_seconds", "gauge", "When this collector last ran."),
    ("provisioner_collector_duration_seconds", "gauge", "How long the last collection took."),
)

STATUSES = ("ok", "failed", "skipped")


class Collector:
    """One collection: reads the host, records metrics and the per-layer checks."""

    def __init__(self, config: dict[str, Any], metrics: Metrics) -> None:
        self.config = config
        self.m = metrics
        self.driver_version: str | None = None  # what nvidia-smi reports, once it answers
        for name, kind, text in METRICS:
            self.m.declare(name, kind, text)

    def check(self, layer: str, check: str, status: str, reason: str = "") -> None:
        for each in STATUSES:
            self.m.add(
                "provisioner_check",
                1 if each == status else 0,
                layer=layer,
                check=check,
                status=each,
            )
        if reason and status != "ok":
            print(f"{layer}/{check}: {status}: {reason}", file=sys.stderr)

    # --- GPU stack ----------------------------------------------------------------------------

    def nvidia(self) -> None:
        if not self.config.get("gpu", True):
            self.check("driver", "nvml", "skipped", "not a GPU host")
            return
        _, out = run(nvidia_smi.FACT_SCRIPT)
        fact = nvidia_smi.parse_fact_output(out.splitlines())
        state = fact.get("state") or nvidia_smi.STATE_ERROR
        for each in nvidia_smi.STATES:
            self.m.add("provisioner_nvml_state", 1 if each == state else 0, state=each)
        self.check(
            "driver",
            "nvml",
            "ok" if state == nvidia_smi.STATE_OK else "failed",
            fact.get("error") or state,
        )
        if fact.get("driver_version"):
            self.driver_version = str(fact["driver_version"])
            self.m.add(
                "provisioner_nvidia_info",
                1,
                driver_version=fact["driver_version"],
                cuda_version=fact.get("cuda_version") or "",
            )
        if state == nvidia_smi.STATE_OK:
            self.gpu_readings()

    def gpu_readings(self) -> None:
        code, out = run(
            [
                "nvidia-smi",
                "--query-gpu=index,uuid,name,memory.used,memory.total,temperature.gpu",
                "--format=csv,noheader,nounits",
            ]
        )
        if code != 0:
            return
        for line in out.splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 6:
                continue
            index, uuid, name, used, total, temp = fields
            labels = {"gpu": index, "uuid": uuid, "name": name}
            for metric, value, scale in (
                ("provisioner_gpu_memory_used_bytes", used, MIB),
                ("provisioner_gpu_memory_total_bytes", total, MIB),
                ("provisioner_gpu_temperature_celsius", temp, 1),
            ):
                if nvidia_smi.na(value) is not None and re.fullmatch(r"\d+(\.\d+)?", value):
                    self.m.add(
                        metric,
                        float(value) * scale if scale == 1 else int(float(value)) * scale,
                        **labels,
                    )

    def holds(self) -> None:
        installed, held = installed_nvidia_packages()
        if not installed:
            self.check("driver", "holds", "skipped", "no NVIDIA driver package installed")
            return
        for name in sorted(installed):
            self.m.add("provisioner_nvidia_package_held", 1 if name in held else 0, package=name)
        loose = sorted(installed - held)
        self.check("driver", "holds", "failed" if loose else "ok", "not held: " + ", ".join(loose))

    def reboot(self) -> None:
        marker = self.config.get("reboot_marker") or "/var/lib/provisioner/reboot-required"
        try:
            with open(marker, encoding="utf-8") as handle:
                reason = " ".join(handle.read().split())[:200] or "unknown"
        except OSError:
            self.m.add("provisioner_reboot_pending", 0, reason="")
            return
        self.m.add("provisioner_reboot_pending", 1, reason=reason)

    def next_boot(self) -> None:
        """Whether the kernel the host boots next has a usable NVIDIA module: the same script
        and decision as the provisioner's check before a reboot (``next_boot.py``)."""
        if not self.config.get("gpu", True):
            self.check("driver", "next_boot_module", "skipped", "not a GPU host")
            return
        _, out = run(next_boot.FACT_SCRIPT)
        fact = next_boot.parse_fact_output(out.splitlines())
        kernel = fact.get("kernel")
        if kernel is None:
            self.check("driver", "next_boot_module", "skipped", "no kernel image in /boot")
            return
        found = next_boot.problem(fact, self.driver_version)
        self.m.add("provisioner_next_boot_module", 0 if found else 1, kernel=kernel)
        self.check(
            "driver",
            "next_boot_module",
            "failed" if found else "ok",
            "; next: ".join(found) if found else "",
        )

    # --- Ollama and models ---------------------------------------------------------------------

    def ollama(self) -> None:
        api = str(self.config.get("ollama_api") or "http://127.0.0.1:11434").rstrip("/")
        try:
            version = http_json(api + "/api/version").get("version", "")
            tags = http_json(api + "/api/tags").get("models") or []
            loaded = http_json(api + "/api/ps").get("models") or []
        except Exception as exc:  # noqa: BLE001  any failure means "down"
            self.m.add("provisioner_ollama_up", 0)
            self.check("ollama", "api", "failed", str(exc))
            self.check("models", "present", "skipped", "Ollama does not answer")
            return
        self.m.add("provisioner_ollama_up", 1)
        self.m.add("provisioner_ollama_info", 1, version=version)
        self.check("ollama", "api", "ok")
        self.models(tags)
        self.loaded(loaded)

    def models(self, tags: list[dict[str, Any]]) -> None:
        have = {canonical(t.get("name") or t.get("model") or ""): t for t in tags}
        missing = []
        for entry in self.config.get("models") or []:
            name = canonical(entry["name"])
            problem = self.model_problem(name, have.get(name), entry.get("digest"))
            self.m.add("provisioner_model_present", 0 if problem == "missing" else 1, model=name)
            if entry.get("digest") and problem != "missing":
                match = problem != "digest"
                self.m.add("provisioner_model_digest_match", 1 if match else 0, model=name)
            if problem:
                missing.append(f"{name} ({problem})")
        status = "failed" if missing else "ok"
        self.check("models", "present", status, "not as planned: " + ", ".join(missing))

    def model_problem(self, name: str, tag: dict[str, Any] | None, digest: str | None) -> str:
        """ "missing" (not listed, or a manifest or blob gone from the store), "digest", or ""."""
        if tag is None:
            return "missing"
        store = self.config.get("models_dir")
        if store and not blobs_present(store, name):
            return "missing"
        if digest:
            actual = str(tag.get("digest") or "").removeprefix("sha256:")
            if actual != str(digest).removeprefix("sha256:"):
                return "digest"
        return ""

    def loaded(self, loaded: list[dict[str, Any]]) -> None:
        spilled = []
        for entry in loaded:
            name = canonical(entry.get("name") or entry.get("model") or "")
            size = int(entry.get("size") or 0)
            vram = int(entry.get("size_vram") or 0)
            ratio = (size - vram) / size if size > 0 else 0.0
            self.m.add("provisioner_model_loaded", 1, model=name)
            self.m.add("provisioner_model_loaded_bytes", size, model=name)
            self.m.add("provisioner_model_loaded_vram_bytes", vram, model=name)
            self.m.add("provisioner_model_loaded_cpu_ratio", round(ratio, 4), model=name)
            if self.config.get("gpu", True) and ratio > 0:
                spilled.append(f"{name} ({ratio:.0%} on CPU)")
        self.check(
            "models", "on_gpu", "failed" if spilled else "ok", "spilled: " + ", ".join(spilled)
        )

    def collect(self) -> None:
        start = time.time()
        for part in (self.nvidia, self.holds, self.reboot, self.next_boot, self.ollama):
            try:
                part()
            except Exception as exc:  # noqa: BLE001  one broken part must not hide the others
                print(f"provisioner-metrics: {part.__name__}: {exc!r}", file=sys.stderr)
        self.m.add("provisioner_collector_last_run_timestamp_seconds", int(start))
        self.m.add("provisioner_collector_duration_seconds", round(time.time() - start, 3))


def canonical(name: str) -> str:
    """Ollama's short display form, lower case (Ollama compares names case-insensitively).

    A copy, for a host without the package, of ``provisioner.model_name.canonical`` for valid
    names; ``tests/unit/test_model_name.py`` checks that the two agree.
    """
    name = name.strip().lower()
    rest, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:  # no tag: the last ":" (if any) is a registry port
        rest, tag = name, "latest"
    parts = rest.split("/")
    if len(parts) == 3 and parts[0] == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts) + ":" + tag


def manifest_path(store: str, name: str) -> str:
    """Where Ollama keeps the manifest of a canonical name (``$OLLAMA_MODELS/manifests/...``)."""
    rest, _, tag = name.rpartition(":")
    parts = rest.split("/")
    parts = ["registry.ollama.ai", "library"][: 3 - len(parts)] + parts
    return os.path.join(store, "manifests", *parts, tag)


def blobs_present(store: str, name: str) -> bool:
    """The model's manifest and every blob it names are in the store."""
    try:
        with open(manifest_path(store, name), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    layers = [manifest.get("config") or {}, *(manifest.get("layers") or [])]
    digests = [str(layer.get("digest") or "") for layer in layers]
    return all(
        os.path.exists(os.path.join(store, "blobs", digest.replace(":", "-")))
        for digest in digests
        if digest
    )


def installed_nvidia_packages() -> tuple[set[str], set[str]]:
    """(installed NVIDIA driver packages, held ones), from dpkg/apt-mark or rpm/dnf."""
    code, out = run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\\n"])
    if code == 0:
        installed = {
            line.split()[0]
            for line in out.splitlines()
            if len(line.split()) >= 2 and line.split()[1].startswith(("ii", "hi"))
        }
        held = {
            line.split()[0]
            for line in out.splitlines()
            if len(line.split()) >= 2 and line.split()[1].startswith("h")
        }
        _, marks = run(["apt-mark", "showhold"])
        held |= {line.strip() for line in marks.splitlines() if line.strip()}
    else:
        code, out = run(["rpm", "-qa", "--qf", "%{NAME}\\n"])
        installed = set(out.split()) if code == 0 else set()
        _, locks = run(["dnf", "-q", "versionlock", "list"])
        held = {re.sub(r"-\d.*$", "", re.sub(r"^\d+:", "", item)) for item in locks.split()}
    installed = {name for name in installed if NVIDIA_PACKAGE.match(name)}
    return installed, held & installed


def write_atomically(directory: str, text: str) -> str:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".provisioner-", suffix=".prom.tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    target = os.path.join(directory, OUTPUT_NAME)
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--stdout", action="store_true", help="print instead of writing the file")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"provisioner-metrics: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    metrics = Metrics()
    Collector(config, metrics).collect()
    if args.stdout:
        sys.stdout.write(metrics.text())
        return 0
    write_atomically(
        config.get("textfile_dir") or "/var/lib/prometheus/node-exporter", metrics.text()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
