"""What the checks know about one host: its expectations, and cached looks at the host.

A :class:`HostContext` wraps testinfra's ``host`` with the host's expectations (its display
name, resolved data keys, plan and gathered facts, from the ``--provisioner-expect`` file)
and with the observations several checks share (nvidia-smi, PCI devices, the PyTorch probe,
Ollama's answers), each taken once per host and worker. It also words the messages: every
failure names the host, what was checked, the expected and the actual value.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from provisioner import addresses, settings
from provisioner.nvidia_smi import gpus_on_bus
from provisioner.verify import parse

# Seconds a command may run on the host before it is given up (where timeout(1) exists).
COMMAND_TIMEOUT_S = 120
# Loading a model and generating a few tokens; a cold load from disk on CPU can be slow.
GENERATE_TIMEOUT_S = 600


def host_id(spec: str) -> str:
    """The id testinfra gives a ``--hosts`` entry (``ssh://gpu-1``, ``local``), used to
    match a host with its expectations."""
    spec = spec.strip()
    if spec in ("local", "local://", "@local"):
        return "local"
    try:
        import testinfra

        return str(testinfra.get_host(spec).backend.get_pytest_id())
    except Exception:  # an odd key only fails to match
        return spec


def load_expectations(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The ``--provisioner-expect`` file's hosts, keyed by :func:`host_id` of their spec."""
    if not path:
        return {}
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    hosts = document.get("hosts", {}) if isinstance(document, dict) else {}
    return {host_id(spec): dict(entry or {}) for spec, entry in hosts.items()}


def find_expectations(
    expectations: dict[str, dict[str, Any]], testinfra_host: Any
) -> dict[str, Any]:
    """The entry for a testinfra host: by its id, then by its bare host name."""
    backend = testinfra_host.backend
    key = str(backend.get_pytest_id())
    if key in expectations:
        return expectations[key]
    hostname = str(backend.get_hostname())
    for spec, entry in expectations.items():
        if spec.split("://", 1)[-1] == hostname or entry.get("name") == hostname:
            return entry
    return {}


@dataclass(frozen=True)
class HttpResult:
    status: int | None  # None: no HTTP answer at all
    body: str
    error: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        body = self.body.strip().replace("\n", " ")
        return f"HTTP {self.status}" + (f" {body[:200]}" if body else "")


class HostContext:
    """One host under test (see the module docstring)."""

    def __init__(self, testinfra_host: Any, expectations: dict[str, Any]):
        self.host = testinfra_host
        self.id = str(testinfra_host.backend.get_pytest_id())
        self.name = str(expectations.get("name") or self.id)
        self.data = settings.HostSettings(expectations.get("data") or {})
        self.plan: dict[str, Any] = dict(expectations.get("plan") or {})
        self.facts: dict[str, Any] | None = expectations.get("facts")
        self._cache: dict[str, Any] = {}

    # -- messages ----------------------------------------------------------------------

    def fail(self, what: str, expected: Any, actual: Any, hint: str = "") -> NoReturn:
        """Fail the check: ``HOST: WHAT: expected E, got A (HINT)``."""
        message = f"{self.name}: {what}: expected {expected}, got {actual}"
        if hint:
            message += f" ({hint})"
        pytest.fail(message, pytrace=False)

    def skip(self, reason: str) -> NoReturn:
        pytest.skip(reason)

    def passed(self, request: pytest.FixtureRequest, observed: str) -> None:
        """Record what a passing check saw (shown in the JSON report)."""
        request.node.user_properties.append(("message", f"{self.name}: {observed}"))

    # -- data keys ---------------------------------------------------------------------

    def key(self, name: str) -> Any:
        """A declared data key's value: the host's, else its declared default
        (``settings.HostSettings``; an undeclared key raises ``KeyError``)."""
        return self.data.raw(name)

    # -- running commands ----------------------------------------------------------------

    def run(self, script: str, timeout: int = COMMAND_TIMEOUT_S) -> Any:
        """Run a POSIX sh script on the host (under timeout(1) when the host has it)."""
        quoted = shlex.quote(script)
        wrapped = (
            f"if command -v timeout >/dev/null 2>&1; then timeout {int(timeout)} sh -c {quoted}; "
            f"else sh -c {quoted}; fi"
        )
        return self.host.run(wrapped)

    def output(self, script: str, timeout: int = COMMAND_TIMEOUT_S) -> str:
        """stdout of a script, empty when it failed."""
        result = self.run(script, timeout)
        return result.stdout if result.rc == 0 else ""

    def has_command(self, command: str) -> bool:
        return self.run(f"command -v {shlex.quote(command)} >/dev/null 2>&1").rc == 0

    def _cached(self, key: str, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def unit_state(self, unit: str) -> str:
        """``enabled, active`` (``systemctl is-enabled``, ``is-active``) in a few words."""
        result = self.run(
            f"systemctl is-enabled {shlex.quote(unit)}; systemctl is-active {shlex.quote(unit)}"
        )
        words = result.stdout.split()
        if len(words) >= 2:
            return f"{words[0]}, {words[1]}"
        error = (result.stderr or "").strip().splitlines()
        if any("not been booted with systemd" in line for line in error):
            return "no systemd on this host"
        if any("No such file" in line or "not found" in line for line in error):
            return f"{unit} not installed"
        return ", ".join(words) or (error[0] if error else f"systemctl exited with {result.rc}")

    # -- reachability ------------------------------------------------------------------

    def unreachable(self) -> str | None:
        """Why the host cannot be reached, or None when it answers."""

        def probe() -> str | None:
            try:
                result = self.host.run("true")
            except Exception as exc:  # the ssh backend raises on status 255
                detail = exc.args[0] if exc.args else exc
                stderr = getattr(detail, "stderr", None)
                return (stderr or str(detail)).strip() or type(exc).__name__
            if result.rc != 0:
                return (result.stderr or f"'true' exited with status {result.rc}").strip()
            return None

        return self._cached("unreachable", probe)

    def require_reachable(self) -> None:
        error = self.unreachable()
        if error:
            self.skip(f"host unreachable: {error.splitlines()[-1] if error else ''}")

    # -- GPUs ----------------------------------------------------------------------------

    def fact(self, fact_class: type, *args: Any) -> Any:
        """A provisioner fact taken now, on this host: the fact's own command and parser
        (``provisioner.facts``), so the suite reads the host exactly as the deploys do."""

        def take() -> Any:
            fact = fact_class()
            result = self.run(fact.command(*args))
            if result.rc != 0:
                return fact.default()
            return fact.process(result.stdout.splitlines())

        return self._cached(f"fact:{fact_class.__name__}:{args!r}", take)

    def smi(self) -> dict[str, Any]:
        """The NvidiaSmi fact (see ``provisioner.facts.gpu``)."""
        from provisioner.facts.gpu import NvidiaSmi

        return self.fact(NvidiaSmi)

    def distro(self) -> Any:
        """The GPU stack's table for this host's distribution (``data/distros.toml``), or
        None for a distribution the stack does not support."""
        from provisioner.facts.system import OsInfo
        from provisioner.gpu_stack import GpuStackError, find_distro

        def find() -> Any:
            try:
                return find_distro(self.fact(OsInfo))
            except GpuStackError:
                return None

        return self._cached("distro", find)

    def pci_devices(self) -> list[dict[str, str]]:
        """NVIDIA PCI functions (GPUs and NVSwitches): the NvidiaPciDevices fact (``lspci``,
        else sysfs), as apply sees them."""
        from provisioner.facts.gpu import NvidiaPciDevices

        return list(self.fact(NvidiaPciDevices))

    def gpu_expected(self) -> tuple[bool, str]:
        """Whether this host should have working NVIDIA GPUs, and why (the reason is the
        skip message of every GPU check when it should not)."""

        def decide() -> tuple[bool, str]:
            gpu = self.data.get("gpu")
            if gpu is False:
                return False, "cpu-only host (gpu: false)"
            if gpu is True:
                return True, "gpu: true"
            if (self.data.get("gpu_count") or 0) > 0:
                return True, f"gpu_count: {self.data['gpu_count']}"
            if self.plan.get("gpus"):
                return True, "the plan lists GPUs"
            facts = self.facts or {}
            if facts.get("gpus"):
                return True, "the gathered facts list GPUs"
            if gpus_on_bus(self.pci_devices()):
                return True, "NVIDIA GPU on the PCI bus"
            if self.has_command("nvidia-smi"):
                return True, "nvidia-smi is installed"
            return (
                False,
                "no NVIDIA GPU found (no NVIDIA PCI device, no nvidia-smi, data key gpu unset)",
            )

        return self._cached("gpu_expected", decide)

    def require_gpu(self) -> None:
        expected, reason = self.gpu_expected()
        if not expected:
            self.skip(reason)

    def has_nvswitch(self) -> bool:
        """An NVSwitch on the PCI bus, or a GPU model that comes on NVSwitch boards
        (``provisioner.gpu_stack.host_gpus``)."""
        from provisioner.gpu_stack import host_gpus

        return bool(host_gpus(self.pci_devices(), None)[2])

    # -- packages ------------------------------------------------------------------------

    # -- HTTP from the host itself -----------------------------------------------------------

    def http(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: int = 30,
        insecure_tls: bool = False,
    ) -> HttpResult:
        """An HTTP request made on the host (with curl), so loopback-only services answer."""
        if not self._cached("curl", lambda: self.has_command("curl")):
            return HttpResult(None, "", "curl is not installed on the host")
        parts = ["curl", "-sS", "-m", str(int(timeout)), "-X", method, "-w", "\\n%{http_code}"]
        if body is not None:
            parts += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        if insecure_tls:
            parts.append("-k")  # the proxy's certificate may be self-signed; no secret is sent
        parts.append(url)
        result = self.run(" ".join(shlex.quote(p) for p in parts), timeout=timeout + 10)
        text, _, code = result.stdout.rpartition("\n")
        if result.rc != 0 or not code.strip().isdigit() or code.strip() == "000":
            error = (result.stderr or "").strip() or f"curl exited with status {result.rc}"
            return HttpResult(None, text, error)
        return HttpResult(int(code.strip()), text)

    # -- Ollama ----------------------------------------------------------------------------

    def ollama_bind(self) -> tuple[str, int]:
        """Where Ollama should listen: ``ollama_listen_address`` and ``ollama_port``."""
        host = self.data.text("ollama_listen_address").strip()
        port = self.data.integer("ollama_port")
        return parse.split_host_port(host, port)[0] if host else "127.0.0.1", port

    def ollama_url(self, path: str) -> str:
        host, port = self.ollama_bind()
        return addresses.local_url(host, port, path)

    def ollama_tags(self) -> HttpResult:
        """``GET /api/tags`` (taken once per host)."""
        return self._cached("tags", lambda: self.http("GET", self.ollama_url("/api/tags")))

    def installed_models(self) -> dict[str, dict[str, Any]] | None:
        """``/api/tags`` models by normalised name; None when Ollama did not answer."""
        answer = self.ollama_tags()
        document = answer.json() if answer.status == 200 else None
        if not isinstance(document, dict):
            return None
        models = {}
        for model in document.get("models") or []:
            if isinstance(model, dict) and model.get("name"):
                models[normalise(str(model["name"]))] = model
        return models

    def planned_models(self) -> list[dict[str, Any]]:
        """The plan's models plus the operator's pinned ones (``planner.wanted_models``):
        ``{"tag", "digest", "estimated_vram_mib", "context"}`` each, tags canonical, first
        mention wins."""
        from provisioner.model_name import is_valid
        from provisioner.planner import wanted_models

        entries: dict[str, dict[str, Any]] = {}
        for entry in self.plan.get("models") or []:
            if isinstance(entry, dict) and entry.get("tag"):
                entries.setdefault(normalise(str(entry["tag"])), entry)
        pinned = [str(tag) for tag in self.data.list_of("models_pinned")]
        # an invalid name cannot be checked; inventory validation refuses it (exit 2)
        names = [name for name in [*entries, *pinned] if is_valid(name)]
        return [
            {
                "tag": tag,
                "digest": parse.digest_hex(entries.get(tag, {}).get("digest")),
                "estimated_vram_mib": entries.get(tag, {}).get("estimated_vram_mib"),
                "context": entries.get(tag, {}).get("context"),
            }
            for tag in wanted_models(names)
        ]

    def resident_models(self) -> list[str]:
        """The plan's resident set (``models_resident`` that fit together), tags normalised."""
        resident = self.plan.get("resident") or {}
        models = resident.get("models") if isinstance(resident, dict) else None
        return [normalise(str(tag)) for tag in models or [] if tag]

    def planned_context(self, tag: str) -> int | None:
        """The context the plan sized ``tag`` with: the model's own ``context`` in the plan
        (its params-layer ``num_ctx``, which wins over the server default), else the plan's
        ``settings.context_length``, else ``ollama_context_length``. None when unknown."""
        for item in self.planned_models():
            if item["tag"] == normalise(tag) and isinstance(item.get("context"), int):
                return int(item["context"])
        pinned = (self.plan.get("settings") or {}).get("context_length")
        if pinned is None:
            pinned = self.data.integer("ollama_context_length")
        try:
            return int(pinned) if pinned is not None else None
        except (TypeError, ValueError):
            return None

    def model_size(self, tag: str) -> int | None:
        """Download size in bytes (see :meth:`model_bytes`)."""
        return self.model_bytes(tag)[0]

    def model_bytes(self, tag: str) -> tuple[int | None, str]:
        """The bytes of ``tag``'s blobs and where that number comes from: what Ollama reports
        for the model in its store (the sum of its manifest's blobs), else the manifest the
        registry serves for it now (the blobs the next fetch downloads), else the catalog's
        estimate (``catalog estimate``; ``(None, "unknown")`` when none of them knows)."""
        installed = self.installed_models() or {}
        size = (installed.get(tag) or {}).get("size")
        if isinstance(size, int) and size > 0:
            return size, "store manifest"
        remote = self.registry_manifest(tag)
        if remote and isinstance(remote.get("size"), int) and remote["size"] > 0:
            return int(remote["size"]), "registry manifest"
        try:
            from provisioner.catalog import cached_catalog

            entry = cached_catalog(self.data.list_of("model_catalog_extra")).get(tag)
        except Exception:  # a bad catalog is reported by `provision plan`, not here
            entry = None
        if entry is not None and entry.size_bytes:
            return entry.size_bytes, "catalog estimate"
        return None, "unknown"

    def registry_manifest(self, tag: str) -> dict[str, Any] | None:
        """The manifest the host would fetch ``tag`` by (its site registry when
        ``ollama_registry`` is set), as :class:`OllamaRegistryManifest` reads it on the host;
        None when it cannot be read."""
        from provisioner.facts.ollama import OllamaRegistryManifest
        from provisioner.ollama_api import ModelName, site_name

        try:
            registry = self.data.optional_text("ollama_registry")
            namespace = self.data.text("ollama_registry_namespace")
            source = site_name(tag, registry, namespace) if registry else ModelName.parse(tag)
        except ValueError:
            return None
        remote = self.fact(OllamaRegistryManifest, source.manifest_url)
        return None if not isinstance(remote, dict) or "error" in remote else remote

    def smallest_planned_model(self) -> str | None:
        planned = self.planned_models()
        if not planned:
            return None

        def weight(item: dict[str, Any]) -> tuple[float, str]:
            size = self.model_size(item["tag"])
            if size is None:
                size = (item.get("estimated_vram_mib") or float("inf")) * 1024 * 1024
            return float(size), item["tag"]

        return min(planned, key=weight)["tag"]

    def generation(self, model: str) -> HttpResult:
        """``POST /api/generate`` with the given model, a few tokens (taken once per host).
        ``keep_alive`` keeps the model loaded long enough for ``/api/ps`` to show it."""
        body = {
            "model": model,
            "prompt": "Reply with the single word: ready",
            "stream": False,
            "keep_alive": "5m",
            "options": {"num_predict": 8, "temperature": 0},
        }
        return self._cached(
            f"generate:{model}",
            lambda: self.http(
                "POST", self.ollama_url("/api/generate"), body, timeout=GENERATE_TIMEOUT_S
            ),
        )

    # -- PyTorch -----------------------------------------------------------------------------

    def torch_probe(self) -> dict[str, Any]:
        """What the PyTorch venv's interpreter reports (:data:`TORCH_PROBE`), or
        ``{"missing": why}`` / ``{"probe_error": why}``."""

        def take() -> dict[str, Any]:
            venv = self.key("pytorch_venv")
            python = f"{str(venv).rstrip('/')}/bin/python"
            if self.run(f"test -x {shlex.quote(python)}").rc != 0:
                return {"missing": f"{python} does not exist"}
            result = self.run(f"{shlex.quote(python)} -c {shlex.quote(TORCH_PROBE)}", timeout=600)
            last = result.stdout.strip().splitlines()[-1:] or [""]
            try:
                return dict(json.loads(last[0]))
            except ValueError:
                text = (result.stderr or result.stdout).strip().splitlines()[-3:]
                return {"probe_error": " ".join(text) or f"exit status {result.rc}"}

        return self._cached("torch", take)


def normalise(tag: str) -> str:
    """A model name in its canonical form (``llama3.2:latest`` for ``Llama3.2``), as the plan
    and the installed-model facts spell it; a name Ollama refuses is returned stripped."""
    from provisioner.model_name import ModelNameError, canonical

    try:
        return canonical(tag)
    except ModelNameError:
        return tag.strip()


# Runs in the PyTorch venv's interpreter; prints one JSON line. The computation is a matmul of
# ones (n x n), whose sum is exactly n**3 in float32 for this n, on every GPU and on the CPU.
TORCH_PROBE = """
import json, sys
out = {}
try:
    import torch
except Exception as exc:
    print(json.dumps({"import_error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
out["version"] = str(torch.__version__)
out["cuda_build"] = getattr(torch.version, "cuda", None)
try:
    out["cuda_available"] = bool(torch.cuda.is_available())
except Exception as exc:
    out["cuda_available"] = False
    out["cuda_error"] = f"{type(exc).__name__}: {exc}"
try:
    out["device_count"] = int(torch.cuda.device_count()) if out["cuda_available"] else 0
except Exception as exc:
    out["device_count"] = 0
    out["cuda_error"] = f"{type(exc).__name__}: {exc}"
n = 64
def compute(device):
    try:
        x = torch.ones((n, n), device=device)
        value = float((x @ x).sum().item())
        return {"device": device, "ok": value == float(n ** 3), "value": value}
    except Exception as exc:
        return {"device": device, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
devices = [f"cuda:{i}" for i in range(out["device_count"])] + ["cpu"]
out["compute"] = [compute(d) for d in devices]
names = []
for i in range(out["device_count"]):
    try:
        names.append(str(torch.cuda.get_device_name(i)))
    except Exception as exc:
        names.append(f"? ({exc})")
out["device_names"] = names
print(json.dumps(out))
"""
